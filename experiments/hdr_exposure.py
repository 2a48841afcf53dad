"""How `dap.io.tonemap_hdr` should expose an HDR panorama: which statistic of the luminance, which key, and how much
of the sphere it may push past white.

An HDR file (.hdr, .exr) stores linear radiance at an arbitrary absolute exposure; the networks were trained on
camera-exposed photographs. The real photographs of the pool are such photographs: each is linearised (inverse
sRGB), re-exposed by a rule, encoded back, and the model's depth on it compared with its depth on the original
photograph: median |log(depth ratio)| over the pixels both predict in range, per panorama. The rule whose depth
stays nearest the originals' is what a camera would have done, as far as the model can tell. Rules: the median or
the geometric-mean luminance over the sphere set to a key; the median at 0.18 but no more than a share of the
sphere past white. Also checks that the result does not depend on the file's exposure (x0.01 and x100 of the same
radiance).

A photograph's highlights were clipped at white when it was taken, so its linearised version never holds more above
white than the camera let through: a limit on the clipped share can only bring the exposure back towards the
camera's here, and the table cannot say how tight that limit should be. `--exposure-only` prints how much the
cameras clipped, which is what sets it.

    python experiments/hdr_exposure.py                      # the bundled model, all 55 photographs
    python experiments/hdr_exposure.py --exposure-only      # only the photographs' own exposure statistics
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch

import dap
from dap.geometry import solid_angle_weights
from dap.io import HDR_KEY, read_rgb, sphere_luminance_quantiles, tonemap_hdr

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "real-panos"
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
CLIP_SHARES = (0.05, 0.02, 0.01)


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def geometric_mean_exposure(linear: np.ndarray, key: float) -> np.ndarray:
    """The alternative rule: the cos-latitude-weighted geometric mean luminance set to `key` (black floored at a
    millionth of the brightest pixel), clipped, sRGB-encoded."""
    lum = linear @ LUMA
    lat = (0.5 - (np.arange(lum.shape[0]) + 0.5) / lum.shape[0]) * np.pi
    weights = np.broadcast_to(np.cos(lat)[:, None], lum.shape)
    mean = np.exp(np.average(np.log(np.maximum(lum, lum.max() * 1e-6)), weights=weights))
    x = np.minimum(linear * np.float32(key / mean), 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def expose(linear: np.ndarray, rule: tuple[str, float, float | None]) -> np.ndarray:
    statistic, key, clip_share = rule
    if statistic == "median":
        return tonemap_hdr(linear, key, clip_share)
    return geometric_mean_exposure(linear, key)


def clipped_share(linear: np.ndarray) -> float:
    """Share of the sphere at white (luminance within 1% of it) in a linearised photograph."""
    weights = solid_angle_weights(*linear.shape[:2], dtype=torch.float64).numpy()
    return float(np.average(linear @ LUMA >= 0.99, weights=np.broadcast_to(weights, linear.shape[:2])))


def log_gap(a: np.ndarray, b: np.ndarray) -> float:
    both = (a > 0) & (b > 0)
    return float(np.median(np.abs(np.log(a[both] / b[both]))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dap-tiny-synth", help="model name or folder (default: the bundled model)")
    p.add_argument("--pool", default=str(POOL), help="folder of real photographs (.jpg)")
    p.add_argument("--keys", default="0.09,0.13,0.18,0.25", help="comma-separated keys to try without a clip limit")
    p.add_argument("--exposure-only", action="store_true",
                   help="only print how the photographs themselves are exposed (no model)")
    args = p.parse_args()
    files = sorted(glob.glob(str(Path(args.pool) / "*.jpg")))
    linear = [srgb_to_linear(read_rgb(f)) for f in files]
    medians = np.array([sphere_luminance_quantiles(x, (0.5,))[0] for x in linear])
    clipped = np.array([clipped_share(x) for x in linear])
    print(f"the photographs' own median luminance over the sphere: min {medians.min():.3f}, quartiles "
          f"{np.percentile(medians, 25):.3f} / {np.median(medians):.3f} / {np.percentile(medians, 75):.3f}, "
          f"max {medians.max():.3f}")
    print(f"share of the sphere the camera clipped at white: median {np.median(clipped):.4f}, "
          + ", ".join(f"at most {s:g} in {(clipped <= s).sum()} of {len(files)}" for s in sorted(CLIP_SHARES)))
    if args.exposure_only:
        return
    model = dap.load_model(args.model)
    keys = [float(k) for k in args.keys.split(",")]
    rules = ([("median", k, None) for k in keys] + [("geometric mean", k, None) for k in keys]
             + [("median", HDR_KEY, s) for s in CLIP_SHARES])
    gaps: dict[tuple, list[float]] = {r: [] for r in rules}
    invariance = 0.0
    for i, (f, lin) in enumerate(zip(files, linear, strict=True)):
        reference = dap.predict(read_rgb(f), model).depth
        for rule in rules:
            gaps[rule].append(log_gap(dap.predict(expose(lin, rule), model).depth, reference))
        a, b = tonemap_hdr(lin * np.float32(0.01)), tonemap_hdr(lin * np.float32(100.0))
        invariance = max(invariance, float(np.abs(a - b).max()))
        print(f"{i + 1}/{len(files)} {Path(f).name}: gap " + " ".join(f"{gaps[r][-1]:.3f}" for r in rules), flush=True)
    print("(per photograph: the gap of each rule, in the order of the table below)")
    print(f"\n{len(files)} photographs, model {args.model}; largest pixel difference between x0.01 and x100 of the "
          f"same radiance: {invariance:.2e}\n")
    print("| statistic | key | at most past white | median |log| depth gap, mean over photographs | median | "
          "90th percentile |")
    print("|---|---|---|---|---|---|")
    for rule in rules:
        g = np.array(gaps[rule])
        stat, key, share = rule
        print(f"| {stat} | {key} | {'-' if share is None else f'{share:.0%}'} | {g.mean():.4f} | {np.median(g):.4f} "
              f"| {np.percentile(g, 90):.4f} |")


if __name__ == "__main__":
    main()
