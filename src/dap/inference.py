"""Panorama in, metric depth out: `dap.predict()` and `dap predict`.

Preprocessing follows the official *evaluation* convention: RGB in [0, 1], resized to the working resolution
(default 512x1024, the official eval size) with antialiasing, then ImageNet mean/std normalisation. (The official
`infer.py` feeds un-normalised RGB at full size; that disagrees with how the model is evaluated, so we don't.)

Outputs, at the input's full resolution:
  depth       float32 metres, distance along each pixel's ray. Pixels in `range_mask` hold `max_depth` (100 m),
              the official convention; do not read them as measurements.
  range_mask  bool, True where the range head says the pixel is sky or beyond `max_depth` (probability >= 0.5).
  points      (H, W, 3) camera-frame points (x right, y down, z forward), from dap.geometry.
  normals     (H, W, 3) unit normals facing the camera.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dap import geometry
from dap.errors import DapError, NotPanoramaError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Columns copied from the opposite border on each side so the network sees the 0/360 degree seam as interior.
DEFAULT_SEAM_PAD = 1 / 16


@dataclass
class Prediction:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    depth: np.ndarray  # (H, W) float32 metres
    range_mask: np.ndarray  # (H, W) bool: sky / beyond max_depth
    out_of_range_prob: np.ndarray  # (H, W) float32
    max_depth: float = 100.0
    valid_rows: slice = field(default_factory=lambda: slice(None))  # rows that are real image (see pad_to_erp)

    @functools.cached_property
    def points(self) -> np.ndarray:
        return geometry.depth_to_points(self.depth)

    @functools.cached_property
    def normals(self) -> np.ndarray:
        return geometry.normals_from_depth(np.where(self.range_mask, 0.0, self.depth).astype(np.float32))


def select_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _to_rgb_array(image) -> np.ndarray:
    """Any supported single image -> float32 (H, W, 3) in [0, 1]."""
    from PIL import Image

    from dap import io

    if isinstance(image, (str, os.PathLike)):
        return io.read_rgb(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu().float()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.expand(3, -1, -1).permute(1, 2, 0)
        image = t.numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise DapError(f"expected an RGB image (H, W, 3), got an array of shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def _split_batch(images) -> tuple[list, bool]:
    """A list/tuple or a 4-D array/tensor is a batch; anything else is one image."""
    if isinstance(images, (list, tuple)):
        return list(images), True
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images), True
    return [images], False


def pad_rows_to_erp(rgb: np.ndarray) -> tuple[np.ndarray, slice]:
    """Pad a partial panorama (full 360 degrees horizontally, less than 180 vertically, centred on the horizon)
    with black rows to 2:1. Returns the padded image and the rows of the original."""
    h, w = rgb.shape[:2]
    if w < 2 * h or w % 2:
        raise NotPanoramaError(
            f"image is {w}x{h}: too tall to be a partial 360-degree panorama (needs width >= 2 x height)"
        )
    top = (w // 2 - h) // 2
    padded = np.zeros((w // 2, w, 3), np.float32)
    padded[top : top + h] = rgb
    return padded, slice(top, top + h)


def normalize_image(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> the network's input (ImageNet mean/std), as in training and evaluation."""
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _prepare(rgb: np.ndarray, resolution: tuple[int, int], device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)
    if tuple(x.shape[-2:]) != tuple(resolution):
        x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False, antialias=True)
    return normalize_image(x)


def seam_pad_columns(width: int, seam_pad: float, patch: int = 16) -> int:
    return int(round(width * seam_pad / patch)) * patch


def run_model(model, x: torch.Tensor, *, seam_pad: float = DEFAULT_SEAM_PAD) -> dict[str, torch.Tensor]:
    """Forward a normalised ERP batch, wrapping `seam_pad` x width columns around the seam first."""
    pad = seam_pad_columns(x.shape[-1], seam_pad, model.cfg.vit.patch_size)
    if pad:
        x = torch.cat((x[..., -pad:], x, x[..., :pad]), dim=-1)
    device = x.device
    autocast = device.type == "cuda"
    dtype = torch.bfloat16 if autocast and torch.cuda.is_bf16_supported() else torch.float16
    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
        out = model(x)
    out = {k: v.float() for k, v in out.items()}
    if pad:
        out = {k: v[..., pad:-pad] for k, v in out.items()}
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
    from dap.models import load_model

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
    return model.to(device).eval()


