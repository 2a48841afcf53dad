"""Measure the ingest rules of `dap curate` on a folder of real panoramas (default: shared/real-panos):
perceptual-hash distances of re-encoded copies vs distinct panoramas, tilt estimates (and how they change with
the panorama's width), and — given a labelled pool — how often the labeler's sky-fraction domain rule agrees with
the user tags.

    python experiments/curation_rules.py [--pool runs/curate_tiny/pool]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dap.curation.ingest import hamming, perceptual_hash
from dap.curation.manifest import read_manifest
from dap.geometry import tilt_angle
from dap.io import read_rgb

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf), np.float32) / 255


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(ROOT.parent / "shared/real-panos"))
    p.add_argument("--pool", default=None, help="a pool labelled by stage 1 whose rows carry user tags")
    args = p.parse_args()
    files = sorted(f for f in Path(args.images).iterdir() if f.suffix.lower() in (".jpg", ".png"))
    images = [read_rgb(f) for f in files]
    hashes = [perceptual_hash(im) for im in images]
    distinct = np.array([hamming(hashes[i], hashes[j]) for i in range(len(hashes)) for j in range(i + 1, len(hashes))])
    copies = np.array([[hamming(h, perceptual_hash(x)) for x in (
        cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA), _jpeg(im, 60),
        np.clip(im * 1.15, 0, 1))] for im, h in zip(images, hashes, strict=True)])
    print("| pair | Hamming distance |\n|---|---|")
    for name, col in zip(("resized to half size", "JPEG quality 60", "15 % brighter"), copies.T, strict=True):
        print(f"| {name} | max {col.max()} (mean {col.mean():.2f}) |")
    print(f"| distinct panoramas ({distinct.size} pairs) | min {distinct.min()}, 1st percentile "
          f"{np.percentile(distinct, 1):.0f}, median {np.median(distinct):.0f} |")
    tilts = sorted((tilt_angle(im), f.name) for im, f in zip(images, files, strict=True))
    print("\ntilt estimates (degrees), highest five:", ", ".join(f"{n} {t:.1f}" for t, n in tilts[-5:]))
    # the same panoramas at the widths a pool may hold them: the estimate should not depend on it
    by_width = {w: np.array([tilt_angle(cv2.resize(im, (w, w // 2), interpolation=cv2.INTER_AREA))
                             for im in images if im.shape[1] >= 1024]) for w in (1024, 512, 256)}
    print("| width | panoramas | median, 90th percentile of |tilt - tilt at 1024| | above 8 degrees |\n"
          "|---|---|---|---|")
    for w, t in by_width.items():
        both = np.isfinite(t) & np.isfinite(by_width[1024])
        diff = np.abs(t - by_width[1024])[both]
        print(f"| {w} | {both.sum()} | {np.median(diff):.2f}, {np.percentile(diff, 90):.2f} | {(t[both] > 8).sum()} |")
    if args.pool:
        rows = [r for r in read_manifest(args.pool) if r["status"] == "ok" and np.isfinite(r["stage1_sky_fraction"])]
        for t in (0.02, 0.05, 0.1, 0.2):
            agree = np.mean([(r["stage1_sky_fraction"] >= t) == (r["domain"] == "outdoor") for r in rows])
            print(f"sky-fraction rule at {t:.2f}: agrees with the tags on {agree:.1%} of {len(rows)} panoramas")


if __name__ == "__main__":
    from script_errors import run

    run(main)
