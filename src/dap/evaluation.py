"""Depth evaluation: metrics, alignment protocols and aggregation (what `dap eval` runs).

Everything is in metres. A pixel counts when its ground truth is finite and inside (min_depth, max_depth]
(and inside the caller's mask). The protocol's alignment (none, median scale, least-squares scale+shift) is
fitted on those pixels; the aligned prediction is then clipped to [min_depth, max_depth] before the metrics.
See docs/evaluation.md for the exact definitions and how they relate to numbers printed in papers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from dap.errors import (
    DapError,
    DepthUnitError,
    NoValidDepthError,
    UnreadableFileError,
    collect_input_warnings,
    warn_input,
)
from dap.inference import (
    DEFAULT_SEAM_PAD,
    OUTPUT_SUFFIXES,
    apply_range_mask,
    changed_keys,
    predict,
    resize_depth,
    resize_image,
    resize_nearest,
    to_rgb,
)
from dap.models.dap import DAP

METRIC_KEYS = (
    "abs_rel",
    "sq_rel",
    "mae",
    "rmse",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
    "delta_105",
    "delta_110",
)
PROTOCOLS = ("metric", "median", "affine")
# delta metric name -> threshold on max(pred/gt, gt/pred)
DELTAS = {"delta1": 1.25, "delta2": 1.25**2, "delta3": 1.25**3, "delta_105": 1.05, "delta_110": 1.10}
# the weighted sums one image contributes; the metrics are ratios of these, which is what makes pooling exact
_SUM_KEYS = ("w", "abs_rel", "sq_rel", "abs", "sq", "sq_log", "log10", *DELTAS)
NO_VALID_GT = "no valid ground-truth pixel"  # how the reason of a sample skipped for its ground truth begins

Array = np.ndarray | torch.Tensor
Predictor = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


# ----------------------------------------------------------------------------------------------- inputs

def _as_map(x: Array, what: str) -> np.ndarray:
    """(H, W) float64 numpy array from numpy/torch input of shape (H,W), (1,H,W) or (1,1,H,W)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(
            f"{what} must be one depth map of shape (H, W) (or (1, H, W), (1, 1, H, W)); got shape "
            f"{tuple(np.shape(x))}. Evaluate batches one image at a time."
        )
    return a.astype(np.float64 if a.dtype != bool else bool, copy=False)


def valid_mask(
    gt: Array, valid: Array | None = None, *, min_depth: float = 1e-3, max_depth: float | None = None
) -> np.ndarray:
    """Pixels that count: gt finite and in (min_depth, max_depth], and inside `valid` when given."""
    g = _as_map(gt, "gt")
    with np.errstate(invalid="ignore"):
        m = np.isfinite(g) & (g > min_depth)
        if max_depth is not None:
            m &= g <= max_depth
    if valid is not None:
        v = _as_map(valid, "valid").astype(bool)
        if v.shape != g.shape:
            raise ValueError(f"valid mask shape {v.shape} does not match gt shape {g.shape}")
        m &= v
    return m


def _weights_map(weights: Array | str | None, shape: tuple[int, int]) -> np.ndarray | None:
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights != "solid_angle":
            raise ValueError(f"unknown weights {weights!r}: pass an array or 'solid_angle'")
        from dap.geometry import solid_angle_weights

        w = solid_angle_weights(shape[0], shape[1], dtype=torch.float64)
        weights = w.numpy() if isinstance(w, torch.Tensor) else w
    w = np.asarray(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights, np.float64)
    try:
        w = np.broadcast_to(w.reshape(w.shape[-2:]) if w.ndim > 2 else w, shape)
    except ValueError:
        raise ValueError(f"weights of shape {w.shape} do not fit depth maps of shape {shape}: pass (H, W), (H, 1) "
                         "or 'solid_angle'") from None
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    return w


