"""ERP augmentations on sample dicts (see `dap.data.shards.SAMPLE_KEYS`).

Every spatial transform moves all image-shaped tensors (C, H, W) of a sample together, so RGB, depth and
masks stay aligned. Depth is a distance along the ray, so it is unchanged by rotating or mirroring the
sphere; it is only resampled (nearest, never blended across edges). Randomness comes from the `generator`
given to each transform, or torch's global RNG (which DataLoader seeds per worker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import math

import torch

from dap.geometry import rotate_erp

Sample = dict


def _images(sample: Sample) -> list[str]:
    h, w = sample["rgb"].shape[-2:]
    return [k for k, v in sample.items() if isinstance(v, torch.Tensor) and v.ndim == 3 and v.shape[-2:] == (h, w)]


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * _rand(generator)


def roll_yaw(sample: Sample, columns: int) -> Sample:
    """Turn the camera about the vertical axis by whole columns: content moves `columns` to the right."""
    keys = _images(sample)
    return {k: torch.roll(v, columns, dims=-1) if k in keys else v for k, v in sample.items()}


def flip_horizontal(sample: Sample) -> Sample:
    """Mirror the panorama (longitude -> -longitude); a valid scene with the same distances."""
    keys = _images(sample)
    return {k: torch.flip(v, dims=(-1,)) if k in keys else v for k, v in sample.items()}


def rotate_sphere(sample: Sample, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> Sample:
    """The sample seen from the camera rotated by yaw/pitch/roll degrees (`dap.geometry.rotation_matrix`).
    RGB is resampled bilinearly; depth and masks by nearest neighbour, so no depth is blended across edges."""
    out = dict(sample)
    keys = _images(sample)
    if "rgb" in keys:
        out["rgb"] = rotate_erp(sample["rgb"], yaw=yaw, pitch=pitch, roll=roll, mode="bilinear").clamp(0, 1)
    maps = [k for k in keys if k != "rgb"]
    if maps:  # depth and masks: one nearest-neighbour pass over all their channels
        stacked = torch.cat([sample[k].float() for k in maps], dim=-3)
        rotated = rotate_erp(stacked, yaw=yaw, pitch=pitch, roll=roll, mode="nearest")
        for k, r in zip(maps, rotated.split([sample[k].shape[-3] for k in maps], dim=-3), strict=True):
            v = sample[k]
            out[k] = r.to(v.dtype) if v.dtype != torch.bool else r > 0.5
    return out


class RandomYawRoll:
    """Roll by a uniform random number of columns in [0, W)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        w = sample["rgb"].shape[-1]
        return roll_yaw(sample, int(torch.randint(0, w, (), generator=self.generator)))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample) -> Sample:
        return flip_horizontal(sample) if _rand(self.generator) < self.p else sample


