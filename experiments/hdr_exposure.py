"""How `dap.io.tonemap_hdr` should expose an HDR panorama: which statistic of the luminance and which key.

An HDR file (.hdr, .exr) stores linear radiance at an arbitrary absolute exposure; the networks were trained on
camera-exposed photographs. The real photographs of the pool are such photographs: each is linearised (inverse
sRGB), re-exposed by a rule (its median or geometric-mean luminance over the sphere set to a key), encoded back,
and the model's depth on it compared with its depth on the original photograph: median |log(depth ratio)| over
the pixels both predict in range, per panorama. The rule whose depth stays nearest the originals' is what a camera
would have done, as far as the model can tell. Also checks that the result does not depend on the file's
exposure (x0.01 and x100 of the same radiance).

    python experiments/hdr_exposure.py                      # the bundled model, all 55 photographs
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

import dap
from dap.io import read_rgb, sphere_median_luminance, tonemap_hdr

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "real-panos"
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


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


def log_gap(a: np.ndarray, b: np.ndarray) -> float:
    both = (a > 0) & (b > 0)
    return float(np.median(np.abs(np.log(a[both] / b[both]))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dap-tiny-synth", help="model name or folder (default: the bundled model)")
    p.add_argument("--pool", default=str(POOL), help="folder of real photographs (.jpg)")
    p.add_argument("--keys", default="0.09,0.13,0.18,0.25", help="comma-separated keys to try")
    p.add_argument("--exposure-only", action="store_true",
                   help="only print how the photographs themselves are exposed (no model)")
    args = p.parse_args()
    files = sorted(glob.glob(str(Path(args.pool) / "*.jpg")))
    medians = np.array([sphere_median_luminance(srgb_to_linear(read_rgb(f))) for f in files])
    print(f"the photographs' own median luminance over the sphere: min {medians.min():.3f}, quartiles "
          f"{np.percentile(medians, 25):.3f} / {np.median(medians):.3f} / {np.percentile(medians, 75):.3f}, "
          f"max {medians.max():.3f}")
    if args.exposure_only:
        return
    model = dap.load_model(args.model)
    keys = [float(k) for k in args.keys.split(",")]
    rules = [("median", k) for k in keys] + [("geometric mean", k) for k in keys]
    gaps: dict[tuple[str, float], list[float]] = {r: [] for r in rules}
    invariance = 0.0
    for i, f in enumerate(files):
        photo = read_rgb(f)
        linear = srgb_to_linear(photo)
        reference = dap.predict(photo, model).depth
        for stat, key in rules:
            image = tonemap_hdr(linear.copy(), key) if stat == "median" else geometric_mean_exposure(linear, key)
            gaps[stat, key].append(log_gap(dap.predict(image, model).depth, reference))
        a, b = tonemap_hdr(linear * np.float32(0.01)), tonemap_hdr(linear * np.float32(100.0))
        invariance = max(invariance, float(np.abs(a - b).max()))
        print(f"{i + 1}/{len(files)} {Path(f).name}", flush=True)
    print(f"\n{len(files)} photographs, model {args.model}; largest pixel difference between x0.01 and x100 of the "
          f"same radiance: {invariance:.2e}\n")
    print("| statistic | key | median |log| depth gap, mean over photographs | median | 90th percentile |")
    print("|---|---|---|---|---|")
    for stat, key in rules:
        g = np.array(gaps[stat, key])
        print(f"| {stat} | {key} | {g.mean():.4f} | {np.median(g):.4f} | {np.percentile(g, 90):.4f} |")


if __name__ == "__main__":
    main()
