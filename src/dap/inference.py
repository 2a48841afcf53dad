"""Panorama in, metric depth out: `dap.predict()` and `dap predict`.

Preprocessing follows the official *evaluation* convention: RGB in [0, 1], resized to the working resolution
(default 512x1024, the official eval size) with antialiasing, then ImageNet mean/std normalisation. (The official
`infer.py` feeds un-normalised RGB at full size; that disagrees with how the model is evaluated, so we don't.)
`infer` (= `prepare_input` + `run_model`) is that one path from an image to metric depth and range probability at
the working resolution; `predict`, training validation and `dap eval` all go through it.

Outputs, at the input's full resolution:
  depth       float32 metres, distance along each pixel's ray. Pixels in `range_mask` hold `max_depth` (100 m),
              the official convention; do not read them as measurements.
  range_mask  bool, True where the range head says the pixel is sky or beyond `max_depth` (probability at or
              above the model's `range_threshold`: 0.5, the official convention, unless calibrated).
  points      (H, W, 3) camera-frame points (x right, y down, z forward), from dap.geometry.
  normals     (H, W, 3) unit normals facing the camera.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from dap import geometry
from dap.errors import DapError, NotPanoramaError, SettingWarning, is_number, warn_input

if TYPE_CHECKING:  # dap.io loads OpenCV, OpenEXR and trimesh: only when needed
    from dap.io import PhotoSphere

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Columns copied from the opposite border on each side so the network sees the 0/360 degree seam as interior.
DEFAULT_SEAM_PAD = 1 / 16


@dataclass
class Prediction:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    depth: np.ndarray  # (H, W) float32 metres; max_depth under the range mask, 0 in pad_to_erp's padded rows
    range_mask: np.ndarray  # (H, W) bool: sky / beyond max_depth, and padded rows
    out_of_range_prob: np.ndarray  # (H, W) float32
    max_depth: float = 100.0
    valid_rows: slice = field(default_factory=lambda: slice(None))  # rows that are real image (see pad_to_erp)

    # Computed from `depth` as it is now on each access (not cached: depth rescaled in place would leave them
    # stale); keep the result where it is used more than once.
    @property
    def points(self) -> np.ndarray:
        return geometry.depth_to_points(self.depth)

    @property
    def normals(self) -> np.ndarray:
        return geometry.normals_from_depth(np.where(self.range_mask, 0.0, self.depth).astype(np.float32))

    def save(self, stem: str | os.PathLike, outputs: str | list[str] = ("npy", "color", "mask"), *,
             point_stride: int = 1) -> list[Path]:
        """Write outputs as `dap predict` does and return their paths: `stem` plus each kind's suffix
        (OUTPUT_SUFFIXES: "npy" -> stem.npy, "color" -> stem.color.png, ...), each written whole or not at all.
        Depth files hold 0 where `range_mask` is set (here `depth` holds `max_depth`); an output that cannot hold
        everything (depth beyond the 16-bit PNG's range) gets a warning."""
        if not isinstance(outputs, (str, list, tuple)):
            raise DapError(f"outputs is an output kind or a list of them ({', '.join(OUTPUT_KINDS)}), got {outputs!r}")
        kinds = [outputs] if isinstance(outputs, str) else list(outputs)
        if not kinds:
            raise DapError(f"no output kind given; choose from {', '.join(OUTPUT_KINDS)}")
        stem = os.fsdecode(stem) if isinstance(stem, bytes) else stem  # as predict takes a bytes path
        if not str(stem).strip() or not Path(stem).name.strip():  # "" wrote ./.color.png, a hidden file
            raise DapError(f"stem {str(stem)!r} names no file; give the outputs' path without suffix, e.g. 'out/pano'")
        paths = output_paths(Path(stem).parent, Path(stem).name, kinds)
        if blocked := blocked_folder(list(paths.values()), elsewhere=", or give another stem"):
            raise DapError(f"{Path(stem).name}: {blocked}")
        for note in write_outputs(self, paths, point_stride=point_stride):
            warn_input(f"{Path(stem).name}: {note}")
        return list(paths.values())


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: `device` if given (an error unless it exists on this machine), else CUDA, MPS
    or the CPU, the first there is."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError):
            raise DapError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
        if chosen.type not in ("cpu", "cuda", "mps"):  # meta would empty a model's weights, xpu/hpu... are untested
            raise DapError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise DapError(f"device {device!r}: no CUDA device is visible (or this torch is a CPU build); use cpu")
        if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
            raise DapError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices")
        if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DapError(f"device {device!r}: MPS is not available here; use cpu")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_rgb(image, source: str = "input image") -> np.ndarray:
    """The one rule for image values (inference and training): any single image -> float32 (H, W, 3) RGB in
    [0, 1]. Files are decoded by dap.io, PIL images as dap.io reads a file of their mode, turned upright by their
    EXIF or XMP orientation (`dap.io.pil_to_upright_rgb`).
    Arrays and tensors may be (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 (alpha is dropped); their dtype
    sets the range: uint8 is 0-255, uint16 is 0-65535, float must already be in [0, 1] (anything further outside than
    float rounding, `dap.io.FLOAT_SLACK`, is an error, never clipped or guessed).
    NaN/inf pixels become 0 (black) with a warning (from files and PIL images too). `source` names the image in
    messages."""
    from PIL import Image

    from dap import io

    if isinstance(image, str) and not image.strip():
        raise DapError(f"{source}: the path is empty; pass a panorama's file name")
    if isinstance(image, bytes) and len(image) < 4096 and b"\0" not in image and not image.startswith(
            (b"\xff\xd8", b"\x89PNG", b"GIF8", b"RIFF", b"II*", b"MM")):  # contents of JPEG, PNG, GIF, WebP, TIFF
        image = os.fsdecode(image)  # a path as bytes (os.listdir(b"...") gives those)
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise DapError(f"{source}: got {len(image)} bytes of a file, not an image; pass its path, or decode it first: "
                       "dap.predict(PIL.Image.open(io.BytesIO(data)), ...)")
    if isinstance(image, (str, os.PathLike)):
        rgb, notes = io.read_rgb_notes(image)
        for note in notes:
            warn_input(f"{Path(image).name}: {note}")
        return rgb
    if isinstance(image, Image.Image):
        try:
            if image.mode in io.SIXTEEN_BIT_GREY_MODES:
                _warn_if_low_16_bit(io.grey_extrema(image)[1], source)
            if note := io.transparency_note(image):
                warn_input(f"{source}: {note}")
            image = io.pil_to_upright_rgb(image)  # as its file would be read: turned upright, 16 and float bits kept
        except (AssertionError, ValueError) as e:  # Pillow's words for it (closed by a `with` block, or .close())
            if isinstance(e, ValueError) and "closed image" not in str(e):
                raise
            raise DapError(f"{source}: the PIL image was closed before its pixels were read; call image.load() inside "
                           "the `with Image.open(...)` block, or pass the file's path") from None
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        image = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()
    a = np.asarray(image)
    if a.dtype.byteorder not in ("=", "|"):  # big-endian (">u2" from a Motorola-order file): as its native type
        a = a.astype(a.dtype.newbyteorder("="))
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and (
            a.shape[-1] not in (1, 3, 4) or (a.shape[2] == 2 * a.shape[1] and a.shape[1] != 2 * a.shape[0])):
        a = np.moveaxis(a, 0, -1)  # CHW, as torch readers return; (3, 2, 4) is both: the 2:1 reading wins
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.size == 0:
        got = f"shape {a.shape}" if np.ndim(image) else f"{type(image).__name__} {image!r:.40}"
        batches = ("a list of batches: pass one list of images, or one 4-D array" if a.ndim == 4
                   and source.startswith("batch") else "pass batches as a list or a 4-D array")
        raise DapError(f"{source}: expected a path, a PIL image or one image array of shape (H, W), (H, W, 3) or "
                       f"(3, H, W), got {got}; {batches}")
    if note := io.transparency_note(a):
        warn_input(f"{source}: {note}")
    a = a[..., :3] if a.shape[-1] != 1 else np.broadcast_to(a, (*a.shape[:2], 3))
    if a.dtype in (np.uint8, np.uint16):
        if a.dtype == np.uint16:
            _warn_if_low_16_bit(int(a.max()), source)
        scaled = a.astype(np.float32)
        scaled /= 255.0 if a.dtype == np.uint8 else 65535.0  # in place: a 16K panorama is 1.6 GB as float32
        return scaled
    if not np.issubdtype(a.dtype, np.floating):
        raise DapError(f"{source}: pixels of type {a.dtype} are not supported; pass uint8 (0-255), uint16 "
                       "(0-65535) or float in [0, 1]")
    # A float32 (H, W, 3) array (what dap.io decodes) is used as it is, not copied: callers get it back as
    # Prediction.rgb. A broadcast grey image is read-only, so it is copied.
    a = np.ascontiguousarray(a, dtype=np.float32) if a.flags.writeable else a.astype(np.float32)
    a, nonfinite = io.unit_floats(a, source, "divide 0-255 images by 255 (or pass them as uint8), expose linear "
                                  "HDR radiance with dap.io.tonemap_hdr, or clip them to [0, 1]")
    if nonfinite:
        warn_input(f"{source}: {io.nonfinite_note(nonfinite)}")
    return a


def _warn_if_low_16_bit(peak: int, source: str) -> None:
    """16-bit pixels are 0-65535; 8- or 12-bit values kept in a uint16 array read as an almost black image."""
    from dap import io

    if note := io.low_16_bit_note(peak):
        warn_input(f"{source}: {note}, or pass uint8")


def _split_batch(images) -> tuple[list, bool]:
    """A list/tuple or a 4-D array/tensor is a batch; anything else is one image."""
    if isinstance(images, (list, tuple)):
        return list(images), True
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images), True
    return [images], False


