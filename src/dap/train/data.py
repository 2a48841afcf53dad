"""Training data: the sources (build_source), loader items as training samples, the seeded mixture
(MixtureDataset + MixtureSampler, pure functions of the step) and the validation set."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dap import geometry
from dap.inference import resize_image, resize_nearest, to_rgb
from dap.train.config import DataSection, SourceConfig, check_source, reads_shards


def seed_of(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RoomsDataset(Dataset):
    """Analytic box rooms with exact metric depth: a fast, dependency-free source for smoke tests and CPU runs.

    Panorama i: the camera sits off-centre in an axis-aligned room (half-extents 1.5-6 m), faces get random
    colours with a checker texture; a third of the rooms have no ceiling, whose pixels are sky (no depth,
    out of range).
    """

    def __init__(self, size: int = 64, height: int = 64, width: int = 128, seed: int = 0):
        geometry.check_erp_shape(height, width, "rooms panorama")
        self.size, self.height, self.width, self.seed = size, height, width, seed
        self.rays = geometry.erp_rays(height, width, dtype=torch.float64)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = np.random.default_rng([self.seed, i])
        half = g.uniform(1.5, 6.0, 3)
        half[1] = g.uniform(1.2, 2.5)
        cam = g.uniform(-0.6, 0.6, 3) * half
        lo, hi = torch.tensor(-half - cam), torch.tensor(half - cam)
        d = self.rays
        with np.errstate(divide="ignore"):
            t_axis = torch.where(d > 0, hi / d, torch.where(d < 0, lo / d, torch.inf))  # (H, W, 3)
        t, axis = t_axis.min(dim=-1)
        face = axis * 2 + (torch.gather(d, -1, axis[..., None])[..., 0] > 0).long()  # 2 = ceiling (-y)
        sky = (face == 2) & bool(g.random() < 1 / 3)
        p = t[..., None] * d + torch.tensor(cam)
        colours = torch.tensor(g.uniform(0.15, 0.9, (6, 3)))
        cell = torch.floor(p / g.uniform(0.3, 1.0)).long().sum(-1) % 2  # checker on every face
        rgb = colours[face] * (0.75 + 0.25 * cell[..., None])
        rgb = torch.where(sky[..., None], torch.tensor([0.55, 0.7, 0.95], dtype=torch.float64), rgb)
        depth = torch.where(sky, 0.0, t)
        return {
            "rgb": rgb.permute(2, 0, 1).float().clamp(0, 1),
            "depth": depth[None].float(),
            "valid": ~sky[None],
            "out_of_range": sky[None],
        }


class RenderedSynthetic(Dataset):
    """Panoramas rendered on the fly by dap.data.synthetic (panorama i = scene seed + i, as `dap synth`)."""

    def __init__(self, size: int, height: int, width: int, seed: int, kind: str = "mixed", style: str = "clean"):
        self.size, self.height, self.width, self.seed, self.kind, self.style = size, height, width, seed, kind, style

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        from dap.data.synthetic import kind_for_seed, make_scene, render

        seed = self.seed + i
        return render(make_scene(seed, kind_for_seed(seed, self.kind)), self.height, self.width, self.style)


def build_source(src: SourceConfig, height: int, width: int) -> Dataset:
    """The dataset behind one SourceConfig; items are dicts with rgb/depth and optional valid/out_of_range."""
    check_source(src, "data source")  # a ConfigError (a ValueError) for an unknown kind, a missing path or dataset
    if src.kind == "rooms":
        return RoomsDataset(src.size, height, width, seed=src.seed)
    if src.kind == "synthetic":
        return RenderedSynthetic(src.size, height, width, src.seed)
    if reads_shards(src):
        from dap.data.shards import ShardDataset

        return ShardDataset(src.path)
    if src.kind == "pseudo":
        from dap.curation.manifest import PseudoLabelDataset

        return PseudoLabelDataset(src.path, src.label_stage, src.selected_only)
    if src.kind == "folder":
        from dap.data.datasets import FolderDataset

        return FolderDataset(src.path, src.split)
    from dap.data.datasets import get_dataset

    return get_dataset(src.dataset, src.path, src.split)  # kind dataset, the only one left


def _as_chw(x: Any, channels: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3 and t.shape[0] != channels and t.shape[-1] == channels:
        t = t.permute(2, 0, 1)  # HWC -> CHW
    return t


def to_training_sample(item: dict, invalid_is_sky: bool = False) -> dict[str, torch.Tensor]:
    """Normalise a loader's sample (HWC numpy or CHW tensors) to rgb (3,H,W) [0,1], depth (1,H,W) metres,
    valid (1,H,W) bool, out_of_range (1,H,W) bool."""
    rgb = torch.from_numpy(to_rgb(item["rgb"], "training sample")).permute(2, 0, 1)  # the one rule for ranges
    depth = _as_chw(item["depth"], 1).float()
    depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    valid = _as_chw(item["valid"], 1).bool() if "valid" in item else depth > 0
    valid = valid & (depth > 0)
    oor = next((item[k] for k in ("out_of_range", "range_mask", "sky") if k in item), None)
    oor = _as_chw(oor, 1).bool() if oor is not None else torch.zeros_like(valid)
    valid = valid & ~oor  # out of range has no depth to learn, whatever the map holds there (a render's 150 m)
    if invalid_is_sky:
        oor = oor | ~valid
    return {"rgb": rgb, "depth": depth, "valid": valid, "out_of_range": oor & ~valid}


def resize_sample(s: dict[str, torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """RGB by antialiased bilinear; depth and masks by nearest, so no depth is invented across edges (the
    resampling rules of dap.inference)."""
    size = (height, width)
    if all(tuple(s[k].shape[-2:]) == size for k in ("rgb", "depth", "valid", "out_of_range")):
        return s
    near = {k: resize_nearest(s[k], size) for k in ("depth", "valid", "out_of_range")}  # each as it is if at size
    rgb = s["rgb"] if tuple(s["rgb"].shape[-2:]) == size else resize_image(s["rgb"], size).clamp(0, 1)
    return {"rgb": rgb, **near}


def jitter_size(height: int, jitter: float, gen: torch.Generator) -> tuple[int, int]:
    """One batch's working size under `data.scale_jitter` (x > 1): half the time the training size, else its height
    times a factor drawn log-uniformly in [1/x, x], rounded to a multiple of 16; always 2:1. A network trained at one
    size reads depth partly from how large things are in pixels (the bundled model: docs/models.md, "Working
    resolution"); seeing scenes at several sizes is meant to take that cue away (a first CPU check: 1-4% better off
    the training size, there)."""
    if torch.rand((), generator=gen).item() < 0.5:
        return height, 2 * height
    factor = jitter ** (2 * torch.rand((), generator=gen).item() - 1)
    h = max(16, 16 * round(height * factor / 16))
    return h, 2 * h


def augment_sample(s: dict[str, torch.Tensor], gen: torch.Generator, rotate: bool = False,
                   exposure: float = 1.0, highlights: int = 0, vertical_gain: float = 1.0) -> dict[str, torch.Tensor]:
    """The paper's ERP augmentations (dap.data.transforms), drawn from `gen`: random yaw roll, horizontal flip
    (p=0.5), colour jitter (p=0.5: brightness/contrast/saturation 0.8-1.2, hue ±0.1); `rotate` adds small
    random pitch/roll, `exposure` > 1 an exposure gain up to that factor either way, `highlights` up to that many
    blown-out spots, `vertical_gain` > 1 a top-to-bottom brightness ramp (none of them is in the paper)."""
    from dap.data.transforms import train_transforms

    return train_transforms(rotation=rotate, generator=gen, exposure=exposure, highlights=highlights,
                            vertical_gain=vertical_gain)(s)


class MixtureDataset(Dataset):
    """Indexed by keys (source, index, augmentation seed) produced by `MixtureSampler`."""

    def __init__(self, sources: list[Dataset], configs: list[SourceConfig], data: DataSection):
        self.sources, self.configs, self.data = sources, configs, data

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        j, idx, aug_seed = key
        s = to_training_sample(self.sources[j][idx], self.configs[j].invalid_is_sky)
        s = resize_sample(s, self.data.height, self.data.width)
        if self.data.augment:
            s = augment_sample(s, torch.Generator().manual_seed(aug_seed), self.data.rotate, self.data.exposure,
                               self.data.highlights, self.data.vertical_gain)
        return s


class MixtureSampler:
    """Batches for steps [start, steps): a pure function of (seed, step, rank, world, batch).

    Global sample position n = (step·world + rank)·batch + i. Its source is drawn with the mixture ratios
    from a generator seeded by (seed, step); within source j, position n reads permutation
    perm_j(epoch = n // len_j) at n % len_j, so no panorama repeats within len_j consecutive positions
    (the DistributedSampler property) and every rank gets different samples.
    """

    def __init__(self, lengths: list[int], ratios: list[float], *, seed: int, rank: int, world: int,
                 batch: int, start: int, steps: int):
        self.lengths, self.seed, self.rank, self.world, self.batch = lengths, seed, rank, world, batch
        self.start, self.steps = start, steps
        p = torch.tensor(ratios, dtype=torch.float64)
        self.probs = p / p.sum()

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few (source, epoch) permutations, per sampler
    def _perm(self, j: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seed_of(self.seed, "perm", j, epoch))
        return torch.randperm(self.lengths[j], generator=g).tolist()

    def keys(self, step: int) -> list[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(seed_of(self.seed, "mix", step))
        src = torch.multinomial(self.probs, self.world * self.batch, replacement=True, generator=g).tolist()
        out = []
        for i in range(self.rank * self.batch, (self.rank + 1) * self.batch):
            n = step * self.world * self.batch + i
            j = src[i]
            epoch, pos = divmod(n, self.lengths[j])
            out.append((j, self._perm(j, epoch)[pos], seed_of(self.seed, "aug", n)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.steps):
            yield self.keys(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class ValidationSet(Dataset):
    """The first `limit` panoramas of the validation sources, resized, not augmented."""

    def __init__(self, sources: list[Dataset], configs: list[SourceConfig], height: int, width: int, limit: int):
        self.items = [(j, i) for j, s in enumerate(sources) for i in range(len(s))][:limit]
        self.sources, self.configs, self.height, self.width = sources, configs, height, width
        self.reported_no_depth = False  # validate() warns once per run about images without depth

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        j, i = self.items[k]
        s = to_training_sample(self.sources[j][i], self.configs[j].invalid_is_sky)
        return resize_sample(s, self.height, self.width)

    def check(self) -> None:
        """Read each of the panoramas from files once: a broken one is found before the first step, not at the
        first validation (generated ones, rendered as they are asked for, are not)."""
        for k, (j, _) in enumerate(self.items):
            if self.configs[j].kind not in ("rooms", "synthetic"):
                self[k]