@torch.inference_mode()
def predict(
    images,
    model=None,
    *,
    resolution: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    seam_pad: float = DEFAULT_SEAM_PAD,
    pad_to_erp: bool = False,
    threshold: float = 0.5,
    upsample: str = "bilinear",
) -> Prediction | list[Prediction]:
    """Metric depth for one panorama (path, PIL image, (H, W, 3) array, (3, H, W) tensor) or a batch (list, or a
    4-D array/tensor), returned as a `Prediction` or a list of them.

    model: a loaded DAP model, a checkpoint path (official model.pth or ours), or None for the bundled default.
    resolution: working (height, width), multiples of 16; default: the model's `default_resolution` (512x1024
        for the official model). Output is resized back to each input's size.
    seam_pad: fraction of the width wrapped around each side of the seam (0 disables).
    pad_to_erp: accept partial panoramas wider than 2:1 by padding missing latitude rows (masked in the output).
    upsample: "bilinear" or "guided" (edge-aware, guided by the full-resolution RGB) when the input is larger
        than the working resolution. Memory stays bounded by the working resolution plus full-size maps.
    """
    if upsample not in ("bilinear", "guided"):
        raise DapError(f"upsample must be 'bilinear' or 'guided', got {upsample!r}")
    items, is_batch = _split_batch(images)
    dev = select_device(device)
    model = resolve_model(model, dev)
    resolution = tuple(resolution or model.cfg.default_resolution)
    if resolution[0] % 16 or resolution[1] % 16:
        raise DapError(f"resolution {resolution} must be multiples of 16")
    results = []
    for item in items:
        rgb = _to_rgb_array(item)
        rows = slice(None)
        h, w = rgb.shape[:2]
        if pad_to_erp and w != 2 * h:
            rgb, rows = pad_rows_to_erp(rgb)
        geometry.check_erp_shape(*rgb.shape[:2], what="input panorama")
        out = run_model(model, _prepare(rgb, resolution, dev), seam_pad=seam_pad)
        full = rgb.shape[:2]
        if upsample == "guided" and full[0] > out["depth"].shape[-2]:
            guide = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dev)
            depth = guided_upsample(out["depth"], guide)[0, 0]
        else:
            depth = F.interpolate(out["depth"], size=full, mode="bilinear", align_corners=False)[0, 0]
        prob = F.interpolate(out["out_of_range_prob"], size=full, mode="bilinear", align_corners=False)[0, 0]
        max_depth = float(model.cfg.max_depth)
        mask = prob >= threshold
        depth = torch.where(mask, torch.full_like(depth, max_depth), depth)
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


# --- `dap predict` ---------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
OUTPUT_KINDS = ("npy", "exr", "png16", "color", "mask", "normals", "ply", "glb", "cubemap")
PNG16_SCALE = 1 / 512  # metres per unit of the 16-bit depth PNG (as Stanford2D3D): 0..128 m in 2 mm steps


@dataclass
class InputItem:
    name: str  # output file stem
    source: str  # what the user gave (for messages)
    load: object  # () -> float32 (H, W, 3) RGB; None for a whole video, expanded by `iter_frames`
    video: str | None = None  # frames of one video share this, for temporal scale smoothing


def expand_inputs(inputs: list[str]) -> list[InputItem]:
    """Files, folders (their images, sorted), globs and videos (one item each, see `iter_frames`) -> items."""
    import glob

    from dap import io

    items: list[InputItem] = []
    for spec in inputs:
        paths = [Path(p) for p in sorted(glob.glob(spec))] if any(c in spec for c in "*?[") else [Path(spec)]
        if not paths:
            raise DapError(f"the pattern {spec!r} matches no file")
        for path in paths:
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if not found:
                    raise DapError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in the folder {path}")
                items += [InputItem(p.stem, str(p), functools.partial(io.read_rgb, p)) for p in found]
            elif path.suffix.lower() in io.VIDEO_SUFFIXES:
                items.append(InputItem(path.stem, str(path), None, str(path)))
            else:
                items.append(InputItem(path.stem, str(path), functools.partial(io.read_rgb, path)))
    return items


def iter_frames(items: list[InputItem], failures: list[tuple[str, str]]):
    """Items with videos expanded into one item per frame, decoded one at a time as the loop reaches them (a
    long video never sits in memory). A video that cannot be decoded is recorded in `failures`."""
    from dap import io

    for item in items:
        if item.load is not None:
            yield item
            continue
        try:
            for i, frame in enumerate(io.iter_video_frames(item.video)):
                yield InputItem(f"{item.name}_{i:06d}", f"{item.source} frame {i}", lambda f=frame: f, item.video)
        except (DapError, OSError) as e:
            failures.append((item.source, str(e)))


def output_paths(out_dir: Path, name: str, kinds: list[str]) -> dict[str, Path]:
    suffix = {"npy": ".npy", "exr": ".exr", "png16": ".depth.png", "color": ".color.png", "mask": ".mask.png",
              "normals": ".normals.png", "ply": ".ply", "glb": ".glb", "cubemap": ".cube"}
    return {k: out_dir / f"{name}{suffix[k]}" for k in kinds}