# -------------------------------------------------------------------------------------------- protocols
def fit_alignment(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, protocol: str, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """(scale, shift) with gt ≈ scale·pred + shift on `mask` pixels, for the protocol.

    metric: (1, 0). median: median(gt)/median(pred) (unweighted). affine: weighted least squares.
    """
    if protocol == "metric":
        return 1.0, 0.0
    p, g = pred[mask], gt[mask]
    if protocol == "median":
        med = float(np.median(p))
        if not med > 0:
            raise NoValidDepthError(
                f"median scaling needs a positive median prediction on the valid pixels, got "
                f"{med}; the prediction is empty or not a depth map there."
            )
        return float(np.median(g)) / med, 0.0
    if protocol == "affine":
        w = np.ones_like(p) if weights is None else weights[mask]
        sw = np.sqrt(w)
        a = np.stack([p * sw, sw], axis=1)
        (scale, shift), *_ = np.linalg.lstsq(a, g * sw, rcond=None)
        return float(scale), float(shift)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def align(
    pred: Array,
    gt: Array,
    valid: Array | None = None,
    *,
    protocol: str = "metric",
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    weights: Array | str | None = None,
) -> tuple[np.ndarray, float, float]:
    """The prediction after the protocol's alignment and clipping to [min_depth, max_depth], plus
    (scale, shift). Alignment is fitted on the valid pixels only; the whole map is transformed."""
    p, _, _, _, scale, shift = _aligned(pred, gt, valid, protocol, min_depth, max_depth, weights)
    return p, scale, shift


def _aligned(pred, gt, valid, protocol, min_depth, max_depth, weights):
    """(aligned prediction, gt, mask of counted pixels, weight map or None, scale, shift)."""
    p, g = _as_map(pred, "pred"), _as_map(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} does not match gt shape {g.shape}; resize the prediction first")
    if not min_depth > 0:
        raise ValueError(f"min_depth must be > 0 (logs and ratios need it), got {min_depth}")
    m = valid_mask(g, valid, min_depth=min_depth, max_depth=max_depth)
    w = _weights_map(weights, g.shape)
    if w is not None:
        m &= w > 0
    if not m.any():
        raise NoValidDepthError(
            f"{NO_VALID_GT}: every pixel is non-finite, masked, or outside "
            f"(min_depth={min_depth}, max_depth={max_depth}]. Check the depth units and caps."
        )
    # A NaN/inf prediction is the model's failure, not a missing label: it counts, as min_depth (+inf as the cap),
    # instead of being dropped. The alignment is fitted on the finite pixels alone: fitted on the stand-in
    # values, a prediction that is all NaN would be scaled into a plausible constant map.
    finite = np.isfinite(p)
    if protocol != "metric" and not (m & finite).any():
        raise NoValidDepthError(f"the prediction is NaN or infinite at every valid pixel; {protocol} alignment has "
                                "nothing to fit. The model failed on this image.")
    scale, shift = fit_alignment(np.where(finite, p, 0.0), g, m & finite, protocol, w)
    cap = max_depth if max_depth is not None else 1e9
    p = np.where(finite, scale * np.where(finite, p, 0.0) + shift, np.where(p == np.inf, cap, min_depth))
    p = np.clip(p, min_depth, max_depth if max_depth is not None else np.inf)
    return p, g, m, w, scale, shift


# ---------------------------------------------------------------------------------------------- metrics
def _sums(p: np.ndarray, g: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
    """Weighted sums of each per-pixel error term over valid pixels p, g (1-D, both > 0)."""
    w = np.ones_like(g) if w is None else w
    diff = p - g
    log_diff = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    out = {
        "w": w.sum(),
        "abs_rel": (w * np.abs(diff) / g).sum(),
        "sq_rel": (w * diff**2 / g).sum(),
        "abs": (w * np.abs(diff)).sum(),
        "sq": (w * diff**2).sum(),
        "sq_log": (w * log_diff**2).sum(),
        "log10": (w * np.abs(log_diff) / math.log(10)).sum(),
    }
    for key, thr in DELTAS.items():
        out[key] = (w * (ratio < thr)).sum()
    return {k: float(v) for k, v in out.items()}


def _metrics_from_sums(s: dict[str, float]) -> dict[str, float]:
    n = s["w"]
    m = {
        "abs_rel": s["abs_rel"] / n,
        "sq_rel": s["sq_rel"] / n,
        "mae": s["abs"] / n,
        "rmse": math.sqrt(s["sq"] / n),
        "rmse_log": math.sqrt(s["sq_log"] / n),
        "log10": s["log10"] / n,
    }
    m.update({key: s[key] / n for key in DELTAS})
    return {k: m[k] for k in METRIC_KEYS}


def _prepared(pred, gt, valid, protocol, min_depth, max_depth, weights):
    p, g, m, w, scale, shift = _aligned(pred, gt, valid, protocol, min_depth, max_depth, weights)
    return p[m], g[m], None if w is None else w[m], scale, shift


def compute_metrics(
    pred: Array,
    gt: Array,
    valid: Array | None = None,
    *,
    protocol: str = "metric",
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    weights: Array | str | None = None,
) -> dict[str, float]:
    """Depth metrics of one image (metres): abs_rel, sq_rel, mae, rmse (true root-mean-square error),
    rmse_log, log10, delta1/2/3 (1.25^k), delta_105, delta_110.

    `valid` is an optional extra mask; `weights` an (H,W)/(H,1) array or 'solid_angle' (cos-latitude area
    of each ERP pixel) that turns every mean into a weighted mean. Raises NoValidDepthError when no pixel
    counts.
    """
    p, g, w, _, _ = _prepared(pred, gt, valid, protocol, min_depth, max_depth, weights)
    return _metrics_from_sums(_sums(p, g, w))


def seam_error(depth: Array, valid: Array | None = None) -> float:
    """Left-right seam consistency: mean over rows of |d[:,0] - d[:,-1]| / ((d[:,0] + d[:,-1]) / 2), using
    rows where both edge pixels are finite and > 0 (and inside `valid`). NaN when no row qualifies."""
    d = _as_map(depth, "depth")
    a, b = d[:, 0], d[:, -1]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    if valid is not None:
        v = _as_map(valid, "valid").astype(bool)
        ok &= v[:, 0] & v[:, -1]
    if not ok.any():
        return float("nan")
    a, b = a[ok], b[ok]
    return float(np.mean(np.abs(a - b) / ((a + b) / 2)))


def pole_rows(height: int, fraction: float = 1 / 6) -> np.ndarray:
    """Boolean (H,) mask of the top and bottom `fraction` of rows (|latitude| > 60° for 1/6)."""
    n = max(1, round(height * fraction))
    rows = np.zeros(height, bool)
    rows[:n] = True
    rows[height - n :] = True
    return rows


def pole_error(
    pred: Array,
    gt: Array,
    valid: Array | None = None,
    *,
    protocol: str = "metric",
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    weights: Array | str | None = None,
    fraction: float = 1 / 6,
) -> float:
    """AbsRel restricted to the top and bottom `fraction` of rows. The protocol's alignment is fitted on the
    whole image first (as for compute_metrics). NaN when the poles have no valid ground truth."""
    p, _, _ = align(pred, gt, valid, protocol=protocol, min_depth=min_depth, max_depth=max_depth, weights=weights)
    g = _as_map(gt, "gt")
    m = valid_mask(g, valid, min_depth=min_depth, max_depth=max_depth) & pole_rows(g.shape[0], fraction)[:, None]
    try:
        return compute_metrics(p, g, m, min_depth=min_depth, max_depth=max_depth, weights=weights)["abs_rel"]
    except NoValidDepthError:
        return float("nan")


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(rows: Iterable[dict]) -> dict[str, float]:
    """Per-image mean (the usual convention) of every numeric column of `rows`, ignoring NaN entries
    (e.g. pole_abs_rel of images without pole ground truth). Adds n_images."""
    rows = list(rows)
    keys = [
        k
        for k in (rows[0] if rows else {})
        if isinstance(rows[0][k], numbers.Real) and not isinstance(rows[0][k], (bool, np.bool_))  # numpy scalars too
    ]
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows], np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    out["n_images"] = len(rows)
    return out


@dataclass
class MetricAccumulator:
    """Collects images under one protocol; reports the per-image mean and the pixel-pooled metrics
    (every valid pixel of every image weighted equally, so RMSE is the root of the pooled mean square)."""

    protocol: str = "metric"
    min_depth: float = 1e-3
    max_depth: float | None = None
    weights: str | None = None  # None or 'solid_angle'
    rows: list[dict] = field(default_factory=list)
    _sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_SUM_KEYS, 0.0))

    def add(
        self,
        pred: Array,
        gt: Array,
        valid: Array | None = None,
        *,
        name: str | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Score one image, keep its row and return it (metrics, pole_abs_rel, scale, shift, n_valid)."""
        kwargs = dict(protocol=self.protocol, min_depth=self.min_depth, max_depth=self.max_depth, weights=self.weights)
        p, g, w, scale, shift = _prepared(pred, gt, valid, **kwargs)
        sums = _sums(p, g, w)
        for k, v in sums.items():
            self._sums[k] += v
        row = {
            "name": name if name is not None else str(len(self.rows)),
            **_metrics_from_sums(sums),
            "pole_abs_rel": pole_error(pred, gt, valid, **kwargs),
            "scale": scale,
            "shift": shift,
            "n_valid": int(p.size),
            **(extra or {}),
        }
        self.rows.append(row)
        return row

    def per_image_mean(self) -> dict[str, float]:
        return aggregate(self.rows)

    def pixel_pooled(self) -> dict[str, float]:
        if not self._sums["w"] > 0:
            return {k: float("nan") for k in METRIC_KEYS}
        return _metrics_from_sums(self._sums)


# ----------------------------------------------------------------------------------------- evaluate()
@dataclass
class EvalConfig:
    """Settings of one evaluation run (all depths in metres)."""

    protocols: tuple[str, ...] = ("metric",)
    min_depth: float = 1e-3
    max_depth: float | None = 100.0
    range_cap: float = 100.0  # DAP convention: depth given to pixels the range mask marks out of range
    weights: str | None = None  # None or 'solid_angle'
    eval_size: tuple[int, int] | None = None  # (H, W) to resize GT (nearest) and prediction to; None = GT size
    limit: int | None = None
    panels: int = 4


def depth_panel(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, *, max_depth: float | None = None,
                prob: np.ndarray | None = None, height: int = 256) -> np.ndarray:
    """RGB | ground truth | prediction | relative error [| out-of-range probability, when `prob` is given] of one
    panorama, `height` rows, float RGB in [0, 1]: the panels of `dap eval` and of training validation.
    rgb (H, W, 3) in [0, 1]; gt, pred, prob (H, W), depth 0 = invalid. Depth colours span 0 to the GT's 99th
    percentile (at most `max_depth`); the error runs from 0 (dark) to 50 % (bright), black where the GT is invalid."""
    from dap.io import colorize_depth

    h, w = gt.shape
    size = (height, max(2, round(w * height / h)))
    g = resize_nearest(gt, size)
    p = resize_depth(pred, size)
    vmax = float(np.percentile(g[g > 0], 99)) if (g > 0).any() else float(p.max())
    if max_depth is not None:
        vmax = min(vmax, max_depth)
    err = np.where(g > 0, np.abs(p - g) / np.maximum(g, 1e-6), 0.0)
    tiles = [
        np.clip(np.moveaxis(resize_image(np.moveaxis(rgb, -1, 0), size), 0, -1), 0, 1),
        _to_float_rgb(colorize_depth(g, min_depth=0.0, max_depth=vmax)),
        _to_float_rgb(colorize_depth(p, min_depth=0.0, max_depth=vmax)),
        _to_float_rgb(colorize_depth(err, min_depth=0.0, max_depth=0.5, cmap="inferno")),
    ]
    if prob is not None:
        tiles.append(np.repeat(np.clip(resize_image(prob, size), 0, 1)[..., None], 3, axis=-1))
    return np.concatenate(tiles, axis=1).astype(np.float32)


def _to_float_rgb(img: np.ndarray) -> np.ndarray:
    return np.asarray(img, np.float32) / 255.0


def _file_stem(name: str) -> str:
    """A sample name as one file name inside a folder we own: '/' and every other special character
    percent-encoded, so distinct names never share a file and no name (absolute, '..') can point elsewhere."""
    raw = name.encode("utf-8", "surrogateescape")  # a file name that is not UTF-8 keeps its own bytes
    stem = quote(raw, safe="")
    # File names are limited to 255 bytes: long names keep a readable head and a hash for uniqueness.
    return stem if len(stem) <= 200 else f"{stem[:180]}-{hashlib.sha256(raw).hexdigest()[:16]}"


def input_digest(rgb) -> str:
    """12 hex digits of a panorama's pixels (and shape): a cached prediction is reused only for the very input
    it was made from, not for a file of that name changed since."""
    a = np.ascontiguousarray(rgb)
    h = hashlib.blake2b(f"{a.shape}{a.dtype}".encode(), digest_size=6)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# The depth files `dap predict --outputs npy|exr|png16` writes, looked up in this order
SAVED_PREDICTION_SUFFIXES = tuple(OUTPUT_SUFFIXES[kind] for kind in ("npy", "exr", "png16"))


def _saved_prediction_path(predictions_dir: Path, name: str) -> Path:
    """<predictions_dir>/<name>.npy (else .exr, else .depth.png: the depth files `dap predict` writes); refuses
    names that would lead out of the folder (absolute manifest paths make absolute sample names, whose '.npy'
    could be a ground-truth file beside the RGB). Missing: UnreadableFileError saying what was looked for."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise DapError(
            f"sample name {name!r} is an absolute path or leaves the folder, so its prediction cannot be looked up "
            f"inside --predictions {predictions_dir}. Give the manifest a 'name' column with relative names."
        )
    candidates = [predictions_dir / f"{name}{suffix}" for suffix in SAVED_PREDICTION_SUFFIXES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UnreadableFileError(
            f"no saved prediction for sample {name!r}: expected {candidates[0]} (or {name}.exr, {name}.depth.png). "
            "Save each prediction as <predictions dir>/<sample name>.npy in metres (`dap predict --outputs npy`)."
        )
    return found


REPORTS = ("metrics.json", "per_image.parquet", "per_image.csv", "panels")
REPORTS_MARK = ".dap-eval"
"""A hidden file in an --out whose reports dap eval wrote (its metrics.json is missing while a run replaces them)."""


def _check_reports_are_ours(out: Path) -> None:
    """Refuse an --out whose report names hold files dap eval did not write (a figure in panels/, the user's own
    metrics.json): a run replaces them whole."""
    present = [name for name in REPORTS if os.path.lexists(out / name)]
    if not present or (out / REPORTS_MARK).exists():
        return
    try:  # reports of a version before the mark: its summary says so
        summary = json.loads((out / "metrics.json").read_text())
        if isinstance(summary, dict) and {"config", "protocols"} <= summary.keys():
            return
    except (OSError, ValueError):
        pass
    raise DapError(f"{out} already holds {', '.join(present)}, not written by dap eval, which would replace them; "
                   "choose another --out, or move them away")


def _begin_replacing_reports(out: Path) -> None:
    """From here an earlier run's reports are replaced: marked as ours, and its summary goes first, so that no
    metrics.json ever stands beside panels and tables of another run (a kill before the last one is written)."""
    from dap.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    if not (out / REPORTS_MARK).exists():
        with atomic_write(out / REPORTS_MARK) as tmp:
            tmp.write_text("the reports in this folder (metrics.json, per_image.*, panels/) were written by dap eval\n")
    (out / "metrics.json").unlink(missing_ok=True)


def _check_cache(cache_dir: Path, cache_key: dict) -> None:
    """Cached predictions are reused only under the same key; a run with another key is refused, not mixed."""
    from dap.io import atomic_write

    meta = cache_dir / "cache.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except ValueError as e:
            raise DapError(f"{meta} is corrupt ({e}); delete {cache_dir} to recompute the predictions") from e
        # the model is its content (model_sha256); its path as typed (../m, /home/me/m, a copy) only says where
        # it came from
        changed = [f"{k}: {old.get(k)} -> {cache_key.get(k)}" for k in changed_keys(old, cache_key)
                   if k != "checkpoint"]
        if changed and any(cache_dir.glob("*.npy")):
            raise DapError(
                f"{cache_dir} holds predictions made with other settings ({'; '.join(changed)}). Use a new --out "
                f"folder or delete {cache_dir}."
            )
    elif cache_dir.is_dir() and any(cache_dir.iterdir()):
        raise DapError(
            f"{cache_dir} exists but holds no cache.json, so it was not written by dap eval; choose another --out"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(meta) as tmp:  # half a cache.json would refuse every later run on this folder
        tmp.write_text(json.dumps(cache_key, indent=2))


def evaluate(
    dataset: Sequence[dict],
    predictor: Predictor | None = None,
    *,
    config: EvalConfig | None = None,
    out_dir: str | Path | None = None,
    predictions_dir: str | Path | None = None,
    cache_key: dict | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate a predictor (any callable rgb (H,W,3) float [0,1] -> (depth in metres, out-of-range mask or
    None)) or a folder of saved predictions (`predictions_dir/<sample name>.npy`, metres, final) on a dataset.

    With `out_dir`, metrics.json, per_image.parquet/.csv and panels/*.png are written. With `out_dir` and
    `cache_key` (everything the predictions depend on: the dataset, model content, resolution, seam padding,
    precision, test-time augmentation, range cap), model predictions are cached in out_dir/predictions/ (after the
    range mask is applied, one file per sample, named by `_file_stem`) and reused by a run with the same key; another
    key is refused.
    Returns the summary that goes into metrics.json.
    """
    from dap.io import folder_lock

    cfg = config or EvalConfig()
    if (predictor is None) == (predictions_dir is None):
        raise ValueError("pass exactly one of predictor or predictions_dir")
    for proto in cfg.protocols:
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r}; choose from {', '.join(PROTOCOLS)}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:  # one run writes an --out at a time: two would mix their cached predictions
        with folder_lock(out, "dap eval"):
            return _evaluate(dataset, predictor, cfg, out, predictions_dir, cache_key, progress)
    return _evaluate(dataset, predictor, cfg, out, predictions_dir, cache_key, progress)


def other_unit(depth: np.ndarray, cap: float | None) -> str | None:
    """"far" when over 90% of a depth map's measured pixels lie beyond `cap` (millimetres read as metres; 90%: more
    than any sky stored as a large depth covers of a panorama), "near" when over 90% are nearer than 0.1 m (the other
    way round: no room is that near its camera), else None."""
    measured = depth[np.isfinite(depth) & (depth > 0)]
    if not measured.size:
        return None
    if cap is not None and np.count_nonzero(measured > cap) > 0.9 * measured.size:
        return "far"
    return "near" if np.count_nonzero(measured < 0.1) > 0.9 * measured.size else None


def _saved_prediction(predictions_dir: Path, dataset, i: int, name: str, gt: np.ndarray, cfg: EvalConfig,
                      input_warnings: dict[str, list[str]]) -> np.ndarray:
    """Sample `i`'s saved prediction in metres, its pixels without depth at the range cap; what looks wrong with it
    (another unit, mostly empty) is added to `input_warnings`."""
    from dap.io import read_depth

    path = _saved_prediction_path(predictions_dir, name)
    gt_file = getattr(dataset.items[i], "depth", None) if hasattr(dataset, "items") else None
    if isinstance(gt_file, Path) and gt_file.is_file() and os.path.samefile(path, gt_file):
        raise DapError(f"--predictions {predictions_dir} is where the ground truth is: {path} is the depth "
                       f"file of {name!r} itself, which would score perfectly. Pass the folder of the model's "
                       "predictions (`dap predict --outputs npy --out <folder>`)")
    try:
        pred = read_depth(path)  # pixels without depth (0, NaN, inf, negative) read as 0
    except DepthUnitError as e:  # no `scale=` to pass on the command line
        raise DepthUnitError(f"{path} is a 16-bit PNG that does not say its unit: save predictions as .npy "
                             "or .exr in metres, or as `dap predict --outputs png16` writes them (with their "
                             "unit)") from e
    if pred.shape[0] * gt.shape[1] != pred.shape[1] * gt.shape[0]:
        raise DapError(
            f"{path} is {pred.shape[1]}x{pred.shape[0]} but the ground truth of {name!r} is "
            f"{gt.shape[1]}x{gt.shape[0]}: a saved prediction must be the whole panorama, at any resolution "
            "of the same shape (2:1)"
        )
    # A saved pixel without depth is out of range (`dap predict` writes 0 there): it gets the range cap
    # here, where a model run caps its out-of-range pixels, so both ways of scoring a model agree
    empty = pred <= 0
    if cfg.max_depth is not None and \
            np.count_nonzero(pred > cfg.max_depth) > 0.9 * max(1, np.count_nonzero(~empty)):
        input_warnings.setdefault(  # as for the ground truth: millimetres scored as metres
            f"over 90% of the saved prediction is beyond --max-depth {cfg.max_depth:g} m: save predictions "
            "in metres (a millimetre map divided by 1000)", []).append(name)
    if empty.mean() > 0.5:
        input_warnings.setdefault(
            "over half of the saved prediction has no depth (0, NaN or inf); those pixels are scored as out "
            f"of range (--range-cap {cfg.range_cap:g} m)", []).append(name)
    return np.where(empty, np.float32(cfg.range_cap), pred)


def _cached_prediction(path: Path | None) -> np.ndarray | None:
    """A prediction an earlier run cached at `path`; None where there is none, or the file was damaged since (the
    cache is written whole, so only something else cuts one short): that sample is predicted again."""
    from dap.io import read_npy

    if path is None or not path.exists():
        return None
    try:
        return read_npy(path)
    except UnreadableFileError:
        return None


def _evaluate(dataset, predictor, cfg: EvalConfig, out: Path | None, predictions_dir, cache_key: dict | None,
              progress: bool) -> dict:
    from dap.io import atomic_folder, write_npy, write_rgb

    if out is not None:
        _check_reports_are_ours(out)
    cache_dir = out / "predictions" if out is not None and predictor is not None and cache_key else None
    if cache_dir is not None:
        # files named by sample and input digest: caches of the earlier layout (by name alone) are refused
        cache_key = {**cache_key, "files": "<sample>.<input digest>.npy"}
        _check_cache(cache_dir, cache_key)
    # This run's panels and reports replace an earlier run's whole, and only once it is done: a rerun that stops (a
    # typo, a missing file, a kill) leaves the earlier results as they were, with none of its own panels beside them
    with atomic_folder(out / "panels") if out is not None and cfg.panels else contextlib.nullcontext() as panels:
        accs = {p: MetricAccumulator(p, cfg.min_depth, cfg.max_depth, cfg.weights) for p in cfg.protocols}
        skipped: list[dict] = []
        input_warnings: dict[str, list[str]] = {}  # an input warning's text -> the samples that raised it
        n = len(dataset) if cfg.limit is None else min(cfg.limit, len(dataset))
        n_cached = 0
        t0 = time.perf_counter()
        indices = range(n)
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc="eval", unit="img")
        for i in indices:
            sample = dataset[i]
            name = sample["name"]
            for text in sample.get("notes", ()):  # on the panorama's file (transparent, frames): as predict says
                input_warnings.setdefault(text, []).append(name)
            gt = np.asarray(sample["depth"], np.float32)
            unit = other_unit(gt, cfg.max_depth)
            if unit == "far":  # in cm or mm: left out without a word, the few pixels that happen to fit made the score
                input_warnings.setdefault(
                    f"over 90% of the ground truth is beyond --max-depth {cfg.max_depth:g} m and is not scored: if the "
                    "depth is not in metres, give its unit (a folder dataset's metres_per_unit)", []).append(name)
            elif unit == "near":
                input_warnings.setdefault(
                    "over 90% of the ground truth is nearer than 0.1 m: check its unit (a folder dataset's "
                    "metres_per_unit)", []).append(name)
            if predictions_dir is not None:
                pred = _saved_prediction(Path(predictions_dir), dataset, i, name, gt, cfg, input_warnings)
            else:
                path = cache_dir and cache_dir / f"{_file_stem(name)}.{input_digest(sample['rgb'])}.npy"
                pred = _cached_prediction(path)
                n_cached += pred is not None
                if pred is None:
                    with collect_input_warnings() as warned:
                        depth, mask = predictor(sample["rgb"])
                    for text in warned:  # once per text after the loop, naming the samples
                        input_warnings.setdefault(text, []).append(name)
                    pred = np.asarray(apply_range_mask(np.asarray(depth, np.float32), mask, cfg.range_cap))
                    if path is not None:  # as predicted, NaN and inf kept (write_depth makes them 0, scored otherwise)
                        write_npy(path, pred)
            pred = np.asarray(pred, np.float32)
            seam = seam_error(pred)  # at the prediction's own resolution, before any resampling
            size = tuple(cfg.eval_size) if cfg.eval_size else gt.shape
            # A prediction on the GT's own grid is resampled as the GT is (nearest): bilinear beside nearest would
            # disagree at every depth edge, and a perfect prediction would score AbsRel > 0.
            same_grid = pred.shape == gt.shape
            if gt.shape != size:
                gt = resize_nearest(gt, size)
            if pred.shape != size:
                pred = resize_nearest(pred, size) if same_grid else resize_depth(pred, size)
            rows_ok = True
            for proto, acc in accs.items():
                try:
                    acc.add(pred, gt, name=name, extra={"seam_error": seam})
                except NoValidDepthError as e:
                    rows_ok = False
                    skipped.append({"name": name, "protocol": proto, "reason": str(e)})
            if panels is not None and rows_ok and i < cfg.panels:
                rgb = to_rgb(sample["rgb"], name)  # uint8 as [0, 1] (taken as it was, the panel's RGB was white)
                write_rgb(panels / f"{_file_stem(name)}.png", depth_panel(rgb, gt, pred, max_depth=cfg.max_depth))
        for text, names in input_warnings.items():
            which = f"sample {names[0]}" if len(names) == 1 else f"{len(names)} of {n} samples, the first {names[0]}"
            warn_input(f"{which}: {text}")
        if out is not None:
            _begin_replacing_reports(out)
    if out is not None and not cfg.panels:
        shutil.rmtree(out / "panels", ignore_errors=True)
    summary = {
        "config": {
            **asdict(cfg),
            "dataset": getattr(dataset, "name", type(dataset).__name__),
            "root": str(getattr(dataset, "root", "")),
            "split": getattr(dataset, "split", None),
            "split_file": str(dataset.split_file) if getattr(dataset, "split_file", None) else None,
            "source": str(predictions_dir) if predictions_dir is not None else "model",
            **({"cache_key": cache_key} if cache_key else {}),
        },
        "n_images": n,
        "n_cached_predictions": n_cached,
        "seconds": round(time.perf_counter() - t0, 3),
        "skipped": skipped,
        "protocols": {
            p: {"per_image_mean": acc.per_image_mean(), "pixel_pooled": acc.pixel_pooled()} for p, acc in accs.items()
        },
    }
    if out is not None:
        _write_reports(out, summary, accs)
    return summary


def _write_reports(out: Path, summary: dict, accs: dict[str, MetricAccumulator]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from dap.io import atomic_write, utf8_text

    out.mkdir(parents=True, exist_ok=True)
    rows = [{"protocol": p, **{k: utf8_text(v) if isinstance(v, str) else v for k, v in r.items()}}
            for p, acc in accs.items() for r in acc.rows]
    if rows:
        table = pa.Table.from_pylist(rows)
        with atomic_write(out / "per_image.parquet") as tmp:  # an interrupted run leaves no truncated report
            pq.write_table(table, tmp)
        with atomic_write(out / "per_image.csv") as tmp:
            pacsv.write_csv(table, tmp)
    else:  # no sample scored: an earlier run's tables would stand beside this run's summary as if they were its
        for name in ("per_image.parquet", "per_image.csv"):
            (out / name).unlink(missing_ok=True)
    with atomic_write(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False))


def _json_safe(value):
    """`value` with NaN and infinities as null: JSON has no such numbers (Python writes bare NaN, which strict
    parsers, JavaScript and dashboards refuse), and a NaN metric means "not measurable" here."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(summary: dict) -> str:
    """Plain-text table of a summary: one line per protocol and aggregation."""
    cols = (*METRIC_KEYS, "pole_abs_rel", "seam_error")
    lines = [f"{'protocol':<9}{'aggregation':<16}" + "".join(f"{c:>13}" for c in cols)]
    for proto, res in summary["protocols"].items():
        for agg in ("per_image_mean", "pixel_pooled"):
            vals = res[agg]
            lines.append(
                f"{proto:<9}{agg:<16}" + "".join(f"{vals[c]:>13.4f}" if c in vals else f"{'-':>13}" for c in cols)
            )
    return "\n".join(lines)


def model_predictor(
    model: DAP, *, device: str = "cpu", resolution: tuple[int, int] | None = None, seam_pad: float = DEFAULT_SEAM_PAD,
    precision: str = "fp32", tta: bool = False,
) -> Predictor:
    """A Predictor backed by dap.inference.predict on a loaded model, in float32 unless told (`dap.predict`'s "auto"
    picks bf16 on a CPU where a timing says it is faster: two runs of one evaluation could differ); `tta` as
    dap.predict's."""

    def run(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        result = predict(rgb, model, resolution=resolution, device=device, seam_pad=seam_pad, precision=precision,
                         tta=tta)
        return result.depth, result.range_mask

    return run
