"""Peak memory and time of whole `dap predict` processes, with glibc's default malloc, with a fixed 1 MiB mmap
threshold (`MALLOC_MMAP_THRESHOLD_=1048576`: freed blocks of 1 MiB or more go back to the system at once, where by
default glibc raises the threshold as large blocks are freed and keeps them in the heap for reuse), and with every
block from the heap and nothing trimmed (`MALLOC_MMAP_MAX_=0`, `MALLOC_TRIM_THRESHOLD_`: what `dap train` sets).

    .venv/bin/python benchmarks/predict_memory.py --model /tmp/vitl --sizes 512,1024 --repeats 2

Each row runs `dap predict <one random panorama> --outputs npy --precision fp32` in a child process; the two
allocator settings alternate (default, fixed, default, fixed, ...) so load from other processes hits both alike.
Peak RSS is the child's own (`os.wait4` rusage, ru_maxrss), in GiB and in GB (10^9 bytes); time is what `dap
predict` reports per panorama (model loading excluded), best of --repeats, and the ratio is against the default.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SETTINGS = {"glibc default": {}, "1 MiB mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
            "heap only, no trim": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}}


def run_once(model: str, image: Path, out: Path, setting: dict) -> tuple[float, float]:
    """(peak RSS in bytes, seconds per panorama) of one `dap predict` child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | setting
    cmd = [sys.executable, "-m", "dap.cli", "predict", str(image), "--model", model, "--outputs", "npy",
           "--precision", "fp32", "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"dap predict failed ({status}): {' '.join(cmd)}")
    seconds = float(re.search(r"([\d.]+) s per panorama", stdout).group(1))
    return usage.ru_maxrss * 1024.0, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model for --model of dap predict (a folder in our format)")
    ap.add_argument("--sizes", default="512,1024", help="input heights (width = 2 x height), comma-separated")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting and size (best time, largest peak)")
    args = ap.parse_args()
    print("| input | malloc | peak RSS GiB | peak RSS GB | s per panorama | time vs default |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for h in (int(v) for v in args.sizes.split(",")):
            from dap import io

            image = Path(tmp) / f"pano{h}.jpg"
            io.write_rgb(image, np.random.default_rng(0).random((h, 2 * h, 3)))
            results = {name: [] for name in SETTINGS}
            for _ in range(args.repeats):
                for name, setting in SETTINGS.items():
                    results[name].append(run_once(args.model, image, Path(tmp) / "out", setting))
            base = min(s for _, s in results["glibc default"])
            for name, runs in results.items():
                peak, best = max(p for p, _ in runs), min(s for _, s in runs)
                print(f"| {h}x{2 * h} | {name} | {peak / 2**30:.2f} | {peak / 1e9:.2f} | {best:.1f} | "
                      f"{base / best:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
