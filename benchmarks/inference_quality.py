"""Seam handling and high-resolution upsampling: accuracy, speed and peak memory, measured in one run.

    python benchmarks/inference_quality.py [--checkpoint DIR_OR_PTH] [--count 6] [--resolution HxW]

Part 1 (seam): synthetic panoramas with exact depth, predicted with seam padding 0 (baseline), 1/16 and 1/8 of
the width. Prints AbsRel, the left-right seam error of the prediction (mean |d[:,0] - d[:,-1]| relative), and time
as a ratio against the baseline.
Part 2 (high resolution): panoramas rendered at 4x the working resolution; depth predicted at the working
resolution and brought back with bilinear vs guided upsampling. Prints AbsRel over all pixels and over depth-edge
pixels (where sharpness shows), time ratio, and peak memory of a separate process per strategy on a 2048x4096 input.
Part 3 (scale): metric AbsRel as the model guesses the scale, with `camera_height` set to each scene's true camera
height, and with the depth scaled by the ratio of GT and predicted medians (an oracle: the best one factor can do),
per scene kind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from dap.cli import comma_list, parse_network_size, positive_int
from dap.data.synthetic import STYLES, make_scene, render
from dap.evaluation import compute_metrics, seam_error
from dap.inference import default_model_path, predict, resolve_model, seam_pad_columns


def _edge_mask(depth: np.ndarray) -> np.ndarray:
    d = np.log(np.maximum(depth, 1e-3))
    gy, gx = np.gradient(d)
    edges = np.hypot(gx, gy) > 0.05
    # dilate by 2 px so the band around each edge counts
    for _ in range(2):
        edges = edges | np.roll(edges, 1, 0) | np.roll(edges, -1, 0) | np.roll(edges, 1, 1) | np.roll(edges, -1, 1)
    return edges & (depth > 0) & (depth <= 100)


def _timed(fn, repeats: int = 3):
    """Result and the best of `repeats` wall times (the first call of a configuration also warms up)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def seam_table(model, scenes, resolution) -> None:
    print(f"\n## Seam handling ({len(scenes)} panoramas at {resolution[0]}x{resolution[1]})\n")
    print("| seam pad | columns each side | AbsRel | seam error (pred) | seam error (GT) | time ratio |")
    print("|---|---|---|---|---|---|")
    base = None
    for pad in (0.0, 1 / 16, 1 / 8):
        rel, seam, seam_gt, total = [], [], [], 0.0
        for sc in scenes:
            pred, t = _timed(lambda sc=sc, pad=pad: predict(sc["rgb"], model, resolution=resolution, seam_pad=pad))
            total += t
            valid = (sc["depth"] > 0) & ~sc["range_mask"]
            rel.append(compute_metrics(pred.depth, sc["depth"], valid, max_depth=100.0)["abs_rel"])
            seam.append(seam_error(np.where(pred.range_mask, 0, pred.depth)))
            seam_gt.append(seam_error(np.where(valid, sc["depth"], 0)))
        base = base or total
        # whole patches only: at a small width 1/16 rounds to none (a row equal to the baseline's)
        columns = seam_pad_columns(resolution[1], pad, model.cfg.vit.patch_size)
        print(f"| {pad:.4g} | {columns} | {np.mean(rel):.4f} | {np.nanmean(seam):.4f} | {np.nanmean(seam_gt):.4f} | "
              f"{total / base:.2f} |")


def highres_table(model, scenes, resolution) -> None:
    print(f"\n## High resolution ({scenes[0]['rgb'].shape[0]}x{scenes[0]['rgb'].shape[1]} inputs, "
          f"working resolution {resolution[0]}x{resolution[1]})\n")
    print("| upsampling | AbsRel (all) | AbsRel (edge band) | time ratio |")
    print("|---|---|---|---|")
    base = None
    for mode in ("bilinear", "guided"):
        rel_all, rel_edge, total = [], [], 0.0
        for sc in scenes:
            pred, t = _timed(lambda sc=sc, mode=mode: predict(sc["rgb"], model, resolution=resolution, upsample=mode))
            total += t
            valid = (sc["depth"] > 0) & ~sc["range_mask"] & ~pred.range_mask
            rel_all.append(compute_metrics(pred.depth, sc["depth"], valid, max_depth=100.0)["abs_rel"])
            edge = valid & _edge_mask(sc["depth"])
            rel_edge.append(compute_metrics(pred.depth, sc["depth"], edge, max_depth=100.0)["abs_rel"])
        base = base or total
        print(f"| {mode} | {np.mean(rel_all):.4f} | {np.mean(rel_edge):.4f} | {total / base:.2f} |")