class RandomSphereRotation:
    """Random pitch and roll, uniform in +-max degrees, applied with probability p."""

    def __init__(self, max_pitch: float = 10.0, max_roll: float = 10.0, p: float = 0.5,
                 generator: torch.Generator | None = None):
        self.max_pitch, self.max_roll, self.p, self.generator = max_pitch, max_roll, p, generator

    def __call__(self, sample: Sample) -> Sample:
        if _rand(self.generator) >= self.p:
            return sample
        pitch = _uniform(-self.max_pitch, self.max_pitch, self.generator)
        roll = _uniform(-self.max_roll, self.max_roll, self.generator)
        return rotate_sphere(sample, pitch=pitch, roll=roll)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, ...) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = rgb.unbind(0)
    maxc, _ = rgb.max(0)
    minc, _ = rgb.min(0)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dd = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, (g - b) / dd, torch.where(maxc == g, 2 + (b - r) / dd, 4 + (r - g) / dd))
    h = torch.where(delta > 0, torch.remainder(h / 6, 1.0), torch.zeros_like(h))
    return torch.stack((h, s, maxc))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`. Each channel in closed form, v - v·s·clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6h) mod 6 and n = 5, 3, 1 for r, g, b: no table of the six hue sectors (18 planes) to gather from."""
    h, s, v = hsv.unbind(0)
    vs = v * s
    channels = []
    for n in (5, 3, 1):
        k = torch.remainder(h * 6 + n, 6)
        channels.append(v - vs * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels)


class ColorJitter:
    """With probability p: brightness, contrast and saturation factors in [1 - x, 1 + x], hue shift in
    [-hue, hue] (fraction of the colour wheel). Only `rgb` changes."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.1,
                 p: float = 0.5, generator: torch.Generator | None = None):
        self.b, self.c, self.s, self.h, self.p, self.generator = brightness, contrast, saturation, hue, p, generator

    def __call__(self, sample: Sample) -> Sample:
        if _rand(self.generator) >= self.p:
            return sample
        g = self.generator
        x = sample["rgb"] * _uniform(1 - self.b, 1 + self.b, g)
        mean = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device)[:, None, None]).sum(0).mean()
        x = ((x - mean) * _uniform(1 - self.c, 1 + self.c, g) + mean).clamp(0, 1)
        hsv = rgb_to_hsv(x)
        sat = (hsv[1] * _uniform(1 - self.s, 1 + self.s, g)).clamp(0, 1)
        hue = torch.remainder(hsv[0] + _uniform(-self.h, self.h, g), 1.0)
        return {**sample, "rgb": hsv_to_rgb(torch.stack((hue, sat, hsv[2]))).clamp(0, 1)}


class RandomExposure:
    """With probability p: multiply the image by a gain drawn log-uniformly from [1 / max_gain, max_gain] and clip
    to [0, 1], as a camera's exposure would (bright walls blow out, dark rooms go murky). Without it a model trained
    on rendered panoramas, where the bright scenes are the outdoor ones, reads brightness as distance: the bundled
    model put a white stairwell at 15 m, and the same photo darkened to 0.6x at 3.3 m. Only `rgb` changes."""

    def __init__(self, max_gain: float = 2.5, p: float = 0.5, generator: torch.Generator | None = None):
        if max_gain < 1:
            raise ValueError(f"max_gain is at least 1 (1: no change), got {max_gain}")
        self.log_gain, self.p, self.generator = math.log(max_gain), p, generator

    def __call__(self, sample: Sample) -> Sample:
        if _rand(self.generator) >= self.p:
            return sample
        return {**sample, "rgb": (sample["rgb"] * self.gain(sample["rgb"])).clamp(0, 1)}

    def gain(self, rgb: torch.Tensor) -> float | torch.Tensor:
        """The factor this draw multiplies `rgb` by: one gain."""
        return math.exp(_uniform(-self.log_gain, self.log_gain, self.generator))


class RandomVerticalGain(RandomExposure):
    """With probability p: a brightness ramp from the top row of the panorama to the bottom one, gains at the two
    ends drawn log-uniformly from [1 / max_gain, max_gain] each and log-linear in between, then clipped: a lit
    ceiling over a dark floor, a bright sky over shaded ground, or the reverse. In the rendered data the top and
    bottom halves keep fixed brightness ratios per style, and the bundled model puts the ceilings of real rooms 13%
    farther when their upper half is brightened 1.5x, 16% farther when the lower half is darkened to 0.6x; 400
    steps with this ramp did not change that (docs/models.md, "Tried and not shipped"). Only `rgb` changes."""

    def __init__(self, max_gain: float = 2.0, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__(max_gain, p, generator)

    def gain(self, rgb: torch.Tensor) -> torch.Tensor:
        """(H, 1) factors, one per row."""
        top = _uniform(-self.log_gain, self.log_gain, self.generator)
        bottom = _uniform(-self.log_gain, self.log_gain, self.generator)
        return torch.exp(torch.linspace(top, bottom, rgb.shape[-2], dtype=rgb.dtype, device=rgb.device))[:, None]


class RandomHighlights:
    """With probability p: 1 to `count` blown-out spots (lamps, sunlit windows) painted over the image, each a soft
    disc that is white at its core, 1-4% of the width across, in the upper two thirds of the rows; depth and masks
    stay those of the surface under it. A model trained on renders reads a small bright patch as sky: the bundled
    model after its exposure stage still put ceiling lamps and windows of real rooms beyond 10 m. Only `rgb`
    changes."""

    def __init__(self, count: int = 4, p: float = 0.5, generator: torch.Generator | None = None):
        if count < 1:
            raise ValueError(f"count is at least 1, got {count}")
        self.count, self.p, self.generator = count, p, generator

    def __call__(self, sample: Sample) -> Sample:
        if _rand(self.generator) >= self.p:
            return sample
        rgb = sample["rgb"]
        h, w = rgb.shape[-2:]
        rows = torch.arange(h, dtype=rgb.dtype, device=rgb.device)[:, None]
        cols = torch.arange(w, dtype=rgb.dtype, device=rgb.device)[None, :]
        light = torch.zeros(h, w, dtype=rgb.dtype, device=rgb.device)
        for _ in range(1 + int(_rand(self.generator) * self.count)):
            cy, cx = _uniform(0.05, 0.67, self.generator) * h, _uniform(0, 1, self.generator) * w
            radius = _uniform(0.005, 0.02, self.generator) * w
            dx = torch.remainder(cols - cx + w / 2, w) - w / 2  # the seam wraps
            r2 = ((rows - cy) ** 2 + dx ** 2) / radius ** 2
            light = torch.maximum(light, torch.clamp(2.0 - r2, 0, 1))  # 1 inside the core, soft edge out to 1.4 r
        return {**sample, "rgb": rgb + (1 - rgb) * light}


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


def train_transforms(rotation: bool = True, generator: torch.Generator | None = None,
                     exposure: float = 1.0, highlights: int = 0, vertical_gain: float = 1.0) -> Compose:
    """The default training augmentations: yaw roll, flip, colour jitter, and (optionally) pitch/roll, an exposure
    gain up to `exposure` (1: none), up to `highlights` blown-out spots (0: none) and a top-to-bottom brightness
    ramp with end gains up to `vertical_gain` (1: none). Optional ones come last, so a run without them draws what
    it always drew."""
    ts = [RandomYawRoll(generator), RandomHorizontalFlip(0.5, generator), ColorJitter(generator=generator)]
    if rotation:
        ts.append(RandomSphereRotation(generator=generator))
    if exposure > 1:
        ts.append(RandomExposure(exposure, generator=generator))
    if highlights:
        ts.append(RandomHighlights(highlights, generator=generator))
    if vertical_gain > 1:
        ts.append(RandomVerticalGain(vertical_gain, generator=generator))
    return Compose(ts)
