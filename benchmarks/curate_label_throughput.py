"""Labeling throughput of `dap curate label`: 1 vs 2 torchrun ranks, with and without test-time augmentation,
as a ratio to plain `dap predict` (depth .npy only) on the same panoramas, all measured in this run.

Each variant runs as its own process (model loading included, as a user would run it), on a fresh copy of the
label folder. 1 rank uses all threads; 2 ranks use one thread each.

    .venv/bin/python benchmarks/curate_label_throughput.py --count 24 --resolution 256x512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dap.cli import parse_network_size, positive_int

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of this command's largest process: torchrun's ranks are its children, and a
    process's peak covers the children it waited for)."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(ROOT.parent / "shared/real-panos"), help="folder of panoramas")
    p.add_argument("--count", type=positive_int, default=24, help="panoramas (the first N files)")
    p.add_argument("--resolution", default="256x512", type=parse_network_size,
                   help="working resolution HxW (2:1, multiples of 16)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()

    from dap.inference import default_model_path

    model = args.model or str(default_model_path())
    resolution = "x".join(map(str, args.resolution))
    source = Path(args.source)
    files = sorted(f for f in source.iterdir() if f.suffix.lower() in (".jpg", ".png"))[: args.count] \
        if source.is_dir() else []
    if not files:
        sys.exit(f"--source: no .jpg or .png panoramas in {source}")
    with tempfile.TemporaryDirectory(prefix="dap-label-bench-") as tmp:
        rows = measure(files, Path(tmp), model, resolution, args.batch_size)
    print(f"{len(files)} panoramas at {resolution}, batch {args.batch_size}, model {Path(model).name}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"| {'variant':<24} | s | panoramas/s | vs predict | peak RSS MB (largest process) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']:<24} | {r['seconds']} | {r['panoramas_per_s']} | {r['vs_predict']} | "
              f"{r['peak_rss_mb']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def measure(files: list[Path], work: Path, model: str, resolution: str, batch_size: int) -> list[dict]:
    """One row per variant, each run on `files` copied into `work`."""
    src = work / "src"
    src.mkdir()
    for f in files:
        shutil.copy(f, src / f.name)
    py = sys.executable
    _run([py, "-m", "dap.cli", "curate", "ingest", str(src), "--pool", str(work / "pool"), "--max-tilt", "90",
          "--max-width", "1024"], 2)
    n = len(files)
    common = ["--model", model, "--resolution", resolution, "--batch-size", str(batch_size)]
    variants = [
        ("dap predict (npy)", [py, "-m", "dap.cli", "predict", str(src), "--out", str(work / "pred"), "--outputs",
                               "npy", "--resolution", resolution, "--checkpoint", model], 2),
        ("label, 1 rank, no TTA", [py, "-m", "dap.cli", "curate", "label", "--pool", str(work / "pool"), *common,
                                   "--workers", "1", "--no-tta"], 2),
        ("label, 2 ranks, no TTA", [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                    "-m", "dap.cli", "curate", "label", "--pool", str(work / "pool"), *common,
                                    "--workers", "1", "--no-tta"], 1),
        ("label, 1 rank, TTA", [py, "-m", "dap.cli", "curate", "label", "--pool", str(work / "pool"), *common,
                                "--workers", "1"], 2),
        ("label, 2 ranks, TTA", [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                 "-m", "dap.cli", "curate", "label", "--pool", str(work / "pool"), *common,
                                 "--workers", "1"], 1),
    ]
    rows, base = [], None
    for name, cmd, threads in variants:
        shutil.rmtree(work / "pool/labels", ignore_errors=True)
        shutil.rmtree(work / "pred", ignore_errors=True)
        wall, rss = _run(cmd, threads)
        pps = n / wall
        base = base or pps
        rows.append({"variant": name, "panoramas": n, "seconds": round(wall, 1), "panoramas_per_s": round(pps, 2),
                     "vs_predict": round(pps / base, 2), "peak_rss_mb": round(rss)})
    return rows


if __name__ == "__main__":
    main()
