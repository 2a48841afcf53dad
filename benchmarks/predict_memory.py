"""Peak memory and time of whole `dap predict` processes, with glibc's default malloc, with a fixed 1 MiB mmap
threshold (`MALLOC_MMAP_THRESHOLD_=1048576`: freed blocks of 1 MiB or more go back to the system at once, where by
default glibc raises the threshold as large blocks are freed and keeps them in the heap for reuse), and with every
block from the heap and nothing trimmed (`MALLOC_MMAP_MAX_=0`, `MALLOC_TRIM_THRESHOLD_`: what `dap train` sets).

    .venv/bin/python benchmarks/predict_memory.py --model /tmp/vitl --sizes 512,1024 --repeats 2

Each row runs `dap predict <one random panorama> --outputs npy --precision fp32` in a child process; the two
allocator settings alternate (default, fixed, default, fixed, ...) so load from other processes hits both alike.
Peak RSS is the child's own (`os.wait4` rusage, ru_maxrss), in GiB and in GB (10^9 bytes); time is what `dap
predict` reports per panorama (model loading excluded), best of --repeats, and the ratio is against the default.

    .venv/bin/python benchmarks/predict_memory.py --model dap-tiny-synth --sizes 4096,8192 --repeats 1 \
        --malloc "glibc default" --outputs npy,color,mask --against /tmp/dap-before/src

--against adds rows of an older checkout's src/ folder (`git archive <commit> src | tar -x -C /tmp/dap-before`),
run the same way in turns, so a change's effect on peak memory is measured in one run; --malloc picks settings.
--with adds rows with further `dap predict` arguments, and --image resizes a real panorama to each size instead
of random pixels (levelling needs edges to find a tilt in):

    .venv/bin/python benchmarks/predict_memory.py --model dap-tiny-synth --sizes 4096 --repeats 2 \
        --malloc "glibc default" --image src/dap/assets/sample_indoor.jpg --with=--level
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dap.cli import comma_list, package_source, positive_int

SETTINGS = {"glibc default": {}, "1 MiB mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
            "heap only without trim": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}}


# Run as a child: prints the problem (an unreadable --image) and exits 1, without a traceback.
MAKE_INPUT = """
import sys, cv2, numpy as np
from dap import io
from dap.errors import DapError
path, h, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    rgb = (cv2.resize(io.read_rgb(source), (2 * h, h)) if source
           else np.random.default_rng(0).random((h, 2 * h, 3), np.float32))
    io.write_rgb(path, rgb)
except DapError as e:
    sys.exit(f"--image: {e}")
"""


def run_once(model: str, image: Path, out: Path, setting: dict, outputs: str = "npy",
             src: str | None = None, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    """(peak RSS in bytes, seconds per panorama) of one `dap predict` child, of the checkout in `src` if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | setting
    if src:
        env["PYTHONPATH"] = src
    shutil.rmtree(out, ignore_errors=True)  # each run predicts afresh (a rerun would skip outputs made the same way)
    cmd = [sys.executable, "-m", "dap.cli", "predict", str(image), "--model", model, "--outputs", outputs,
           "--precision", "fp32", "--out", str(out), *extra]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status:
            errors.seek(0)
            raise SystemExit(f"dap predict failed: {' '.join(cmd)}\n{errors.read().strip()}")
    seconds = float(re.search(r"([\d.]+) s per panorama", stdout).group(1))
    return usage.ru_maxrss * 1024.0, seconds


def malloc_setting(text: str) -> str:
    if text not in SETTINGS:
        raise argparse.ArgumentTypeError(f"unknown allocator setting {text!r}; choose from {', '.join(SETTINGS)}")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model for --model of dap predict (a folder in our format)")
    ap.add_argument("--sizes", type=comma_list(positive_int), default=[512, 1024],
                    help="input heights (width = 2 x height), comma-separated")
    ap.add_argument("--repeats", type=positive_int, default=2,
                    help="runs per setting and size (best time, largest peak)")
    ap.add_argument("--malloc", type=comma_list(malloc_setting), default=list(SETTINGS),
                    help=f"allocator settings to run, comma-separated, any of: {', '.join(SETTINGS)}")
    ap.add_argument("--outputs", default="npy", help="--outputs of dap predict")
    ap.add_argument("--against", type=package_source, metavar="SRC",
                    help="an older checkout's src/ folder, run as rows `before`")
    ap.add_argument("--with", dest="variants", action="append", default=[""], metavar="ARGS",
                    help="also rows with these further dap predict arguments (repeatable; write --with=--level)")
    ap.add_argument("--image", help="a panorama to resize to each size (default: random pixels)")
    args = ap.parse_args()
    settings = args.malloc
    codes = {"this checkout": None} | ({"before": args.against} if args.against else {})
    print("| input | code | arguments | malloc | peak RSS GiB | peak RSS GB | s per panorama | time vs first row |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for h in args.sizes:
            image = Path(tmp) / f"pano{h}.jpg"
            # In a process of its own: a child's ru_maxrss counts what its parent held when it forked, so this
            # process must stay small (a 16K panorama made here would be added to every row).
            made = subprocess.run([sys.executable, "-c", MAKE_INPUT, str(image), str(h), args.image or ""])
            if made.returncode:
                raise SystemExit(made.returncode)
            rows = [(code, variant, name) for code in codes for variant in args.variants for name in settings]
            results = {row: [] for row in rows}
            for _ in range(args.repeats):
                for code, variant, name in rows:  # in turns, so load from other processes hits all rows alike
                    results[code, variant, name].append(run_once(args.model, image, Path(tmp) / "out", SETTINGS[name],
                                                                 args.outputs, codes[code], tuple(variant.split())))
            base = min(s for _, s in results[rows[0]])
            for (code, variant, name), runs in results.items():
                peak, best = max(p for p, _ in runs), min(s for _, s in runs)
                print(f"| {h}x{2 * h} | {code} | {variant or '-'} | {name} | {peak / 2**30:.2f} | {peak / 1e9:.2f} | "
                      f"{best:.1f} | {base / best:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
