"""How far bf16, fp16 and int8 move the bundled model's output from fp32 on real photographs: the bundled sample
panoramas (no ground truth, so against fp32 only). AbsRel over pixels in range in both outputs, and the share of
pixels whose range mask flips (the calibrated threshold, 0.999, makes the mask the sensitive part outdoors).

    python experiments/precision_drift.py                          # the samples in src/dap/assets/samples
    python experiments/precision_drift.py pano1.jpg pano2.jpg      # other panoramas
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dap

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "dap" / "assets" / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="panoramas (default: the bundled samples)")
    parser.add_argument("--model", default="dap-tiny-synth", help="model name or path")
    args = parser.parse_args()
    images = args.images or sorted(SAMPLES.glob("*.jpg"))
    model = dap.load_model(args.model)
    print("| panorama | precision | AbsRel vs fp32, pixels in range in both | range-mask pixels that flip |")
    print("|---|---|---|---|")
    for path in images:
        exact = dap.predict(path, model, precision="fp32")
        for precision in ("bf16", "fp16", "int8"):
            fast = dap.predict(path, model, precision=precision)
            both = ~exact.range_mask & ~fast.range_mask
            absrel = float(np.mean(np.abs(fast.depth[both] - exact.depth[both]) / exact.depth[both]))
            flips = float(np.mean(fast.range_mask != exact.range_mask))
            print(f"| {path.name} | {precision} | {absrel:.2%} | {flips:.2%} |", flush=True)


if __name__ == "__main__":
    from script_errors import run

    run(main)
