"""How far bf16, fp16 and int8 move the bundled model's output from fp32: on the bundled sample photographs (no
ground truth, so against fp32 only) and, with --synthetic, on rendered panoramas with exact depth. AbsRel over
pixels in range in both outputs, AbsRel against the ground truth (pixels with depth, in range in the truth and in
the prediction), the share of pixels whose range mask flips (the calibrated threshold, 0.999, makes the mask the
sensitive part outdoors), the share of horizontally neighbouring pixels in range with exactly equal depth (a
depth map rounded to 16-bit steps shows as terraces: fp32 has none), and the grain: the mean |second difference
along the rows| of log depth over fp32's (16-bit rounding inside the heads shows as streaks in normal maps).

    python experiments/precision_drift.py                          # the samples in src/dap/assets/samples
    python experiments/precision_drift.py pano1.jpg pano2.jpg      # other panoramas
    python experiments/precision_drift.py --synthetic 6            # also seeds 900000-900005 (even indoor, odd outdoor)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dap

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "dap" / "assets" / "samples"
PRECISIONS = ("bf16", "fp16", "int8")


def row(name: str, fast, exact, gt: np.ndarray | None) -> str:
    both = ~exact.range_mask & ~fast.range_mask
    drift = float(np.mean(np.abs(fast.depth[both] - exact.depth[both]) / exact.depth[both]))
    if gt is None:
        truth = "-"
    else:
        ok = both & (gt > 0)
        truth = f"{float(np.mean(np.abs(fast.depth[ok] - gt[ok]) / gt[ok])):.4f}"
    flips = float(np.mean(fast.range_mask != exact.range_mask))
    pairs = ~fast.range_mask[:, 1:] & ~fast.range_mask[:, :-1]  # out of range is one value, the cap
    terraces = float(np.mean((fast.depth[:, 1:] == fast.depth[:, :-1])[pairs]))
    return f"| {name} | {drift:.2%} | {truth} | {flips:.3%} | {terraces:.1%} | {grain(fast) / grain(exact):.2f} |"


def grain(pred) -> float:
    """Mean |second difference along the rows| of log depth over pixels in range with both neighbours in range."""
    log = np.log(np.clip(pred.depth.astype(np.float64), 1e-3, None))
    inside = ~pred.range_mask[:, 2:] & ~pred.range_mask[:, 1:-1] & ~pred.range_mask[:, :-2]
    return float(np.mean(np.abs(log[:, 2:] - 2 * log[:, 1:-1] + log[:, :-2])[inside]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="panoramas (default: the bundled samples)")
    parser.add_argument("--model", default="dap-tiny-synth", help="model name or path")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also N rendered panoramas with exact depth (256x512, photo style)")
    args = parser.parse_args()
    from dap.data.synthetic import make_scene, render

    images = [(p.name, p, None) for p in (args.images or sorted(SAMPLES.glob("*.jpg")))]
    for i in range(args.synthetic):
        seed = 900000 + i
        scene = render(make_scene(seed, ("indoor", "outdoor")[i % 2]), 256, 512, "photo")
        images.append((f"synthetic {seed}", scene["rgb"], np.where(scene["range_mask"], 0, scene["depth"])))
    model = dap.load_model(args.model)
    print("| panorama | precision | AbsRel vs fp32 | AbsRel vs ground truth | range-mask pixels that flip | "
          "neighbours in range with equal depth | grain over fp32's |")
    print("|---|---|---|---|---|---|---|")
    for name, image, gt in images:
        exact = dap.predict(image, model, precision="fp32")
        print(row(f"{name} | fp32", exact, exact, gt), flush=True)
        for precision in PRECISIONS:
            print(row(f"{name} | {precision}", dap.predict(image, model, precision=precision), exact, gt), flush=True)


if __name__ == "__main__":
    from script_errors import run

    run(main)