def write_outputs(pred: Prediction, paths: dict[str, Path], *, point_stride: int = 1) -> None:
    """Write the requested outputs of one prediction. Point clouds drop out-of-range pixels."""
    from dap import io

    valid_depth = np.where(pred.range_mask, 0.0, pred.depth).astype(np.float32)
    for kind, path in paths.items():
        if kind == "npy" or kind == "exr":
            io.write_depth(path, valid_depth)
        elif kind == "png16":
            io.write_depth(path, valid_depth, scale=PNG16_SCALE)
        elif kind == "color":
            io.write_depth_color(path, valid_depth)
        elif kind == "mask":
            io.write_mask_png(path, pred.range_mask)
        elif kind == "normals":
            io.write_normals_png(path, pred.normals)
        elif kind in ("ply", "glb"):
            keep = ~pred.range_mask & (valid_depth > 0)
            keep &= _stride_mask(keep.shape, point_stride)
            points, colors = pred.points[keep], pred.rgb[keep]
            if kind == "ply":
                io.write_ply(path, points, colors, pred.normals[keep])
            else:
                io.write_glb(path, points, colors)
        elif kind == "cubemap":
            path.mkdir(parents=True, exist_ok=True)
            face = max(16, pred.depth.shape[0] // 2)
            faces_rgb = geometry.erp_to_cubemap(pred.rgb, face)
            faces_depth = geometry.erp_to_cubemap(valid_depth, face, mode="nearest")
            for i, axis in enumerate(geometry.CUBE_FACES):
                io.write_rgb(path / f"{axis}.rgb.png", faces_rgb[i])
                io.write_depth(path / f"{axis}.depth.npy", faces_depth[i])


class ScaleSmoother:
    """Temporal smoothing of the global scale of video depth: each frame's depth is rescaled so its median
    follows an exponential moving average of the medians (in log space) of the frames so far. Metric models
    jitter in scale from frame to frame more than in shape; this removes the jitter, not the motion."""

    def __init__(self, alpha: float):
        self.alpha, self.video, self.log_median = alpha, None, None

    def __call__(self, pred: Prediction, video: str | None) -> None:
        if video is None or self.alpha <= 0:
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


def _stride_mask(shape: tuple[int, int], stride: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[::stride, ::stride] = True
    return m


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".dap-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DapError(f"cannot write to the output folder {out_dir}: {e.strerror or e}. Choose another --out.") from e


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="panorama files, folders of images, glob patterns (quoted) or video files")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--checkpoint", default=None,
                        help="official model.pth, a folder written by `dap convert`/`dap train`, or hf:<repo>; "
                             "default: the small model bundled with the package (synthetic data only)")
    parser.add_argument("--outputs", default="npy,color,mask",
                        help=f"comma-separated outputs to write, any of: {', '.join(OUTPUT_KINDS)}; "
                             "npy/exr = float32 metres (0 = out of range), png16 = 16-bit PNG with "
                             f"{PNG16_SCALE:g} m per unit stored in the file")
    from dap.cli import parse_size

    parser.add_argument("--resolution", type=parse_size, default=None,
                        help="working resolution HxW, multiples of 16 (default: the model's own, 512x1024 for the "
                             "official model)")
    parser.add_argument("--seam-pad", type=float, default=DEFAULT_SEAM_PAD,
                        help="fraction of the width wrapped around each side of the 0/360 seam (0 = off)")
    parser.add_argument("--pad-to-erp", action="store_true",
                        help="accept partial panoramas wider than 2:1 by padding the missing latitudes")
    parser.add_argument("--upsample", choices=("bilinear", "guided"), default="bilinear",
                        help="how depth is brought from the working resolution back to a larger input: "
                             "bilinear, or guided by the full-resolution RGB (edge-aware)")
    parser.add_argument("--point-stride", type=int, default=1, help="keep every Nth row/column in PLY/GLB")
    parser.add_argument("--smooth-scale", type=float, default=0.0, metavar="ALPHA",
                        help="videos only: smooth the depth scale over frames with an exponential moving average "
                             "of weight ALPHA on the past (e.g. 0.8; 0 = off)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--overwrite", action="store_true", help="recompute inputs whose outputs already exist")


def run_cli(args) -> int:
    import sys
    import time

    from tqdm import tqdm

    kinds = [k.strip() for k in args.outputs.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown:
        raise DapError(f"unknown output kind(s) {unknown}; choose from {', '.join(OUTPUT_KINDS)}")
    _check_writable(args.out)
    items = expand_inputs(args.inputs)
    device = select_device(args.device)
    model = resolve_model(args.checkpoint, device)
    smooth = ScaleSmoother(args.smooth_scale)
    failures: list[tuple[str, str]] = []
    done = skipped = 0
    start = time.perf_counter()
    for item in tqdm(iter_frames(items, failures), desc="predict", unit="pano", disable=None):
        paths = output_paths(args.out, item.name, kinds)
        if not args.overwrite and all(p.exists() for p in paths.values()):
            skipped += 1
            continue
        try:
            pred = predict(item.load(), model, resolution=args.resolution, seam_pad=args.seam_pad,
                           pad_to_erp=args.pad_to_erp, device=device, upsample=args.upsample)
            smooth(pred, item.video)
            write_outputs(pred, paths, point_stride=args.point_stride)
            done += 1
        except (DapError, OSError, ValueError) as e:
            failures.append((item.source, str(e)))
    elapsed = time.perf_counter() - start
    per = f", {elapsed / done:.2f} s per panorama" if done else ""
    print(f"predicted {done} panorama(s){per}; skipped {skipped} with existing outputs; "
          f"{len(failures)} failed. Outputs ({', '.join(kinds)}) in {args.out}")
    for source, reason in failures:
        print(f"  FAILED {source}: {reason}", file=sys.stderr)
    return 1 if failures else 0
