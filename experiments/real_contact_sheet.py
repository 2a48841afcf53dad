"""Contact sheet of real panoramas: input | depth of each model (turbo, 0-10 m indoor / 0-50 m outdoor; out of
range black; with --tta each model also with test-time augmentation, in the column after it), one line per
panorama. Also prints, per model, the share of pixels marked out of range on indoor photos (where there should be
none) and the median predicted depth.

    python experiments/real_contact_sheet.py --models bundled runs/x/final --out docs/figures/real_sheet.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

import dap
from dap.cli import parse_network_size
from dap.inference import default_model_path
from dap.io import colorize_depth, read_rgb, write_rgb

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "real-panos"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bundled"], help="checkpoints ('bundled' = the packaged model)")
    p.add_argument("--pool", default=str(POOL), help="folder of real panoramas with manifest.csv (file, scene)")
    p.add_argument("--scene", default="indoor", choices=("indoor", "outdoor", "all"),
                   help="the pool's panoramas of this scene (its manifest.csv's column)")
    p.add_argument("--limit", type=int, default=8, help="panoramas on the sheet")
    p.add_argument("--resolution", type=parse_network_size, default=None,
                   help="working resolution HxW (default: each model's own)")
    p.add_argument("--tta", action="store_true",
                   help="each model also with test-time augmentation (dap.predict's tta), in the column after it")
    p.add_argument("--out", default="real_contact_sheet.png", help="the sheet to write (an image file)")
    args = p.parse_args()
    resolution = args.resolution
    if not (Path(args.pool) / "manifest.csv").is_file():
        p.error(f"--pool {args.pool}: no manifest.csv (file, scene) there")
    with open(Path(args.pool) / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if args.scene == "all" or r["scene"] == args.scene]
    models = [dap.load_model(default_model_path() if m == "bundled" else m) for m in args.models]
    columns = [(name, model, tta) for name, model in zip(args.models, models, strict=True)
               for tta in ((False, True) if args.tta else (False,))]
    lines, stats = [], {f"{name}{' tta' if tta else ''}": [] for name, _, tta in columns}
    for r in rows[: args.limit] if args.limit else rows:
        rgb = read_rgb(Path(args.pool) / r["file"])
        cells = [cv2.resize((rgb * 255).astype(np.uint8), (256, 128), interpolation=cv2.INTER_AREA)]
        for name, model, tta in columns:
            pred = dap.predict(rgb, model, resolution=resolution, tta=tta)
            depth = np.where(pred.range_mask, 0, pred.depth)
            vmax = 10.0 if r["scene"] == "indoor" else 50.0
            cells.append(cv2.resize(colorize_depth(depth, min_depth=0, max_depth=vmax), (256, 128),
                                    interpolation=cv2.INTER_NEAREST))
            median = float(np.median(pred.depth[~pred.range_mask])) if (~pred.range_mask).any() else float("nan")
            stats[f"{name}{' tta' if tta else ''}"].append((pred.range_mask.mean(), median))
        lines.append(np.concatenate(cells, axis=1))
    write_rgb(args.out, np.concatenate(lines, axis=0))
    for name, s in stats.items():
        a = np.array(s)
        print(f"{name}: out-of-range share {a[:, 0].mean():.3f}, median depth {np.nanmedian(a[:, 1]):.2f} m")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from script_errors import run

    run(main)
