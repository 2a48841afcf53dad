"""Throughput of the synthetic panorama renderer (`dap.data.synthetic`) and of `dap synth` end to end.

    .venv/bin/python benchmarks/synth_throughput.py                  # 512x1024, table
    .venv/bin/python benchmarks/synth_throughput.py --resolution 256x512 --count 8
    .venv/bin/python benchmarks/synth_throughput.py --depths 40 --resolution 256x512   # distance histogram

Each row runs in a fresh process so that "peak RSS" is that configuration's own peak.
  render  one process, torch using `threads` intra-op threads, render() only (seeds 0..count-1)
  synth   write_dataset(..., workers=threads): render + PNG/NPY encoding + tar shards, as `dap synth` does
"panoramas/s" is wall clock; "CPU ms/pano" is process CPU time per panorama (less sensitive to other load on
a shared machine). The first row (clean, supersample 1) is the baseline the others are compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from dap.cli import nonnegative_int, parse_panorama_size, positive_int

CONFIGS = [  # (mode, kind, style, supersample, threads: torch threads for render / worker processes for synth)
    ("render", "indoor", "clean", 1, 1),
    ("render", "outdoor", "clean", 1, 1),
    ("render", "indoor", "photo", 1, 1),
    ("render", "outdoor", "photo", 1, 1),
    ("render", "mixed", "clean", 2, 1),
    ("render", "mixed", "clean", 1, 2),
    ("synth", "mixed", "clean", 1, 2),
    ("synth", "mixed", "photo", 1, 2),
]


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the synth workers)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def one(mode: str, kind: str, style: str, ss: int, h: int, w: int, count: int, threads: int) -> dict:
    import torch

    from dap.data.synthetic import kind_for_seed, make_scene, render

    torch.set_num_threads(threads)
    if mode == "render":
        render(make_scene(10_000, kind_for_seed(10_000, kind)), h, w, style, ss)  # warm-up: ray grid cache
        cpu, start = _cpu(), time.perf_counter()
        for seed in range(count):
            render(make_scene(seed, kind_for_seed(seed, kind)), h, w, style, ss)
    else:
        from dap.data.shards import write_dataset

        with tempfile.TemporaryDirectory() as out:
            cpu, start = _cpu(), time.perf_counter()
            write_dataset(out, count, kind=kind, style=style, resolution=(h, w), workers=threads,
                          shard_size=max(1, count // (2 * threads)), supersample=ss, progress=False)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu
    peak = max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return dict(pps=count / wall, cpu_ms=cpu / count * 1000, peak_mb=peak / 1024)


EDGES = (0.0, 1.0, 3.0, 10.0, 20.0, 50.0, 100.0, float("inf"))


def depth_histogram(count: int, h: int, w: int) -> None:
    """Share of all pixels per distance bin (and sky) over seeds 0..count-1 of each kind, with the mean of
    `depth_stats`' median and range fraction."""
    import numpy as np

    from dap.data.synthetic import depth_stats, make_scene, render

    bins = " | ".join(f"{a:g}-{b:g} m" for a, b in zip(EDGES[:-1], EDGES[1:], strict=True))
    print(f"| kind | sky | {bins} | median depth (m) | range mask |")
    print("|" + "---|" * (len(EDGES) + 3))
    for kind in ("indoor", "outdoor"):
        hist, sky, medians, ranges = np.zeros(len(EDGES) - 1), 0.0, [], []
        for seed in range(count):
            out = render(make_scene(seed, kind), h, w)
            hist += np.histogram(out["depth"][~out["sky_mask"]], EDGES)[0] / out["depth"].size
            sky += out["sky_mask"].mean()
            stats = depth_stats(out)
            medians.append(stats["depth_median"])
            ranges.append(stats["range_fraction"])
        cells = " | ".join(f"{100 * v / count:.1f} %" for v in hist)
        print(f"| {kind} | {100 * sky / count:.1f} % | {cells} | {np.mean(medians):.1f} | "
              f"{100 * np.mean(ranges):.1f} % |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=parse_panorama_size, default=(512, 1024), help="HEIGHTxWIDTH (2:1)")
    ap.add_argument("--count", type=positive_int, default=12, help="panoramas per render row")
    ap.add_argument("--synth-count", type=positive_int, default=48,
                    help="panoramas per synth row (larger: worker start-up, ~2 s each, is included)")
    ap.add_argument("--threads", type=nonnegative_int, default=0,
                    help="override the per-row threads/workers (0: as listed)")
    ap.add_argument("--depths", type=nonnegative_int, default=0, metavar="N",
                    help="instead of timing, print the distance histogram of N scenes per kind")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    h, w = args.resolution
    size = f"{h}x{w}"
    if args.depths:
        depth_histogram(args.depths, h, w)
        return
    if args.one:
        mode, kind, style, ss = args.one.split(",")
        print(json.dumps(one(mode, kind, style, int(ss), h, w, args.count, args.threads)))
        return

    print(f"# {size}, {args.count} panoramas per render row, {args.synth_count} per synth row, "
          f"{os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"| {'mode':6} | {'resolution':10} | {'kind':7} | {'style':5} | ss | threads | panoramas/s | vs baseline | "
          "CPU ms/pano | peak RSS MB |")
    print("|--------|------------|---------|-------|----|---------|-------------|-------------|-------------|"
          "-------------|")
    base = None
    for mode, kind, style, ss, threads in CONFIGS:
        threads = args.threads or threads
        count = args.synth_count if mode == "synth" else args.count
        cmd = [sys.executable, __file__, "--resolution", size, "--count", str(count),
               "--threads", str(threads), "--one", f"{mode},{kind},{style},{ss}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        base = base or r["pps"]
        print(f"| {mode:6} | {size:10} | {kind:7} | {style:5} | {ss:2} | {threads:7} | {r['pps']:11.2f} | "
              f"{r['pps'] / base:10.2f}x | {r['cpu_ms']:11.0f} | {r['peak_mb']:11.0f} |", flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
