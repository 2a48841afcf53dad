"""Does a model take brightness for geometry? The floor and ceiling it finds in the real indoor photographs of the
pool, as they are and with their upper or lower half (or all of them) made brighter or darker.

A room does not change when its ceiling is lit more brightly, so a model that reads geometry gives the same floor
and ceiling for every row of the table; one that learned "brighter above means farther above" from rendered data
moves them. Distances are `dap.geometry.floor_and_ceiling` on the model's depth (medians over the photographs).

    python experiments/brightness_cues.py --models bundled runs/x/final
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

import dap
from dap.geometry import floor_and_ceiling
from dap.io import read_rgb

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "real-panos"

# name -> (gain of the upper half, gain of the lower half)
VARIANTS = {"as taken": (1.0, 1.0), "upper half x1.5": (1.5, 1.0), "upper half x0.6": (0.6, 1.0),
            "lower half x1.5": (1.0, 1.5), "lower half x0.6": (1.0, 0.6), "all x0.6": (0.6, 0.6)}


def relit(rgb: np.ndarray, upper: float, lower: float) -> np.ndarray:
    out = rgb.copy()
    half = rgb.shape[0] // 2
    out[:half] *= upper
    out[half:] *= lower
    return np.clip(out, 0.0, 1.0)


def floor_ceiling(model, rgb: np.ndarray) -> tuple[float, float]:
    pred = dap.predict(rgb, model)
    return floor_and_ceiling(pred.depth, ~pred.range_mask & (pred.depth > 0))


def top_bottom_ratio(rgb: np.ndarray) -> float:
    """Mean brightness of the top quarter of the rows over that of the bottom quarter."""
    lum = rgb.mean(axis=-1)
    quarter = rgb.shape[0] // 4
    return float(lum[:quarter].mean() / max(float(lum[-quarter:].mean()), 1e-6))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["bundled"], help="model folders or names ('bundled' = packaged)")
    p.add_argument("--pool", default=str(POOL), help="folder of real panoramas with manifest.csv (file, scene)")
    p.add_argument("--rendered", nargs="*", default=[], metavar="SHARDS",
                   help="`dap synth` folders: also print their top-to-bottom brightness ratio beside the photographs'")
    args = p.parse_args()
    if not (Path(args.pool) / "manifest.csv").is_file():
        p.error(f"--pool {args.pool}: no manifest.csv (file, scene) there")
    with open(Path(args.pool) / "manifest.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f) if r["scene"] == "indoor"]
    photos = [read_rgb(Path(args.pool) / name) for name in files]
    if args.rendered:
        from dap.data.shards import ShardDataset

        print("brightness of the top quarter of the rows over the bottom quarter's, median:")
        print(f"  real indoor photographs: {np.median([top_bottom_ratio(r) for r in photos]):.3f}")
        for folder in args.rendered:
            data = ShardDataset(folder)
            picks = range(0, len(data), max(1, len(data) // 150))
            ratio = np.median([top_bottom_ratio(data[i]["rgb"].permute(1, 2, 0).numpy()) for i in picks])
            print(f"  {folder} ({len(picks)} of {len(data)}): {ratio:.3f}")
        print()
    if not args.models:
        return
    print(f"{len(photos)} indoor photographs; floor and ceiling: vertical distance from the camera (m), medians\n")
    print("| model | lighting | floor | ceiling | ceiling / floor | ceiling vs as taken |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = dap.load_model("dap-tiny-synth" if name == "bundled" else name)
        base = None
        for variant, (upper, lower) in VARIANTS.items():
            fc = np.array([floor_ceiling(model, relit(rgb, upper, lower)) for rgb in photos])
            floor, ceiling, ratio = np.nanmedian(fc[:, 0]), np.nanmedian(fc[:, 1]), np.nanmedian(fc[:, 1] / fc[:, 0])
            base = ceiling if base is None else base
            print(f"| {name} | {variant} | {floor:.2f} | {ceiling:.2f} | {ratio:.3f} | {ceiling / base - 1:+.1%} |",
                  flush=True)


if __name__ == "__main__":
    from script_errors import run

    run(main)