def scale_table(model, scenes, resolution) -> None:
    print(f"\n## Metric scale ({len(scenes)} panoramas at {resolution[0]}x{resolution[1]})\n")
    print("| scenes | model's own scale | camera_height = true height | median scaling (oracle) |")
    print("|---|---|---|---|")
    rows = {}
    for sc, kind, height in scenes:
        valid = (sc["depth"] > 0) & ~sc["range_mask"]
        guess = predict(sc["rgb"], model, resolution=resolution)
        fixed = predict(sc["rgb"], model, resolution=resolution, camera_height=height)
        ok = valid & ~guess.range_mask
        oracle = guess.depth * np.median(sc["depth"][ok]) / np.median(guess.depth[ok])
        rows.setdefault(kind, []).append(
            [compute_metrics(d, sc["depth"], valid, max_depth=100.0)["abs_rel"] for d in (guess.depth, fixed.depth,
                                                                                          oracle)])
    for kind, values in rows.items():
        print(f"| {kind} ({len(values)}) | " + " | ".join(f"{v:.4f}" for v in np.mean(values, axis=0)) + " |")


def _peak_memory_child(checkpoint: str, mode: str, size: int) -> None:
    import resource

    model = resolve_model(checkpoint, torch.device("cpu"))
    rgb = np.random.default_rng(0).random((size, 2 * size, 3), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    predict(rgb, model, upsample=mode)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "before_mib": before / 1024, "seconds": elapsed}))


def memory_table(checkpoint: str, size: int) -> None:
    print(f"\n## Peak memory, one {size}x{2 * size} panorama at the model's default working resolution\n")
    print("| upsampling | process peak RSS (MiB) | RSS before predict (MiB) | time ratio |")
    print("|---|---|---|---|")
    base = None
    for mode in ("bilinear", "guided"):
        out = subprocess.run([sys.executable, __file__, "--_child", mode, "--checkpoint", checkpoint,
                              "--_size", str(size)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"the {mode} measurement failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or r["seconds"]
        print(f"| {mode} | {r['peak_mib']:.0f} | {r['before_mib']:.0f} | {r['seconds'] / base:.2f} |")


TABLES = ("seam", "highres", "memory", "scale")


def table(text: str) -> str:
    if text not in TABLES:
        raise argparse.ArgumentTypeError(f"unknown table {text!r}; the tables are {', '.join(TABLES)}")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(default_model_path()))
    ap.add_argument("--count", type=positive_int, default=6, help="synthetic panoramas per table (half indoor)")
    ap.add_argument("--resolution", type=parse_network_size, default=None,
                    help="working resolution HxW (default: the model's own)")
    ap.add_argument("--style", default="photo", choices=sorted(STYLES), help="texture style of the synthetic panoramas")
    ap.add_argument("--memory-size", type=positive_int, default=2048, help="height of the peak-memory input")
    ap.add_argument("--parts", type=comma_list(table), default=list(TABLES),
                    help=f"comma-separated tables to run, of {', '.join(TABLES)}")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_size", type=int, default=2048, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        _peak_memory_child(args.checkpoint, args._child, args._size)
        return
    torch.set_num_threads(2)
    parts = args.parts
    kinds = ["indoor", "outdoor"]
    # Held-out seeds (the bundled model's validation range, never trained on).
    seeds = [(900_000 + i, kinds[i % 2]) for i in range(args.count)]
    if "seam" in parts or "highres" in parts or "scale" in parts:
        model = resolve_model(args.checkpoint, torch.device("cpu"))
        h, w = args.resolution or model.cfg.default_resolution
    if "seam" in parts:
        seam_table(model, [render(make_scene(s, k), h, w, args.style) for s, k in seeds], (h, w))
    if "highres" in parts:
        highres_table(model, [render(make_scene(s, k), 4 * h, 4 * w, args.style) for s, k in seeds], (h, w))
    if "memory" in parts:
        memory_table(args.checkpoint, args.memory_size)
    if "scale" in parts:  # the ground and the floor lie at y = 0, the camera at y = -height (y points down)
        scenes = [(make_scene(s, k), k) for s, k in seeds]
        scale_table(model, [(render(sc, h, w, args.style), k, -sc.camera[1]) for sc, k in scenes], (h, w))


if __name__ == "__main__":
    main()