def pad_rows_to_erp(rgb: np.ndarray, top: int | None = None) -> tuple[np.ndarray, slice]:
    """Pad a partial panorama (full 360 degrees horizontally, less than 180 vertically) with black rows to 2:1, its
    first row at row `top` of the result (default: centred on the horizon; `photo_sphere_top` reads it from the
    file). Returns the padded image and the rows of the original."""
    h, w = rgb.shape[:2]
    if w < 2 * h:
        raise NotPanoramaError(
            f"image is {w}x{h}: too tall to be a partial 360-degree panorama (needs width >= 2 x height)"
        )
    if w % 2:  # the full panorama would be w/2 rows high
        raise NotPanoramaError(f"image is {w}x{h}: a partial panorama's width must be even (it is padded to "
                               f"{w}x{w / 2:g} otherwise); crop or resize it to {w - 1} or {w + 1} pixels wide")
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS  # as a decoded image's: twice it is where Pillow refuses to decode one
    if limit and w * (w // 2) > 2 * limit:
        raise NotPanoramaError(
            f"padded to 2:1, the {w}x{h} image would be {w}x{w // 2} ({w * (w // 2) / 1e6:.0f} MP), more than the "
            f"{2 * limit / 1e6:.0f} MP an image may have (PIL.Image.MAX_IMAGE_PIXELS); downscale it first (the model "
            "sees 1024 or 512 pixels across)")
    top = (w // 2 - h) // 2 if top is None else top
    if not 0 <= top <= w // 2 - h:
        raise DapError(f"pad_top {top} puts a {w}x{h} partial panorama outside its 2:1 panorama: it must be 0 to "
                       f"{w // 2 - h}")
    padded = np.zeros((w // 2, w, 3), np.float32)
    padded[top : top + h] = rgb
    return padded, slice(top, top + h)


def photo_sphere_top(sphere: PhotoSphere | None, height: int, width: int) -> int | None:
    """Where a partial panorama's first row belongs in its 2:1 panorama, from its Photo Sphere XMP
    (`dap.io.read_photo_sphere`), in the image's own pixels; None when the XMP does not say: none, a full panorama
    not 2:1, or numbers for another size of the image. An image the XMP says spans less than 360 degrees across
    raises NotPanoramaError: padding latitudes cannot make it whole."""
    if sphere is None or sphere.full_width != 2 * sphere.full_height:
        return None
    if 0 < sphere.width < sphere.full_width:
        raise NotPanoramaError(
            f"the image's Photo Sphere XMP says it spans {360 * sphere.width / sphere.full_width:.0f} of 360 degrees "
            "across; --pad-to-erp fills in missing latitudes only, and depth needs the panorama to go all the way "
            "around. Use a full 360-degree panorama."
        )
    if sphere.width != sphere.full_width:
        return None
    scale = width / sphere.width
    if abs(sphere.height * scale - height) > 1 + 0.01 * height:
        return None
    return min(max(round(sphere.top * scale), 0), width // 2 - height)


def normalize_image(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> the network's input (ImageNet mean/std), as in training and evaluation."""
    if not rgb.is_floating_point():  # uint8 mean/std would round to 0: NaN everywhere
        raise DapError(f"the network's input must be float RGB in [0, 1], got {str(rgb.dtype).removeprefix('torch.')}"
                       "; convert images with dap.inference.to_rgb first")
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - mean) / std


# Resampling. Three rules, by what the pixels mean: images are averaged (antialiased bilinear), labels are picked
# (nearest: no depth invented across an edge, masks stay binary), and depth maps with 0 = invalid are interpolated
# only where every contributing pixel is valid. Each takes (H, W), (C, H, W) or (B, C, H, W), tensor or array, and
# returns the same kind; a map already at `size` comes back as it is.
def _resample(x, size: tuple[int, int], **kwargs):
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    y = t[(None,) * (4 - t.ndim)]
    y = F.interpolate(y if y.is_floating_point() else y.float(), size=size, **kwargs)
    y = y.reshape(*t.shape[:-2], *size).to(t.dtype)
    return y.numpy() if isinstance(x, np.ndarray) else y


def resize_image(x, size: tuple[int, int]):
    """RGB to `size` (h, w): bilinear with antialiasing, so shrinking averages pixels instead of aliasing."""
    return _resample(x, size, mode="bilinear", align_corners=False, antialias=True)


def resize_nearest(x, size: tuple[int, int]):
    """Ground-truth depth and masks to `size` (h, w): nearest pixel centre, dtype kept."""
    return _resample(x, size, mode="nearest-exact")


def resize_depth(depth, size: tuple[int, int]):
    """A depth map with 0 = invalid (a saved or capped prediction) to `size` (h, w): bilinear where the pixel's
    whole footprint is valid, 0 elsewhere, so invalid zeros never blend into their neighbours; +inf and NaN pixels
    keep their own area (nearest)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    d = torch.from_numpy(np.asarray(depth)) if isinstance(depth, np.ndarray) else depth
    finite = torch.isfinite(d)
    ok = finite & (d > 0)
    out = _resample(torch.where(ok, d, 0), size, mode="bilinear", align_corners=False)
    out = torch.where(_resample(ok.to(d.dtype), size, mode="bilinear", align_corners=False) > 0.999, out, 0)
    if not finite.all():  # +inf (the cap) and NaN (a failure) keep their own area, by the nearest pixel: blended,
        # +inf became NaN beside finite depth (0 x inf) and NaN spread over twice its width
        near = _resample(d, size, mode="nearest-exact")
        touches = _resample((~finite).to(d.dtype), size, mode="bilinear", align_corners=False) > 0
        out = torch.where(touches & (out == 0), near, out)
    return out.numpy() if isinstance(depth, np.ndarray) else out


def prepare_input(rgb, resolution: tuple[int, int], device: str | torch.device | None = None) -> torch.Tensor:
    """RGB in [0, 1], an (H, W, 3) array (what `to_rgb` returns) or a (3, H, W) / (B, 3, H, W) tensor -> the
    network's input: (B, 3, h, w) at `resolution` (antialiased bilinear), ImageNet-normalised, on `device`."""
    x = torch.from_numpy(rgb).permute(2, 0, 1) if isinstance(rgb, np.ndarray) else rgb
    x = x[None] if x.ndim == 3 else x
    return normalize_image(resize_image(x.to(device) if device is not None else x, resolution))


def check_seam_pad(seam_pad: float) -> None:
    if not (is_number(seam_pad) and 0 <= seam_pad <= 0.5):
        raise DapError(f"seam padding is a fraction of the width from 0 (off) to 0.5, got {seam_pad!r}; the default "
                       f"is {DEFAULT_SEAM_PAD}")


def model_seam_pad(model) -> float:
    """The seam padding a model runs with unless told: an ONNX graph's recorded one (`dap export --seam-pad`), else
    DEFAULT_SEAM_PAD. `dap predict` and `dap.predict` both take it from here."""
    recorded = getattr(model, "seam_pad", None)  # dap.export.OnnxModel's; a DAP module has none
    return DEFAULT_SEAM_PAD if recorded is None else recorded


def seam_pad_columns(width: int, seam_pad: float, patch: int = 16) -> int:
    return int(round(width * seam_pad / patch)) * patch


# Precision of the network's forward pass. fp32 is exact (parity with the official model); bf16 and fp16 run
# matmuls and convolutions under autocast; int8 quantises the backbone's Linear layers (dynamic quantisation,
# CPU only). "auto": bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 or AMX) where it is also measurably
# faster than fp32 (`cpu_bf16_speedup`), fp32 elsewhere.
# Measured drift against fp32: docs/performance.md.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# Largest AbsRel between a precision's depth and fp32's that we accept (tests/test_performance.py checks it on the
# bundled model and a random one; measured values in docs/performance.md).
PRECISION_TOLERANCE = {"fp32": 0.0, "bf16": 0.01, "fp16": 0.01, "int8": 0.01}
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


# "auto" takes bf16 on a CPU only where a bf16 matmul runs at least this many times as fast as a float32 one: the
# flag alone does not say it pays (measured: 4.3x on an AMD EPYC with AVX-512 BF16, 0.56x on an Intel Xeon VM with
# the same flag and no AMX; docs/performance.md). Below it, fp32 is exact and about as fast.
BF16_MIN_SPEEDUP = 1.5


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX-512 BF16 or AMX). Without them bf16 is emulated and far
    slower than fp32 (50x on an AVX2-only EPYC); with them it can still be slower (`cpu_bf16_speedup`)."""
    flags = _cpuinfo()
    return flags is not None and any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))  # not Linux: no


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    """/proc/cpuinfo's text (read once: the flags and the CPU's name come from it), None where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times as fast a bf16 matmul runs as a float32 one on this CPU with torch's threads, measured once
    per machine and kept in `<cache>/cpu_bf16.json` (by CPU, torch version and thread count). Measured once per
    process, the timing set "auto" to bf16 in one run and fp32 in the next on a loaded machine (a resumed `dap
    predict` then refused its own outputs as made differently, two ranks labelled differently). Delete the file to
    measure again."""
    from dap.models.registry import cache_dir

    path = cache_dir() / "cpu_bf16.json"
    key = f"{_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"

    def kept() -> dict:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return known if isinstance(known, dict) else {}

    if isinstance((known := kept()).get(key), int | float):
        return float(known[key])
    speedup = round(_measure_bf16_speedup(), 3)  # as kept: this process decides as the next ones will
    # read again: a process that measured meanwhile has written its figure, which every later process reads; the
    # first kept is the one used
    if isinstance((known := kept()).get(key), int | float):
        return float(known[key])
    try:
        from dap.io import atomic_write

        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps({**known, key: speedup}, indent=1, sort_keys=True))
    except OSError:  # a read-only home: measured again by the next process
        pass
    return speedup


def _cpu_name() -> str:
    if (info := _cpuinfo()) is None:
        import platform

        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")


def _measure_bf16_speedup() -> float:
    """bf16 against float32 matmul speed: 1024x1024 matrices, one warm-up each, then the best of 3 each in turns
    (about 0.2 s)."""
    import time

    matrices = {dtype: torch.ones(1024, 1024, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    best = {}
    for a in matrices.values():
        a @ a
    for _ in range(3):
        for dtype, a in matrices.items():
            start = time.perf_counter()
            a @ a
            best[dtype] = min(best.get(dtype, math.inf), time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> the precision it means on `device`; others are checked and returned as they are."""
    if precision not in PRECISIONS:
        raise DapError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise DapError(f"int8 (dynamic quantisation) runs on the CPU only, not on {device.type}; use bf16 or fp16 "
                       "there, or --device cpu")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    fast = device.type == "cpu" and cpu_has_native_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    return "bf16" if fast else "fp32"


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The floating-point type the forward pass computes in (int8 keeps float32 activations)."""
    return _AUTOCAST.get(resolve_precision(precision, device), torch.float32)


# Layers whose weights autocast casts to the 16-bit type on every call; `with_16bit_weights` stores them so.
_CAST_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def _cast_layer(module) -> bool:
    """Whether autocast runs `module` in 16 bit (the heads' last two layers stay float32: `Float32Conv2d`)."""
    from dap.models.dpt import Float32Conv2d

    return isinstance(module, _CAST_LAYERS) and not isinstance(module, Float32Conv2d)


def with_16bit_weights(model, precision: str, *, in_place: bool = False):
    """A copy of `model` with its Linear and convolution weights stored in `precision`'s 16-bit type ("bf16" or
    "fp16"; not the heads' last two layers, which run in float32: `_cast_layer`), sharing every other tensor with
    `model` (norms, tokens, layer scales: autocast keeps those in float32); with `in_place`, `model` itself so
    converted, layer by layer, so that memory never holds both versions of the weights (a copy peaks at one and a
    half times the float32 weights until `model` is let go). Under run_model's autocast its outputs are bit for bit
    `model`'s, since autocast casts exactly these weights to that type on every call: stored so, the casts are saved
    (a pass over all weights per forward) and half their memory. An already converted model is returned as it is."""
    dtype = _AUTOCAST[precision]
    if weights_precision(model) == precision:
        return model
    from dap.models.checkpoint import release_file_pages

    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}  # copy the modules, not the weights
    converted = model if in_place else copy.deepcopy(model, shared)
    for m in converted.modules():
        if _cast_layer(m):
            old = dict(m.named_parameters(recurse=False))  # weight, and bias where the layer has one
            for name, p in old.items():
                setattr(m, name, torch.nn.Parameter(p.detach().to(dtype), requires_grad=False))
            if in_place:  # as it goes: else the float32 file stays in memory beside the converted weights
                release_file_pages(old.values())
    return converted


def weights_precision(model) -> str | None:
    """"int8", "bf16" or "fp16" for a model prepared for that precision (`prepare_model`), which then runs in it
    only; None for a float32 model (or anything else: a model.half() is not prepared, its norms are 16 bit too)."""
    if is_int8(model):
        return "int8"
    layers, others = set(), set()
    for m in model.modules():
        (layers if _cast_layer(m) else others).update(p.dtype for p in m.parameters(recurse=False))
    for name, dtype in _AUTOCAST.items():
        if layers == {dtype} and others <= {torch.float32}:
            return name
    return None


def quantize_int8(model, *, own_memory: bool = False):
    """The model with the backbone's Linear layers dynamically quantised to int8 (per output channel weights,
    activations quantised per call). A new module tree that shares all other weights with `model`, which stays
    as it was (with `own_memory`, copies of them: see `_own_storages`); an already quantised model is returned as
    it is."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if is_int8(model):
        return model
    from dap.models.backbone import Attention

    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}  # copy the modules, not the weights
    q = copy.deepcopy(model, shared)
    for m in q.modules():
        if isinstance(m, Attention):  # DINOv3's zero key bias, baked in (the float model masks it per call)
            m.qkv.bias = torch.nn.Parameter(m.masked_qkv_bias().detach(), requires_grad=False)
    if own_memory:  # the Linear weights become int8 copies; the rest, their biases too (packed with them), are copied
        _own_storages(q, skip=lambda m, name: isinstance(m, torch.nn.Linear) and name == "weight")
    float_weights = [m.weight for m in q.modules() if isinstance(m, torch.nn.Linear)]
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (present in torch 2.11-2.13)
        warnings.simplefilter("ignore")
        quantize_dynamic(q, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    if own_memory:
        from dap.models.checkpoint import release_file_pages

        release_file_pages(float_weights)
    return q


def is_int8(model) -> bool:
    """Whether `model` is already quantised to int8 (`quantize_int8`)."""
    from torch.ao.nn.quantized import dynamic

    return any(isinstance(m, dynamic.Linear) for m in model.modules())


def check_onnx_precision(precision: str) -> None:
    """ONNX models (dap.export.OnnxModel) run in fp32 only: "auto" and "fp32" are fine, anything else an error."""
    if precision not in ("auto", "fp32"):
        raise DapError(f"precision {precision} needs the PyTorch backend; ONNX models run in fp32 (use "
                       "--precision fp32 or auto with --backend onnxruntime)")


def model_precision(model, precision: str, device: torch.device) -> str:
    """`resolve_precision` for this model: models that are not torch modules (dap.export.OnnxModel) run in fp32
    only, so "auto" is fp32 for them and anything else an error."""
    if isinstance(model, torch.nn.Module):
        prepared = weights_precision(model)
        if prepared is None:
            return resolve_precision(precision, device)
        # int8 Linears run int8 whatever is asked (fp32 silently, bf16 failed); 16-bit weights fail in float32
        if precision not in ("auto", prepared):
            how = "quantised to int8" if prepared == "int8" else f"stored in {prepared} for speed"
            raise DapError(f"the model is {how} (prepare_model(model, {prepared!r})), so it runs in {prepared} only; "
                           f"pass precision={prepared!r} or 'auto', or the float32 model for {precision}")
        return resolve_precision(prepared, device)  # int8 off the CPU is an error
    check_onnx_precision(precision)
    return "fp32"


def prepare_model(model, precision: str, *, in_place: bool = False):
    """The model as inference runs it at a resolved `precision`, for many calls: for int8 `quantize_int8`, for bf16
    and fp16 `with_16bit_weights` (same outputs, faster, half the weights' memory); otherwise as it is. The prepared
    model then runs at that precision only. `in_place`, for a caller that lets the float32 model go: bf16/fp16
    convert `model` itself, and the tensors kept as they are get memory of their own (`_own_storages`)."""
    if precision not in PRECISIONS[1:]:  # "bfloat16" or "auto" returned the float32 model, run in float32 unawares
        raise DapError(f"prepare_model takes a resolved precision, one of {', '.join(PRECISIONS[1:])}; got "
                       f"{precision!r} (resolve_precision(\"auto\", device) picks one)")
    if not isinstance(model, torch.nn.Module) or precision not in ("int8", *_AUTOCAST):
        return model
    if precision == "int8":
        return quantize_int8(model, own_memory=in_place)
    prepared = with_16bit_weights(model, precision, in_place=in_place)
    if in_place:
        _own_storages(prepared)
    return prepared


def _own_storages(model, skip=lambda module, name: False) -> None:
    """Give each float32 tensor of `model` (those a preparation kept as they were) memory of its own. A loaded
    model's tensors live in the weights file's one buffer as safetensors reads it, which stays while any of them
    does: after the Linear weights were converted, the few float32 norms left kept the whole float32 file in
    memory (a ViT-L prepared for bf16 held 2.3 GiB, not 1.0). `skip(module, name)`: slots to leave as they are."""
    from dap.models.checkpoint import release_file_pages

    old = []
    with torch.no_grad():
        for m in model.modules():  # new tensors in the modules' own slots: `t.data = ...` left a buffer's old one alive
            for name, t in m._parameters.items():
                if t is not None and t.dtype == torch.float32 and not skip(m, name):
                    m._parameters[name] = torch.nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
                    old.append(t)
            for name, t in m._buffers.items():
                if t is not None and t.dtype == torch.float32 and not skip(m, name):
                    m._buffers[name] = t.clone()
                    old.append(t)
    release_file_pages(old)


def run_model(model, x: torch.Tensor, *, seam_pad: float = DEFAULT_SEAM_PAD,
              precision: str = "auto") -> dict[str, torch.Tensor]:
    """Forward a normalised ERP batch, wrapping `seam_pad` x width columns around the seam first, at `precision`
    (see PRECISIONS)."""
    precision = model_precision(model, precision, x.device)
    if precision == "int8":  # 16 bit runs a float32 model under autocast: no copy of the weights on each call
        model = quantize_int8(model)
    pad = seam_pad_columns(x.shape[-1], seam_pad, model.cfg.vit.patch_size)
    if pad:
        x = torch.cat((x[..., -pad:], x, x[..., :pad]), dim=-1)
    # No cast cache: each weight is used once per forward, and a cache would hold a second copy of all of them.
    with torch.autocast(x.device.type, dtype=_AUTOCAST.get(precision), enabled=precision in _AUTOCAST,
                        cache_enabled=False):
        out = model(x)
    out = {k: v.float() for k, v in out.items()}
    if pad:
        out = {k: v[..., pad:-pad] for k, v in out.items()}
    return out


def run_model_tta(model, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    """`run_model` averaged over four views of the panorama that show the same scene: as it is, its mirror image,
    and both turned half a turn about the vertical (a roll by half the width), each output turned back. A view's
    0/360 seam is where it is least continuous, and the turned views have theirs in the middle: each view is
    weighted by its columns' distance from its own seam (0 there, most opposite it), so that no column takes a seam
    (averaged evenly, half of the seam's jump moved to the middle). Depth is averaged in log space (a geometric mean:
    errors are relative), the range probability in logit space (as probabilities, one view a little below a
    calibrated threshold such as 0.999 unmasked a pixel the other three mask). Four forwards; what it buys is
    measured in docs/inference.md ("Test-time augmentation")."""
    width = x.shape[-1]
    turn = width // 2
    middle = 1 - (2 * (torch.arange(width, device=x.device) + 0.5) / width - 1).abs()  # 0 at the seam, 1 opposite
    eps = 1e-6
    log_depth, logit = 0.0, 0.0
    for mirror in (False, True):
        for shift in (0, turn):
            view = (x.flip(-1) if mirror else x).roll(shift, dims=-1)
            out = {k: v.roll(-shift, dims=-1) for k, v in run_model(model, view, **kwargs).items()}
            out = {k: v.flip(-1) for k, v in out.items()} if mirror else out
            weight = (middle if shift == 0 else 1 - middle) / 2  # the four weights of a column sum to 1
            log_depth = log_depth + weight * out["depth"].clamp(min=eps).log()
            logit = logit + weight * out["out_of_range_prob"].clamp(eps, 1 - eps).logit()
    return {"depth": log_depth.exp(), "out_of_range_prob": logit.sigmoid()}


def infer(model, rgb, resolution: tuple[int, int], *, seam_pad: float = DEFAULT_SEAM_PAD,
          device: str | torch.device | None = None, precision: str = "auto",
          tta: bool = False) -> dict[str, torch.Tensor]:
    """Image -> metric outputs at the working resolution, the one path `predict`, training validation and
    `dap eval` share: `prepare_input` (resize, normalise) then `run_model` (seam padding, precision), or with `tta`
    `run_model_tta` (four views averaged).

    rgb: as for `prepare_input`. Returns depth (metres along the ray, uncapped) and out_of_range_prob, each
    (B, 1, h, w) float32 at `resolution`; `apply_range_mask` turns the probability into the range cap."""
    run = run_model_tta if tta else run_model
    return run(model, prepare_input(rgb, resolution, device), seam_pad=seam_pad, precision=precision)


def drop_small_range_regions(prob: torch.Tensor, threshold: float, min_region: float) -> torch.Tensor:
    """`prob` (..., H, W) with the out-of-range regions (prob >= threshold, 8-connected) that cover less than
    `min_region` of their map set to 0, so no threshold marks them (`DapConfig.range_min_region`); 0: as it is."""
    if min_region <= 0:
        return prob
    import cv2

    marked = (prob >= threshold).reshape(-1, *prob.shape[-2:]).cpu().numpy().astype(np.uint8)
    drop = np.zeros(marked.shape, bool)
    for k, m in enumerate(marked):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_region * m.size
        small[0] = False  # the background
        drop[k] = small[labels]
    if not drop.any():
        return prob
    return prob.masked_fill(torch.from_numpy(drop).reshape(prob.shape).to(prob.device), 0.0)


def apply_range_mask(depth, out_of_range, cap: float = 100.0):
    """DAP convention: pixels the model marks out of range (sky / beyond its range) get depth `cap` (the model's
    max_depth, 100 m). Returns a new array or tensor of the input's kind; `out_of_range=None` returns a copy."""
    out = depth.clone() if isinstance(depth, torch.Tensor) else np.array(depth, copy=True)
    if out_of_range is None:
        return out
    if isinstance(out, torch.Tensor):
        mask = torch.as_tensor(
            np.asarray(out_of_range) if not isinstance(out_of_range, torch.Tensor) else out_of_range,
            device=out.device,
        ).bool()
    else:
        mask = np.asarray(out_of_range.cpu() if isinstance(out_of_range, torch.Tensor) else out_of_range, bool)
    if tuple(mask.shape) != tuple(out.shape):
        raise ValueError(f"range mask shape {tuple(mask.shape)} does not match depth shape {tuple(out.shape)}")
    out[mask] = cap
    return out


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window; wraps horizontally (ERP seam), replicates vertically."""
    x = F.pad(x, (r, r, 0, 0), mode="circular")
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.avg_pool2d(x, 2 * r + 1, stride=1)


def guided_upsample(depth: torch.Tensor, guide: torch.Tensor, *, radius: int = 2, eps: float = 1e-4) -> torch.Tensor:
    """Upsample a low-resolution depth map (B, 1, h, w) to the guide's size (B, 3, H, W) with the fast guided
    filter (He & Sun 2015): a local linear model log-depth ~ a * luminance + b is fitted at low resolution, its
    coefficients are upsampled, and applied to the full-resolution luminance, so depth edges follow image edges.
    Log-depth keeps the fit scale-free across near and far regions."""
    size = guide.shape[-2:]
    lum = (0.299 * guide[:, 0:1] + 0.587 * guide[:, 1:2] + 0.114 * guide[:, 2:3])
    lum_low = F.interpolate(lum, size=depth.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    q = torch.log(depth.clamp(min=1e-3))
    mean_i, mean_q = _box(lum_low, radius), _box(q, radius)
    cov = _box(lum_low * q, radius) - mean_i * mean_q
    var = _box(lum_low * lum_low, radius) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_q - a * mean_i
    a, b = _box(a, radius), _box(b, radius)
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return torch.exp(a * lum + b)


def default_model_path() -> Path:
    return Path(__file__).parent / "weights" / "dap_tiny_synth"


def resolve_model(model, device: torch.device):
    from dap.models import DapConfig, load_model

    if model is None:
        path = default_model_path()
        if not (path / "config.json").exists():
            raise DapError(
                "no default model is bundled with this install; pass a checkpoint, e.g. "
                "--checkpoint path/to/model.pth (the official DAP release)"
            )
        model = path
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device=device)
    if not isinstance(model, torch.nn.Module):
        from dap.export import OnnxModel

        if not isinstance(model, OnnxModel):
            swapped = " (the panorama comes first: dap.predict(image, model))" if _is_image_like(model) else ""
            raise DapError(f"model must be a loaded DAP model (dap.load_model), a model name, a checkpoint path or "
                           f"None for the bundled one; got {type(model).__name__}{swapped}")
        return model.to(device).eval()
    if not isinstance(getattr(model, "cfg", None), DapConfig):
        raise DapError(f"model is a {type(model).__name__}, not a DAP model; load one with dap.load_model or "
                       "dap.create_model")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes - {torch.float32} and weights_precision(model) is None:  # model.half(): fails on a float32 input
        raise DapError(f"the model's weights are {', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}; "
                       "predict needs float32 weights and computes in 16 bit itself: call model.float() and pass "
                       "precision='bf16' or 'fp16'")
    # .to() and .eval() walk every submodule: 6 ms a call, 7% of a dap_tiny predict; only when there is work to do
    first = next(model.parameters(), None)
    if first is not None and first.device != torch.device(device):
        model = model.to(device)
    if any(m.training for m in model.modules()):
        model.eval()
    return model


def _has_metadata(item) -> bool:
    """Whether a predict input can carry a Photo Sphere XMP: a path (str, bytes, PathLike) or a PIL image."""
    from PIL import Image

    return isinstance(item, (str, bytes, os.PathLike, Image.Image))


def _is_model(x) -> bool:
    from dap.export import OnnxModel

    return isinstance(x, (torch.nn.Module, OnnxModel))


def _is_image_like(x) -> bool:
    from PIL import Image

    return isinstance(x, (np.ndarray, Image.Image, bytes, bytearray)) or (isinstance(x, torch.Tensor) and x.ndim >= 2)


def _floor_scale(out: dict[str, torch.Tensor], threshold: float, camera_height: float, rows: slice, full_height: int,
                 index: int | None) -> float:
    """The factor that puts the floor of a working-resolution prediction `camera_height` metres below the camera.
    rows: the rows of the full-size input that are image (not `pad_to_erp` padding)."""
    use = (out["out_of_range_prob"][0, 0] < threshold).cpu()
    h = use.shape[0]
    start, stop, _ = rows.indices(full_height)
    use[: math.ceil(start * h / full_height)] = False
    use[stop * h // full_height:] = False
    floor, _ = geometry.floor_and_ceiling(out["depth"][0, 0], use)
    if not floor > 0:  # NaN: too few directions below the horizon see a surface in range
        which = "the input panorama" if index is None else f"batch image {index}"
        raise DapError(f"camera_height: no floor or ground found in {which} (fewer than a quarter of the directions "
                       "25-70 degrees below the horizon see a surface in range), so its scale cannot be set from "
                       "the camera height; predict it without camera_height (--camera-height)")
    return camera_height / floor


# Metres: a camera height above this is a unit mistake (millimetres), and its depth would pass io's 1e9 m sentinel
MAX_CAMERA_HEIGHT = 1000.0


def other_resolution_note(resolution: tuple[int, int] | None, model, option: str = "--resolution") -> str | None:
    """What to tell a user who runs a calibrated model (config `depth_scale` or `latitude_scale` set, as the bundled
    one is; `model` may be its DapConfig) at another working resolution (None: the model's `default_resolution`)
    than the one it was calibrated at (its `default_resolution`; for an ONNX graph exported at another size, the one
    its metadata records); else None. Its metric depth does not carry over: the bundled model's AbsRel on held-out
    rooms, 0.19 at its 256x512, is 0.21-0.26 at 240x480-320x640, 0.31 at 512x1024 and 0.74 at 192x384
    (docs/models.md, "Working resolution")."""
    cfg = getattr(model, "cfg", model)
    own = tuple(getattr(model, "calibrated_resolution", None) or cfg.default_resolution)
    resolution = tuple(resolution or cfg.default_resolution)
    calibrated = cfg.depth_scale != 1.0 or bool(cfg.latitude_scale)
    if not calibrated or resolution == own:
        return None
    fix = (f"Export the graph again at {own[0]}x{own[1]} (dap export onnx --model <the model it came from> "
           f"--resolution {own[0]}x{own[1]})" if getattr(model, "fixed", False) else f"Leave {option} out")
    return (f"working resolution {resolution[0]}x{resolution[1]} is not the one this model was calibrated at, "
            f"{own[0]}x{own[1]}, and its depth scale depends on it (the bundled model has 13% to 4x its AbsRel on "
            f"held-out rooms at the other resolutions measured: docs/models.md, \"Working resolution\"). {fix} "
            "unless you have measured the other one.")


# An input this many times smaller than the working resolution (in height) or more gets a warning: a thumbnail
# or a wrong file rather than a panorama, whose depth is mostly interpolation.
MAX_UPSAMPLING = 4

# Luminance standard deviation (of [0, 1] RGB) below which an image is blank: the 55 real photographs of the pool,
# night shots included, are all above 0.087.
BLANK_SPREAD = 0.01


def looks_blank(rgb: np.ndarray) -> bool:
    """Whether an image is one flat colour with no detail (a black video frame, a failed export, a placeholder):
    the standard deviation of its luminance is below `BLANK_SPREAD`. rgb: float (H, W, 3) in [0, 1]."""
    from dap.io import REC709_LUMA

    step = max(1, rgb.shape[1] // 512)  # a statistic: every k-th pixel of large images is plenty
    luminance = rgb[::step, ::step] @ np.array(REC709_LUMA, np.float32)
    return bool(luminance.size) and float(luminance.std()) < BLANK_SPREAD


def _levelled_input(rgb: np.ndarray, tilt: torch.Tensor, resolution: tuple[int, int]) -> np.ndarray:
    """The network's view of `rgb` levelled (`geometry.level_panorama`). A large panorama is first shrunk to
    twice the working resolution: the network sees no more than that, and turning an 8K panorama's every pixel
    would take 4x the time of its prediction and 2 GB."""
    size = (2 * resolution[0], 2 * resolution[1])
    if rgb.shape[0] > size[0]:
        rgb = resize_image(rgb.transpose(2, 0, 1), size).transpose(1, 2, 0)
    return geometry.level_panorama(rgb, tilt)


# A panorama whose camera looks tilted by more than this many degrees gets a warning (without `level`): the 55 real
# photographs of the pool are all under 7 but one, tilted by 22 (horizonnet_demo, which HorizonNet levels itself).
TILT_WARNING = 10.0


@torch.inference_mode()
def predict(
    images,
    model=None,
    *,
    resolution: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    seam_pad: float | None = None,
    pad_to_erp: bool = False,
    pad_top: int | None = None,
    threshold: float | None = None,
    upsample: str = "bilinear",
    precision: str = "auto",
    camera_height: float | None = None,
    level: bool = False,
    tta: bool = False,
) -> Prediction | list[Prediction]:
    """Metric depth for one panorama (path, PIL image, (H, W, 3) array, (3, H, W) tensor) or a batch (list, or a
    4-D array/tensor), returned as a `Prediction` or a list of them. A float32 (H, W, 3) array is not copied: it
    is the Prediction's `rgb` (a 16K panorama is 1.6 GB as float32).

    model: a loaded DAP model (or a `dap.export.OnnxModel`), a model name (`dap models`), a checkpoint path
        (official model.pth or ours), or None for the bundled default.
    resolution: working (height, width), 2:1, multiples of 16; default: the model's `default_resolution` (512x1024
        for the official model). Output is resized back to each input's size.
    device: where to run ("cpu", "cuda", "cuda:N", "mps"); default: CUDA, else MPS, else the CPU. A loaded model
        passed in is moved there, in place (as torch's `model.to`).
    seam_pad: fraction of the width wrapped around each side of the seam (0 disables); default DEFAULT_SEAM_PAD, or
        for an ONNX graph the value it was exported with (as `dap predict` does).
    threshold: range-mask probability threshold; default: the model's `range_threshold` (0.5 unless calibrated);
        above 1 (e.g. math.inf), nothing is masked: the depth head alone.
    pad_to_erp: accept partial panoramas wider than 2:1 by padding missing latitude rows (masked in the output):
        where the file's Photo Sphere XMP puts them, else centred on the horizon.
    pad_top: with pad_to_erp, the row of the padded panorama where the input's first row goes (overrides both).
    upsample: "bilinear" or "guided" (edge-aware, guided by the full-resolution RGB) when the input is larger
        than the working resolution. Memory stays bounded by the working resolution plus full-size maps.
    precision: the network's arithmetic, one of PRECISIONS: "auto" (bf16 on CUDA and on CPUs with native bf16,
        else fp32), "fp32" (exact), "bf16", "fp16", or "int8" (CPU). int8 quantises a copy of the model on every
        call; for many calls, pass `prepare_model(model, "int8")` (for bf16/fp16 the same saves a cast of every
        weight on each call).
    camera_height: metres from the floor up to the lens, if known (a tripod's height): each depth map is rescaled so
        the floor it shows lies that far below the camera (`geometry.floor_and_ceiling` on the working-resolution
        map, out-of-range pixels left out). A model can only guess metric scale from the image; a known height
        fixes it. An error if no floor or ground is visible 25-70 degrees below the horizon.
    level: a panorama whose camera was not level (walls lean) is levelled before the network sees it
        (`geometry.level_rotation`, from how its vertical edges lean) and the outputs are turned back to the input's
        frame; the network was trained on level panoramas. Left as it is when the tilt cannot be judged (too few
        vertical edges, or edges that do not agree on one). Without it, a tilt of more than TILT_WARNING degrees
        gets a warning.
    tta: test-time augmentation: the network runs on the panorama, its mirror image and both turned half a turn
        about the vertical, and their outputs are averaged (`run_model_tta`): four times the time, for a little
        less error and a much smaller seam (docs/inference.md, "Test-time augmentation").
    """
    if upsample not in ("bilinear", "guided"):
        raise DapError(f"upsample must be 'bilinear' or 'guided', got {upsample!r}")
    if camera_height is not None and not (is_number(camera_height) and 0 < camera_height < MAX_CAMERA_HEIGHT):
        raise DapError(f"camera_height must be a positive number of metres below {MAX_CAMERA_HEIGHT:g}, got "
                       f"{camera_height!r}")
    if pad_top is not None and not (isinstance(pad_top, (int, np.integer)) and not isinstance(pad_top, bool)):
        raise DapError(f"pad_top is a row number (an int), got {pad_top!r}")
    if pad_top is not None and not pad_to_erp:
        raise DapError("pad_top places a partial panorama's rows: it needs pad_to_erp=True")
    for name, value in (("level", level), ("pad_to_erp", pad_to_erp), ("tta", tta)):
        if not isinstance(value, (bool, np.bool_)):  # "no" would be true
            raise DapError(f"{name} is True or False, got {value!r}")
    if seam_pad is not None:
        check_seam_pad(seam_pad)
    if _is_model(images):  # before loading `model`, which may be the panorama's path
        raise DapError(f"the first argument is a model ({type(images).__name__}); the panorama comes first: "
                       "dap.predict(image, model)")
    items, is_batch = _split_batch(images)
    dev = select_device(device)
    # run in eval mode (resolve_model); a check in the middle of training leaves each module as it found it
    training = [m for m in model.modules() if m.training] if isinstance(model, torch.nn.Module) else []
    owned = not isinstance(model, torch.nn.Module)  # loaded here: nobody else holds its float32 weights
    model = resolve_model(model, dev)
    try:
        seam_pad = model_seam_pad(model) if seam_pad is None else seam_pad
        precision = model_precision(model, precision, dev)
        if owned or precision == "int8":  # a caller's model in 16 bit runs under autocast: no second copy per call
            model = prepare_model(model, precision, in_place=owned)
        resolution = model.cfg.default_resolution if resolution is None else resolution
        if isinstance(resolution, (np.ndarray, torch.Tensor)) and resolution.ndim == 1:
            resolution = tuple(resolution.tolist())
        if (not isinstance(resolution, (tuple, list)) or len(resolution) != 2
                or not all(isinstance(v, (int, np.integer)) for v in resolution)
                or resolution[1] != 2 * resolution[0] or resolution[0] <= 0 or resolution[0] % 16):
            raise DapError(f"resolution {resolution!r} must be (height, width) of a 2:1 panorama in multiples of 16, "
                           "e.g. (512, 1024)")
        resolution = tuple(int(v) for v in resolution)
        if note := other_resolution_note(resolution, model, option="resolution"):  # once per calling line
            warnings.warn(note, SettingWarning, stacklevel=3)  # past torch's inference_mode wrapper
        if threshold is not None and not (is_number(threshold, finite=False) and threshold >= 0.0):  # NaN too
            raise DapError(f"threshold is a probability from 0 to 1 (above 1: nothing is masked), got {threshold!r}")
        results = []
        for k, item in enumerate(items):
            rgb = to_rgb(item, f"batch image {k}" if is_batch else "input image")
            rows = slice(None)
            h, w = rgb.shape[:2]
            if pad_to_erp and w != 2 * h:
                top = pad_top
                if top is None and _has_metadata(item):
                    from dap import io

                    top = photo_sphere_top(io.read_photo_sphere(item), h, w)
                rgb, rows = pad_rows_to_erp(rgb, top)
            which = f"batch image {k}" if is_batch else "input panorama"  # as the errors and warnings name it
            geometry.check_erp_shape(*rgb.shape[:2], what=which)
            if rgb.shape[0] * MAX_UPSAMPLING <= resolution[0]:
                # sizes as width x height, as image sizes are given everywhere (--resolution alone takes HxW)
                warn_input(f"{which} is only {rgb.shape[1]}x{rgb.shape[0]} pixels (width x height), enlarged "
                           f"{resolution[0] / rgb.shape[0]:.0f}x to the working resolution's "
                           f"{resolution[1]}x{resolution[0]}: its depth holds no more detail than the input. Use a "
                           "larger panorama.")
            if geometry.looks_dual_fisheye(rgb):
                warn_input(f"{which} looks like an unstitched dual-fisheye image (two discs on black), not an "
                           "equirectangular panorama, so its depth means nothing. Stitch it first: the camera's app or "
                           "software exports equirectangular images.")
            if looks_blank(rgb):
                warn_input(f"{which} is blank (one flat colour, no detail), so its depth means nothing: check that it "
                           "is the image you meant (a black video frame or a failed export?)")
            tilt = geometry.level_rotation(rgb) if level else None
            if tilt is None and (tilted := geometry.tilt_angle(rgb)) > TILT_WARNING:  # NaN (cannot judge): no warning
                if level:  # asked for and not done: the user is told, the record says level all the same
                    warn_input(f"{which} looks taken by a camera tilted by about {tilted:.0f} degrees, but it could "
                               "not be levelled (its vertical edges do not settle on one tilt); it is predicted as it "
                               "is. Level it in the camera's app or in an editor that levels panoramas.")
                else:
                    warn_input(f"{which} looks taken by a camera tilted by about {tilted:.0f} degrees (its vertical "
                               "edges lean); the network was trained on level panoramas. Level it: --level "
                               "(predict(..., level=True)) or the camera app's horizon levelling.")
            net_input = rgb if tilt is None else _levelled_input(rgb, tilt, resolution)
            out = infer(model, net_input, resolution, seam_pad=seam_pad, device=dev, precision=precision, tta=tta)
            mask_at = model.cfg.range_threshold if threshold is None else threshold
            out["out_of_range_prob"] = drop_small_range_regions(out["out_of_range_prob"], mask_at,
                                                                model.cfg.range_min_region)
            if camera_height is not None:  # on the levelled panorama, whose floor is where the estimate looks
                out["depth"] = out["depth"] * _floor_scale(out, mask_at, camera_height, rows, rgb.shape[0],
                                                           k if is_batch else None)
            if tilt is not None:  # back to the input's frame; nearest for depth: no mixing across edges
                out["depth"] = geometry.rotate_erp(out["depth"], tilt, mode="nearest")
                out["out_of_range_prob"] = geometry.rotate_erp(out["out_of_range_prob"], tilt)
            full = rgb.shape[:2]
            if upsample == "guided" and full[0] > out["depth"].shape[-2]:
                guide = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dev)
                depth = guided_upsample(out["depth"], guide)[0, 0]
            else:
                depth = F.interpolate(out["depth"], size=full, mode="bilinear", align_corners=False)[0, 0]
            prob = F.interpolate(out["out_of_range_prob"], size=full, mode="bilinear", align_corners=False)[0, 0]
            max_depth = float(model.cfg.max_depth)
            mask = prob >= mask_at
            depth = apply_range_mask(depth, mask, max_depth)
            if rows != slice(None):  # rows that were padding carry no measurement
                outside = torch.ones(full[0], dtype=torch.bool, device=dev)
                outside[rows] = False
                mask[outside] = True
                depth[outside] = 0.0
            results.append(Prediction(
                rgb=rgb, depth=depth.cpu().numpy().astype(np.float32), range_mask=mask.cpu().numpy(),
                out_of_range_prob=prob.cpu().numpy().astype(np.float32), max_depth=max_depth, valid_rows=rows,
            ))
        return results if is_batch else results[0]
    finally:
        for m in training:
            m.training = True


# --- `dap predict` ---------------------------------------------------------------------------------------

OUTPUT_SUFFIXES = {"npy": ".npy", "exr": ".exr", "png16": ".depth.png", "color": ".color.png", "mask": ".mask.png",
                   "normals": ".normals.png", "ply": ".ply", "glb": ".glb", "cubemap": ".cube"}
OUTPUT_KINDS = tuple(OUTPUT_SUFFIXES)
POINT_KINDS = frozenset({"ply", "glb"})  # the point clouds, which `point_stride` subsamples
PNG16_SCALE = 1 / 512  # metres per unit of the 16-bit depth PNG (as Stanford2D3D): 0..128 m in 2 mm steps
NAMING_RULE = ("Output names: each input's path relative to the folder all inputs share, without its extension "
               "(one folder or files from one folder: the file stems; a/pano.jpg b/pano.jpg: a/pano, b/pano). "
               "Inputs that would still share a name keep their extension (pano.jpg, pano.png: pano.jpg.npy, "
               "pano.png.npy). Folder listings and globs skip hidden files and our own outputs (*.mask.png, ...); "
               "a folder's other files (not images) are named in a note and left out.")


@dataclass
class InputItem:
    name: str  # output file stem, may hold sub-folders (see `output_names`)
    source: str  # what the user gave (for messages)
    load: object  # () -> (float32 (H, W, 3) RGB, notes on the file: `io.read_rgb_notes`); None for a whole video
    video: str | None = None  # frames of one video share this, for temporal scale smoothing


def ours_or_hidden(path: Path) -> bool:
    """Hidden files (temporaries, our run records) and our own outputs, so `--out` may be the input folder. An .exr
    is ours when it holds no colour (our depth EXR has one channel, Z), else an HDR panorama."""
    from dap import io

    name = path.name.lower()
    if name.startswith("."):
        return True
    if name.endswith(OUTPUT_SUFFIXES["exr"]):
        return io.is_depth_exr(path)
    return name.endswith(tuple(OUTPUT_SUFFIXES.values()))


def _hidden_images_note(paths: list[Path]) -> str:
    """"; it holds N hidden image(s) ..." when some of `paths` are images whose names begin with a dot, which are
    never inputs (a run's temporaries and records are so named); else ""."""
    from dap import io

    hidden = [p.name for p in paths if p.name.startswith(".") and p.suffix.lower() in io.IMAGE_SUFFIXES
              and p.is_file() and not io.TEMPORARY_NAME.fullmatch(p.name)]
    if not hidden:
        return ""
    return (f"; {len(hidden)} hidden image(s) ({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}) are "
            "left out, as names beginning with a dot are (dap's temporaries and records): rename them to predict them")


def _listable(path: Path) -> bool:
    """Images a folder or glob contributes."""
    from dap import io

    return path.suffix.lower() in io.IMAGE_SUFFIXES and not ours_or_hidden(path) and not path.is_dir()


def output_names(paths: list[Path]) -> list[str]:
    """Distinct output stems for distinct input files (the rule in NAMING_RULE)."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath([p.parent for p in absolute])
    relative = [p.relative_to(root) for p in absolute]
    names = [r.with_suffix("").as_posix() for r in relative]
    # names still shared keep their extension, until none is: a.jpg and a.png become a.jpg and a.png, which
    # a.jpg.png (stem a.jpg) then shares, so it keeps its own too; whole relative paths are distinct, so this ends
    while len(set(names)) < len(names):
        counts = Counter(names)
        longer = [name if counts[name] == 1 else r.as_posix() for name, r in zip(names, relative, strict=True)]
        if longer == names:  # one file given twice: its names cannot differ
            break
        names = longer
    return names


def _is_pattern(spec: str) -> bool:
    """A glob pattern, unless a file or folder has that very name (pano[1].jpg)."""
    return any(c in spec for c in "*?[") and not os.path.lexists(spec)


def _why_missing(spec: str) -> str | None:
    """What a path that does not exist most likely is, in words, where we can tell."""
    from dap.io import dangling_link, missing_file_hint

    return missing_file_hint(spec) or dangling_link(spec)


def glob_paths(spec: str) -> list[Path]:
    """The paths a pattern matches, sorted, ** at any depth as in shells. glob follows links to folders, up to the
    system's 40 hops per path: a link back into the folder gives each file ~40 paths (folded later, by real path),
    two of them 2^40, so a file reached more than 1000 ways stops the listing."""
    import glob

    found, ways = [], Counter()
    for path in glob.iglob(spec, recursive=True):
        real = os.path.realpath(path)
        ways[real] += 1
        if ways[real] > 1000:
            raise DapError(f"the pattern {spec!r} reaches {real} over and over through symbolic links that lead back "
                           "into its folders; remove those links, or give the folders without **")
        found.append(Path(path))
    return sorted(found)


def expand_inputs(inputs: list[str]) -> tuple[list[InputItem], list[Path]]:
    """Files, folders (their images, sorted), globs (** at any depth) and videos (one item each, see
    `iter_frames`) -> items, each file once, named by `output_names`; and the other files and the sub-folders of
    the folders given, which were left out (a .heic where Pillow lacks its plug-in, notes), so the caller can say
    so. A path that does not exist, a pattern that matches nothing and a folder without images raise DapError
    (before any model is loaded)."""
    from dap import io

    missing = [spec + (f" ({why})" if (why := _why_missing(spec)) else "")
               for spec in inputs if not _is_pattern(spec) and not os.path.exists(spec)]
    if missing:
        raise DapError(f"no such file or folder: {', '.join(missing)}; check the path (quote glob patterns)")
    paths: dict[str, Path] = {}  # absolute path -> path as given, in order: a file listed twice runs once
    ignored: list[Path] = []
    listed_dirs: set[str] = set()  # folders listed in their own right ('panos/**' matches the sub-folders too)
    for spec in inputs:
        if _is_pattern(spec):
            matched = glob_paths(spec)
            # not our outputs: cubemap folders (pano.cube), nor their faces, which 'dir/**' reaches
            cube = OUTPUT_SUFFIXES["cubemap"]
            found = [p for p in matched if not any(part.lower().endswith(cube) for part in p.parts)
                     and ((p.is_dir() and not ours_or_hidden(p)) or io.listed_as_video(p) or _listable(p))]
            if not found:
                brackets = " ([...] matches one character of a set: write [[] for a literal [)" if "[" in spec else ""
                raise DapError(f"the pattern {spec!r} matches no panorama, folder or video{brackets}"
                               f"{_hidden_images_note(matched)}")
        else:
            found = [Path(spec)]
        listed_dirs.update(os.path.abspath(p) for p in found if p.is_dir())
        for path in found:
            if path.is_dir():
                listing = sorted(path.iterdir())
                images = [p for p in listing if _listable(p)]
                # folders are not searched below their first level: sub-folders are left out, and said so
                left_out = [p for p in listing if (p.is_dir() or p.suffix.lower() not in io.IMAGE_SUFFIXES)
                            and not ours_or_hidden(p) and (p.is_file() or p.is_dir())]
                ignored += left_out
                # a folder a pattern matched may hold no images (an --out inside the pattern's folder, holding our
                # outputs): left out; a folder given by name must hold some
                if not images and not _is_pattern(spec):
                    subs = [p.name for p in left_out if p.is_dir()]
                    videos = [p.name for p in left_out if io.listed_as_video(p)]
                    inside = (f"; its sub-folders ({', '.join(subs[:3])}{', ...' if len(subs) > 3 else ''}) are not "
                              f"searched: pass them, or a pattern such as '{path / '*'}'" if subs else "")
                    if videos:
                        inside += (f"; it holds {len(videos)} video(s) ({', '.join(videos[:3])}"
                                   f"{', ...' if len(videos) > 3 else ''}): pass a video by its own path")
                    raise DapError(f"no images ({', '.join(io.IMAGE_SUFFIXES)}) found in the folder {path}{inside}"
                                   f"{_hidden_images_note(listing)}")
            else:
                images = [path]
            for image in images:  # by the file reached: links to one file, a link loop that ** follows: once
                paths.setdefault(os.path.realpath(image), image)
    files = list(paths.values())
    kept = {os.path.abspath(p) for p in files}  # a video '**' matched itself, beside its folder's listing
    ignored = [p for p in ignored if not (p.is_dir() and os.path.abspath(p) in listed_dirs)
               and os.path.abspath(p) not in kept]
    if not files:  # only folders without images matched
        raise DapError(f"no images ({', '.join(io.IMAGE_SUFFIXES)}) found in what {', '.join(inputs)} matched")
    items = []
    for path, name in zip(files, output_names(files), strict=True):
        if path.suffix.lower() in io.VIDEO_SUFFIXES:
            items.append(InputItem(name, str(path), None, str(path)))
        else:
            items.append(InputItem(name, str(path), functools.partial(io.read_rgb_notes, path)))
    return items, ignored


def iter_frames(items: list[InputItem], failures: list[tuple[str, str]], pad_to_erp: bool = False,
                every_s: float | None = None):
    """Items with videos expanded into one item per frame, decoded one at a time as the loop reaches them (a
    long video never sits in memory); with `every_s`, one frame every that many seconds of video (the first
    included), named by its number in the video. A video that cannot be decoded, or whose frames are no panoramas
    (not 2:1; with `pad_to_erp`, not 2:1 or wider), is recorded in `failures` once, not frame by frame."""
    from dap import io

    for item in items:
        if item.load is not None:
            yield item
            continue
        try:
            i = -1
            frames = (((i, f) for i, _, f in io.sample_video_frames(item.video, every_s)) if every_s
                      else enumerate(io.iter_video_frames(item.video)))
            for i, frame in frames:
                h, w = frame.shape[:2]
                if i == 0 and not (pad_to_erp and w > 2 * h):
                    geometry.check_erp_shape(h, w, what="each of its frames")
                yield InputItem(f"{item.name}_{i:06d}", f"{item.source} frame {i}", lambda f=frame: (f, []), item.video)
            if i < 0:
                failures.append((item.source, "the video holds no frames"))
        except DapError as e:
            failures.append((item.source, str(e)))


def check_output_kinds(kinds) -> None:
    if unknown := [kind for kind in kinds if kind not in OUTPUT_SUFFIXES]:
        raise DapError(f"unknown output kind(s) {unknown}; choose from {', '.join(OUTPUT_KINDS)}")


def output_paths(out_dir: Path, name: str, kinds: list[str]) -> dict[str, Path]:
    check_output_kinds(kinds)
    return {k: out_dir / f"{name}{OUTPUT_SUFFIXES[k]}" for k in kinds}


def name_too_long(paths: list[Path]) -> str | None:
    """Why some of these output files could not be created because their names or whole paths (or those of
    `dap.io.atomic_write`'s temporaries beside them) pass the system's limits; None when they all fit."""
    from dap import io

    longest = max(len(os.fsencode(io.temporary_path(p, "0" * 12).name)) for p in paths)
    folder = next((d for d in (paths[0].parent, *paths[0].parent.parents) if d.exists()), Path("."))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer: the common limit
        limit = 255
    if longest > limit:
        return (f"its output files would have names of up to {longest} bytes (with their temporary names), more than "
                f"the {limit} this file system allows; rename the input to something shorter")
    deepest = max(len(os.fsencode(os.path.abspath(io.temporary_path(p, "0" * 12)))) for p in paths)
    try:
        path_limit = os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        path_limit = 4096
    if deepest >= path_limit:
        return (f"its output paths would be up to {deepest} bytes long (with their temporary names), over the "
                f"{path_limit} this system allows; choose a shorter --out or rename the input")
    return None


def blocked_folder(paths: list[Path], elsewhere: str = ", or predict into another --out") -> str | None:
    """Why these output files (all in one folder) cannot be created because a folder on their way exists as a
    file; None when nothing is in the way. `elsewhere`: the other way out, for the message."""
    folder = paths[0].parent
    existing = next((d for d in (folder, *folder.parents) if os.path.lexists(d)), None)
    if existing is None or os.path.isdir(existing):
        return None
    return f"its outputs go in the folder {folder}, but {existing} is a file; move it away{elsewhere}"


def record_path(out_dir: Path, name: str) -> Path:
    """Where `dap predict` records what an input's outputs were made from: `.<name>.dap.json` beside them (hidden,
    so folder inputs never list it)."""
    path = out_dir / name
    return path.with_name(f".{path.name}.dap.json")


def input_identity(path: str | os.PathLike) -> dict:
    """The input file as a record names it: absolute path, size and modification time (a re-exported image
    differs)."""
    stat = os.stat(path)
    return {"file": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_fingerprint(model) -> str:
    """SHA-256 of what a model computes: its config and every weight tensor (name, dtype, shape, bytes), whichever
    file or copy it was loaded from, so an overwritten checkpoint never matches old outputs (~1 s per GB of
    weights); for an ONNX model (`dap.export.OnnxModel`), of its config and the graph file's bytes."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    if isinstance(model, torch.nn.Module):
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    else:
        with open(model.path, "rb") as f:
            for chunk in iter(functools.partial(f.read, 1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def read_record(path: Path) -> dict | None:
    """A record written by `write_record`; None if there is none or it cannot be read (its outputs are then made
    again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == "dap-predict-record" else None


def write_record(path: Path, record: dict) -> None:
    from dap import io

    with io.atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"format": "dap-predict-record", "version": 1, **record}, indent=1))


def changed_keys(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two flat mappings (a missing key counts as None), sorted: what a stored
    record or cache key and the current run disagree on."""
    return [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def same_input_file(recorded_input: dict, now: dict) -> bool:
    """Whether a record's input names the file that `now` (`input_identity`) does: one file under another spelling
    (through a symbolic link) is the same input."""
    file = recorded_input.get("file")
    return file == now["file"] or (isinstance(file, str) and os.path.realpath(file) == os.path.realpath(now["file"]))


def input_file_changed(recorded_input: dict, now: dict) -> bool:
    """Whether that file's size or modification time differ from the record's: another version of it."""
    return any(recorded_input.get(k) != now[k] for k in ("size", "mtime_ns"))


def record_conflict(recorded: dict, expected: dict) -> str | None:
    """How an existing record differs from what this run would write, in words; None if it does not."""
    before, now = recorded.get("input", {}), expected["input"]
    if not same_input_file(before, now):
        return f"they were made from {before.get('file')}"
    changes = ["the input file changed since (size or modification time)"] if input_file_changed(before, now) else []
    old, new = recorded.get("settings", {}), expected["settings"]
    shown = lambda v: "not set" if v is None else repr(v)  # noqa: E731 - a key absent from a record is off
    changes += ["by another model" if key == "model" else f"{key} was {shown(old.get(key))}, now {shown(new.get(key))}"
                for key in changed_keys(old, new)]
    return "; ".join(changes) or None


def outputs_complete(paths: dict[str, Path]) -> bool:
    """Every output exists; a cubemap folder only with all its faces (older runs could leave partial ones)."""
    return all(
        all((p / f"{axis}.{part}").is_file() for axis in geometry.CUBE_FACES for part in ("rgb.png", "depth.npy"))
        if kind == "cubemap" else p.is_file()
        for kind, p in paths.items()
    )


def _write_cubemap(path: Path, rgb: np.ndarray, depth: np.ndarray) -> None:
    """Six faces of RGB and depth, in a folder that replaces `path` only once complete (`io.atomic_folder`): a killed
    run leaves the earlier folder or the new one, never a partial one, and two writers never share a temporary."""
    from dap import io

    face = max(16, depth.shape[0] // 2)
    faces_rgb = geometry.erp_to_cubemap(rgb, face)
    faces_depth = geometry.erp_to_cubemap(depth, face, mode="nearest")
    with io.atomic_folder(path) as tmp:
        for i, axis in enumerate(geometry.CUBE_FACES):
            io.write_rgb(tmp / f"{axis}.rgb.png", faces_rgb[i])
            io.write_depth(tmp / f"{axis}.depth.npy", faces_depth[i])


def write_outputs(pred: Prediction, paths: dict[str, Path], *, point_stride: int = 1) -> list[str]:
    """Write the requested outputs of one prediction. Point clouds drop out-of-range pixels. Returns notes on what
    an output could not hold (depth beyond the 16-bit PNG's range), for the caller to say with the input's name."""
    from dap import io

    check_output_kinds(paths)
    if isinstance(point_stride, bool) or not isinstance(point_stride, (int, np.integer)) or point_stride < 1:
        raise DapError(f"point_stride keeps every n-th pixel in each direction: an int >= 1, got {point_stride!r}")
    notes = []
    valid_depth = np.where(pred.range_mask, np.float32(0), pred.depth.astype(np.float32, copy=False))
    # computed from the depth on each access: once here for the outputs that share them
    normals = pred.normals if {"normals", "ply"} & paths.keys() else None
    points = pred.points if POINT_KINDS & paths.keys() else None
    for kind, path in paths.items():
        if kind == "npy" or kind == "exr":
            io.write_depth(path, valid_depth)
        elif kind == "png16":
            if clipped := io.write_depth(path, valid_depth, scale=PNG16_SCALE, warn=False):
                limit = 65534 * PNG16_SCALE
                notes.append(f"{clipped} depth values up to {float(valid_depth.max()):.3g} m are beyond what the "
                             f"16-bit depth PNG holds ({limit:.0f} m) and are {limit:.0f} m there; the npy and exr "
                             "outputs keep them")
        elif kind == "color":
            lo, hi = io.preview_range(valid_depth)
            io.write_depth_color(path, valid_depth, min_depth=lo, max_depth=hi)
        elif kind == "mask":
            io.write_mask_png(path, pred.range_mask)
        elif kind == "normals":
            io.write_normals_png(path, normals)
        elif kind in POINT_KINDS:
            keep = ~pred.range_mask & (valid_depth > 0)
            keep &= _stride_mask(keep.shape, point_stride)
            kept, colors = points[keep], pred.rgb[keep]
            if kind == "ply":
                io.write_ply(path, kept, colors, normals[keep])
            elif not len(kept):  # glTF has no empty point cloud (trimesh refuses to write one); PLY has
                raise DapError(f"no points for {path.name}: every pixel that point_stride {point_stride} keeps is out "
                               "of range or without depth; lower --point-stride, or leave glb out")
            else:
                io.write_glb(path, kept, colors)
        elif kind == "cubemap":
            _write_cubemap(path, pred.rgb, valid_depth)
    return notes


class ScaleSmoother:
    """Temporal smoothing of the global scale of video depth: each frame's depth is rescaled so its median
    follows an exponential moving average of the medians (in log space) of the frames so far. Metric models
    jitter in scale from frame to frame more than in shape; this removes the jitter, not the motion. Blank frames
    (a fade from black: `looks_blank`) are left as they are and do not count."""

    def __init__(self, alpha: float):
        self.alpha, self.video, self.log_median = alpha, None, None

    def __call__(self, pred: Prediction, video: str | None) -> None:
        if video is None or self.alpha <= 0 or looks_blank(pred.rgb):
            return
        ok = ~pred.range_mask & (pred.depth > 0)
        if not ok.any():
            return
        current = float(np.log(np.median(pred.depth[ok])))
        if video != self.video or self.log_median is None:
            self.video, self.log_median = video, current
        else:
            self.log_median = (1 - self.alpha) * current + self.alpha * self.log_median
        pred.depth[ok] *= np.float32(np.exp(self.log_median - current))

    def state(self, video: str) -> float | None:
        """What to record with a frame of `video` for `restore`: the average so far, or None before this video's
        first frame that counts (a blank intro: the state still holds the previous video's average)."""
        return self.log_median if video == self.video else None

    def restore(self, video: str, log_median: float | None) -> None:
        """Continue from the state recorded after a frame of `video` that is not predicted again (a resumed run);
        None (a blank frame, or a record from before states were kept) leaves the state as it is."""
        if log_median is not None:
            self.video, self.log_median = video, float(log_median)


def _stride_mask(shape: tuple[int, int], stride: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[::stride, ::stride] = True
    return m
