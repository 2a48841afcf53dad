"""How `dap.io.tonemap_hdr` should expose an HDR panorama: which statistic of the luminance, which key, and how
far it may darken the image to keep highlights from burning out.

An HDR file (.hdr, .exr) stores linear radiance at an arbitrary absolute exposure; the networks were trained on
camera-exposed photographs. The real photographs of the pool are such photographs: each is linearised (inverse
sRGB), re-exposed by a rule, encoded back, and the model's depth on it compared with its depth on the original
photograph: median |log(depth ratio)| over the pixels both predict in range, per panorama. The rule whose depth
stays nearest the originals' is what a camera would have done, as far as the model can tell.

Rules: the median or the geometric-mean luminance over the sphere set to a key; the median at 0.18 but no more than
1% of the sphere past white (its 99th percentile at white), darkening by any amount or by at most 1, 2 or 3 stops.
A photograph's highlights were clipped when it was taken, so its linearised version holds nothing above white and a
limit on clipping only ever brings the exposure back towards the camera's. A real HDR's lamps, windows and skies are
far brighter than that; so the capped rules are also tried on the photographs with their highlights expanded as an
HDR would hold them (luminance L -> L / (1 - (1 - 1/k) L): white becomes k times white, mid-tones barely move), k = 8
and 20. Also checks that the result does not depend on the file's exposure (x0.01 and x100 of the same radiance).

    python experiments/hdr_exposure.py                      # the bundled model, all 55 photographs (~8 minutes)
    python experiments/hdr_exposure.py --exposure-only      # only the photographs' own exposure statistics
"""

from __future__ import annotations

import argparse
import glob
import math
from pathlib import Path

import numpy as np
import torch

import dap
from dap.geometry import solid_angle_weights
from dap.io import HDR_KEY, REC709_LUMA, read_rgb, sphere_luminance_quantiles, tonemap_hdr

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "real-panos"
LUMA = np.array(REC709_LUMA, np.float32)
CLIP_SHARES = (0.05, 0.02, 0.01)  # for --exposure-only: how much of the sphere the cameras clipped
PROTECT_STOPS = (math.inf, 1.0, 2.0, 3.0)  # capped rules: how far below the median's exposure the cap may go
EXPANSIONS = (1.0, 8.0, 20.0)  # highlights: as the photograph holds them (1), or as an HDR would (white -> k x white)


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


def expose(linear: np.ndarray, rule: tuple[str, float, float]) -> np.ndarray:
    statistic, key, protect_stops = rule
    if statistic == "median":
        return tonemap_hdr(linear, key, clip_share=None)
    if statistic == "median, 1% past white":
        return tonemap_hdr(linear, key, 0.01, protect_stops)
    return geometric_mean_exposure(linear, key)


def expand_highlights(linear: np.ndarray, k: float) -> np.ndarray:
    """The photograph's radiance with white taken as k times white, as an HDR would hold a lamp or a sky."""
    if k == 1:
        return linear
    luminance = np.clip(linear @ LUMA, 0.0, 1.0)
    return linear / (1.0 - (1.0 - 1.0 / k) * luminance)[..., None]


def clipped_share(linear: np.ndarray) -> float:
    """Share of the sphere at white (luminance within 1% of it) in a linearised photograph."""
    weights = solid_angle_weights(*linear.shape[:2], dtype=torch.float64).numpy()
    return float(np.average(linear @ LUMA >= 0.99, weights=np.broadcast_to(weights, linear.shape[:2])))


SHEET = ("drei-assets_potsdamer_platz_1k", "panolens-js_pier", "drei-assets_studio_small_03_1k", "360sd-net_room")


def contact_sheet(pool: Path, out: Path, width: int = 512) -> None:
    from PIL import Image

    rows = []
    for name in SHEET:
        photo = np.asarray(Image.open(pool / f"{name}.jpg").convert("RGB").resize((width, width // 2)), np.float32)
        photo /= 255.0
        hdr = expand_highlights(srgb_to_linear(photo), 20.0)
        rows.append(np.concatenate([photo, tonemap_hdr(hdr, clip_share=None),
                                    tonemap_hdr(hdr, protect_stops=math.inf), tonemap_hdr(hdr)], axis=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.concatenate(rows) * 255 + 0.5).astype(np.uint8)).save(out, quality=85)
    print(f"wrote {out}")


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
    p.add_argument("--sheet", metavar="JPG", help="only draw a contact sheet to this file (no model): for a few "
                   "photographs with highlights x20, the photograph | the median alone | 1%% past white, darkened "
                   "by any amount | the shipped rule")
    args = p.parse_args()
    if args.sheet:
        return contact_sheet(Path(args.pool), Path(args.sheet))
    files = sorted(glob.glob(str(Path(args.pool) / "*.jpg")))
    if not files:
        p.error(f"--pool {args.pool}: no .jpg photographs there")
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
    rules = {1.0: [("median", k, 0.0) for k in keys] + [("geometric mean", k, 0.0) for k in keys]
             + [("median, 1% past white", HDR_KEY, s) for s in PROTECT_STOPS]}
    for k in EXPANSIONS[1:]:
        rules[k] = [("median", HDR_KEY, 0.0)] + [("median, 1% past white", HDR_KEY, s) for s in PROTECT_STOPS]
    gaps: dict[tuple, list[float]] = {(k, r): [] for k, rs in rules.items() for r in rs}
    invariance = 0.0
    for i, (f, lin) in enumerate(zip(files, linear, strict=True)):
        reference = dap.predict(read_rgb(f), model).depth
        for k, rs in rules.items():
            hdr = expand_highlights(lin, k)
            for rule in rs:
                gaps[k, rule].append(log_gap(dap.predict(expose(hdr, rule), model).depth, reference))
        a, b = tonemap_hdr(lin * np.float32(0.01)), tonemap_hdr(lin * np.float32(100.0))
        invariance = max(invariance, float(np.abs(a - b).max()))
        print(f"{i + 1}/{len(files)} {Path(f).name}: gap " + " ".join(f"{g[-1]:.3f}" for g in gaps.values()),
              flush=True)
    print("(per photograph: the gap of each row of the table below, in order)")
    print(f"\n{len(files)} photographs, model {args.model}; largest pixel difference between x0.01 and x100 of the "
          f"same radiance: {invariance:.2e}\n")
    print("| highlights | statistic set to the key | key | darkened at most | median |log| depth gap, mean over "
          "photographs | median | 90th percentile |")
    print("|---|---|---|---|---|---|---|")
    for (k, (stat, key, stops)), g in gaps.items():
        g = np.array(g)
        darkest = "" if "white" not in stat else "any" if math.isinf(stops) else f"{stops:g} stops"
        print(f"| {'as in the photograph' if k == 1 else f'x{k:g}'} | {stat} | {key} | {darkest} | {g.mean():.4f} "
              f"| {np.median(g):.4f} | {np.percentile(g, 90):.4f} |")

if __name__ == "__main__":
    from script_errors import run

    run(main)
