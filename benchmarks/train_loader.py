"""Time per training sample of `dap train`'s data path on one CPU thread: shard decode, the bundled recipe's
augmentation (yaw roll, flip, random pitch/roll rotation of the sphere, colour jitter, exposure) and collate. On a
GPU this is what feeds the network: each loader worker makes one sample at a time.

    .venv/bin/python benchmarks/train_loader.py                                     # 512x1024, this checkout
    .venv/bin/python benchmarks/train_loader.py --against /tmp/dap-before/src       # ... against an older src/

--against SRC: another checkout's `src/` (e.g. `git archive <commit> src | tar -x -C /tmp/dap-before`), timed on
the same panoramas and the same sample keys. Each row runs in a fresh process (its own `dap` import); the rows are
timed in turns, best of --rounds. Panoramas are rendered once into a temporary folder (or --data: shards).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dap.cli import package_source, parse_panorama_size, positive_int

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from dap.errors import DapError
from dap.train import load_config, setup_distributed
from dap.train.loop import _build_data
s = json.loads(sys.argv[1])
try:
    cfg = load_config(None, [f"data.sources=[{{kind: shards, path: {s['data']}}}]", f"data.height={s['h']}",
                             f"data.width={s['w']}", f"data.batch_size={s['batch']}", "data.num_workers=0",
                             "data.rotate=true", "data.exposure=2.5", "run.device=cpu", "run.steps=1000"])
    loader, _ = _build_data(cfg, setup_distributed("cpu"), 0)
    it = iter(loader)
    next(it)  # warm-up: opens the shards
except DapError as e:  # e.g. --data holds no shards: the message, not a traceback
    # without the name of the config entry it is here (data.sources[0]): the user gave --data
    sys.exit(f"--data: {e.__cause__ if isinstance(e.__cause__, DapError) else e}")
t = time.perf_counter()
for _ in range(s["batches"]):
    next(it)
print(json.dumps({"ms": (time.perf_counter() - t) / (s["batches"] * s["batch"]) * 1000}))
"""


def time_row(src: str | Path, settings: dict) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(out.stderr.strip())
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=parse_panorama_size, default=(512, 1024),
                        help="training resolution HEIGHTxWIDTH (2:1)")
    parser.add_argument("--data", type=Path, help="shards to read (default: render --count panoramas)")
    parser.add_argument("--count", type=positive_int, default=16, help="panoramas to render when --data is not given")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--batches", type=positive_int, default=4, help="timed batches per round")
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--against", type=package_source, metavar="SRC",
                        help="an older checkout's src/, timed as `before`")
    args = parser.parse_args()
    h, w = args.resolution
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            made = subprocess.run([sys.executable, "-m", "dap.cli", "synth", "--count", str(args.count), "--out",
                                   str(data), "--kind", "indoor", "--style", "photo", "--resolution", f"{h}x{w}",
                                   "--no-progress"], stdout=subprocess.DEVNULL)
            if made.returncode:
                raise SystemExit(made.returncode)  # dap synth printed why
        settings = {"data": str(data), "h": h, "w": w, "batch": args.batch, "batches": args.batches}
        rows = {"before": args.against} if args.against else {}
        rows["this checkout"] = ROOT / "src"
        best = {name: float("inf") for name in rows}
        for _ in range(args.rounds):
            for name, src in rows.items():
                best[name] = min(best[name], time_row(src, settings))
    base = next(iter(best.values()))
    print(f"training samples at {h}x{w}, batch {args.batch}, one thread, best of {args.rounds} rounds "
          f"of {args.batches} batches")
    print(f"{'src':<14} {'ms/sample':>9} {'samples/s':>9} {'x base':>6}")
    for name, ms in best.items():
        print(f"{name:<14} {ms:>9.1f} {1000 / ms:>9.2f} {base / ms:>5.2f}x")


if __name__ == "__main__":
    main()
