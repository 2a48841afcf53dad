"""The bundled default model, v3, in one command: v2 trained further on a GPU on fresh panoramas, then calibrated and
evaluated as v2 was (docs/models.md has the card):

    python experiments/bundled_gpu.py --work runs/v3              # everything; resumable
    python experiments/bundled_gpu.py --work runs/v3 --install    # ... and copy the result into the package

Steps (each skipped once done; rerun the same command after an interruption, rendering and training resume):
  heldout    experiments/bundled_model.py's held-out and calibration sets (same kinds, styles, seeds, 256x512) and
             the earlier bundled models from git history (v2 is where training starts)
  round1     experiments/gpu_model.py in <work>/round1: the four training sets rendered again from seeds
             10,000,000 on (4,800 scenes neither v2 nor any held-out set has), configs/gpu_tiny_finetune.yaml from
             v2 -> round1/model, float16
  round2     the same in <work>/round2 from round 1's model: 60% of the counts from seeds 20,000,000 on,
             configs/gpu_tiny_finetune2.yaml stopped at step 1,025 (where the time budget stopped the run that made
             v3) -> round2/model
  calibrate, eval, install   experiments/bundled_model.py's steps on round2/model: range threshold, depth scale and
             latitude profile; v1, v2 and the new model on the held-out sets and real photographs -> results.md;
             --install copies it over src/dap/weights/dap_tiny_synth, refused if any held-out set got worse

Meant for a GPU: round 1 took 5.2 minutes on one H100 (16 CPU cores rendering and loading), round 2 2.5 minutes,
rendering 2.3 + 2.4 minutes. It runs on a CPU too, at about a day for the training.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import bundled_model
import gpu_model
from data_in_the_loop import ROOT, State, log

from dap.cli import positive_int

HELD_OUT = tuple(name for name, *_ in bundled_model.SETS if name not in bundled_model.TRAIN_SETS)
# (step, config, share of the recipe's counts rendered, seed offset, step to stop at)
ROUNDS = (("round1", "gpu_tiny_finetune.yaml", 1.0, 10_000_000, None),
          ("round2", "gpu_tiny_finetune2.yaml", 0.6, 20_000_000, 1025))
STEPS = ("heldout", "round1", "round2", "calibrate", "eval")
NO_TIME_LIMIT = "1000000"  # minutes: the rounds end at their step counts, not on a clock


def step_heldout(args: argparse.Namespace) -> dict:
    info = bundled_model.render_sets(args.work / "data", HELD_OUT, args.workers)
    return {"render": info, **bundled_model.step_v1(args)}


def step_round(args: argparse.Namespace, name: str, config: str, fraction: float, seed_offset: int,
               stop_at: int | None) -> dict:
    t0 = time.monotonic()
    argv = ["--work", str(args.work / name), "--config", str(ROOT / "configs" / config), "--resolution", "256x512",
            "--fraction", str(fraction), "--seed-offset", str(seed_offset), "--workers", str(args.workers),
            "--minutes", NO_TIME_LIMIT] + (["--stop-at", str(stop_at)] if stop_at else [])
    log("gpu_model.py " + " ".join(argv))
    gpu_model.main(argv)
    return {"model": str(args.work / name / "model"), "minutes": round((time.monotonic() - t0) / 60, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for data, runs and results (resumable)")
    parser.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 2),
                        help="processes rendering panoramas")
    parser.add_argument("--install", action="store_true",
                        help="finally copy the new model over src/dap/weights/dap_tiny_synth (refused if worse)")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    run_step = {"heldout": lambda: step_heldout(args), **{r[0]: (lambda r=r: step_round(args, *r)) for r in ROUNDS}}
    for step in STEPS:
        state = State(args.work, "bundled_gpu", STEPS)  # read again each step: bundled_model.py records its steps there
        if state.done(step):
            log(f"{step}: done")
            continue
        log(f"{step} ...")
        if step in run_step:
            state.mark(step, run_step[step]())
        else:
            bundled_model.main(["--work", str(args.work), "--trained", str(args.work / "round2" / "model"),
                                "--step", step], experiment="bundled_gpu")
    if args.install:
        bundled_model.main(["--work", str(args.work), "--trained", str(args.work / "round2" / "model"),
                            "--step", "install"], experiment="bundled_gpu")
    log(f"results in {args.work / 'results.md'}")


if __name__ == "__main__":
    from script_errors import run

    run(main)
