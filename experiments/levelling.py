"""Does `predict(..., level=True)` help on tilted panoramas? Held-out synthetic scenes with exact depth (renderer
photo style, 256x512, indoor and outdoor), each seen by its own camera (the renderer's small pitch/roll jitter) and
by that camera tilted a further 10 and 20 degrees in a random direction; the bundled model's metric AbsRel against
the depth the tilted camera sees (out-of-range pixels at 100 m), with and without levelling, and the tilt
`dap.geometry.level_rotation` leaves (degrees between where the true and the estimated camera see "down").

    python experiments/levelling.py              # 16 scenes (8 indoor, 8 outdoor), about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

import dap
from dap import geometry
from dap.data.synthetic import make_scene, render
from dap.errors import InputWarning
from dap.evaluation import compute_metrics

SEEDS = 900000  # the held-out seed range of benchmarks/inference_quality.py


def abs_rel(pred: dap.Prediction, gt: np.ndarray) -> float:
    return compute_metrics(np.where(pred.range_mask, 100.0, pred.depth), gt, max_depth=100.0)["abs_rel"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=16, help="scenes (half indoor, half outdoor)")
    p.add_argument("--model", default="dap-tiny-synth", help="model name or folder (default: the bundled model)")
    args = p.parse_args()
    model = dap.load_model(args.model)
    warnings.simplefilter("ignore", InputWarning)  # the tilt warning, which is what --level answers
    rng = np.random.default_rng(0)
    rows: dict[tuple[str, int], dict[str, list[float]]] = {}
    for i in range(args.count):
        kind = ("indoor", "outdoor")[i % 2]
        scene = make_scene(SEEDS + i, kind)
        out = render(scene, 256, 512, "photo")
        gt = np.where(out["range_mask"], 0.0, out["depth"]).astype(np.float32)
        own = geometry.rotation_matrix(*scene.rotation)  # the renderer's camera: any yaw, a little pitch and roll
        for extra in (0, 10, 20):
            angle = rng.uniform(0, 2 * math.pi)
            tilt = geometry.rotation_matrix(pitch=extra * math.cos(angle), roll=extra * math.sin(angle))
            rgb = np.clip(np.asarray(geometry.rotate_erp(out["rgb"], tilt), np.float32), 0, 1)
            truth = np.asarray(geometry.rotate_erp(gt, tilt, mode="nearest"), np.float32)
            row = rows.setdefault((kind, extra), {"as taken": [], "levelled": [], "left": []})
            row["as taken"].append(abs_rel(dap.predict(rgb, model), truth))
            row["levelled"].append(abs_rel(dap.predict(rgb, model, level=True), truth))
            found = geometry.level_rotation(rgb)
            if found is not None:  # row 1 of a camera rotation: where it sees the world's down, whatever its yaw
                camera = own @ tilt
                row["left"].append(math.degrees(math.acos(min(1.0, float(found[1] @ camera[1])))))
        print(f"{i + 1}/{args.count} {kind}: AbsRel as taken / levelled at +0, +10, +20 degrees: "
              + ", ".join(f"{r['as taken'][-1]:.4f} / {r['levelled'][-1]:.4f}"
                          for (k, _), r in sorted(rows.items()) if k == kind), flush=True)
    print(f"\n{args.count} scenes, model {args.model}; metric AbsRel, mean over scenes\n")
    print("| scenes | extra tilt | as taken | levelled | tilt left after levelling (median, max) |")
    print("|---|---|---|---|---|")
    for (kind, extra), row in sorted(rows.items()):
        left = np.array(row["left"])  # empty where no scene of the group could be levelled
        after = f"{np.median(left):.1f}, {left.max():.1f} deg" if left.size else "none levelled"
        print(f"| {kind} | {extra} deg | {np.mean(row['as taken']):.4f} | {np.mean(row['levelled']):.4f} | {after} |")


if __name__ == "__main__":
    from script_errors import run

    run(main)
