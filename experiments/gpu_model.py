"""A DAP trained on a GPU (by default a ViT-S from random weights for a fixed time at 512x1024; with other configs a
model that starts from the bundled one, as experiments/bundled_gpu.py's rounds do):

    python experiments/gpu_model.py --work runs/gpu --minutes 5 --workers 12      # render, train, export; resumable

Steps (rerun the same command after an interruption: rendering resumes, or is skipped once done):
  render  the bundled recipe's four training sets (experiments/bundled_model.py: same kinds, styles and seeds, so
          none of its held-out scenes is trained on; with --seed-offset other seeds, other scenes, refused where
          they would reach a held-out set) at --resolution, --fraction of its panorama counts, --workers processes
  train   `dap train --config <config>` in <work>, stopped after --minutes (configs/gpu_vits.yaml's schedule is
          constant after the warm-up, so the time budget decides where it ends) or at --stop-at. Every run
          continues from the newest checkpoint, for another --minutes.
  export  the EMA weights as a model folder, <work>/model, stored in float16 (half the size; loading gives fp32)

Evaluate the result as any model folder: `dap eval --dataset synth --root <held-out shards> --checkpoint
<work>/model --out <dir>`. Runs on a CPU too (a check with tiny counts: --fraction 0.005 --minutes 0.5), but it is
meant for a GPU: on two CPU cores one ViT-S step at 512x1024, batch 16, takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import torch
from bundled_model import TRAIN_SETS, render_sets, seed_clashes_with_held_out
from data_in_the_loop import ROOT, State, log

from dap.cli import parse_panorama_size, positive_float, positive_int

STEPS = ("render", "train", "export")


def step_render(args: argparse.Namespace) -> dict:
    return render_sets(args.work / "data", TRAIN_SETS, args.workers, resolution=args.resolution,
                       fraction=args.fraction, seed_offset=args.seed_offset, one_shard_per_worker=True)


def step_train(args: argparse.Namespace) -> dict:
    from dap.train import load_config, train

    cfg = load_config(args.config, args.set)
    run = args.work / "run"
    t0 = time.monotonic()
    with contextlib.chdir(args.work):  # the config's paths (data, model.init) are relative to the work folder
        result = train(cfg, run, resume=(run / "checkpoints").is_dir(), time_limit_min=args.minutes,
                       stop_at=args.stop_at)
    rates = [row["samples_per_s"] for row in result.history[1:]]  # the first window holds the warm-up
    return {"steps": result.step, "minutes": round((time.monotonic() - t0) / 60, 2),
            "samples_per_s": round(sum(rates) / len(rates), 1) if rates else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "last_loss": result.history[-1]["loss/total"] if result.history else None}


def step_export(args: argparse.Namespace, state: State) -> dict:
    from dap.models import load_model, save_model
    from dap.train import build_model, load_config
    from dap.train.checkpoints import list_checkpoints, load_checkpoint

    cfg = load_config(args.config, args.set)
    saved = list_checkpoints(args.work / "run")
    if not saved:
        raise SystemExit(f"{args.work / 'run'} holds no checkpoint to export: run the train step first")
    ckpt_path = saved[-1]
    ckpt = load_checkpoint(ckpt_path)
    with contextlib.chdir(args.work):
        model = build_model(cfg, quiet=True)
    # the EMA is a torch AveragedModel: the network's keys under `module.`, plus its count of averaged steps
    model.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k != "n_averaged"})
    step = int(ckpt["step"])
    save_model(model, args.work / "model", dtype=torch.float16, training={
        "trainer": "dap.train", "steps": step, "world_size": 1, "config": cfg.to_dict(), "ema": True,
        "recipe": "experiments/gpu_model.py", "train": state.data.get("train", {}),
        "render": state.data.get("render", {})})
    load_model(args.work / "model")  # reads back
    size = sum(f.stat().st_size for f in (args.work / "model").iterdir())
    log(f"wrote {args.work / 'model'} ({size / 1e6:.1f} MB, step {step})")
    return {"checkpoint": str(ckpt_path), "step": step, "megabytes": round(size / 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, the run and the model")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "gpu_vits.yaml", help="training config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (as `dap train --set`)")
    parser.add_argument("--minutes", type=positive_float, default=5.0, help="training time budget (per sitting)")
    parser.add_argument("--stop-at", type=positive_int, metavar="STEP",
                        help="stop training at this step (whatever the time), a step of the config's schedule")
    parser.add_argument("--fraction", type=positive_float, default=0.25,
                        help="share of the bundled recipe's panorama counts to render (1.0: 4,800)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="added to each training set's first seed: other scenes than the bundled recipe's, for a "
                             "model that starts from it (10000000 keeps clear of every held-out set's seeds)")
    parser.add_argument("--resolution", type=parse_panorama_size, default=(512, 1024),
                        help="rendering resolution (HEIGHTxWIDTH, 2:1)")
    parser.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 2),
                        help="rendering processes")
    parser.add_argument("--step", action="append", choices=STEPS, help="run only these steps (repeatable)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    clash = seed_clashes_with_held_out(TRAIN_SETS, args.fraction, args.seed_offset)
    if clash:
        parser.error(f"--seed-offset {args.seed_offset}: {', '.join(clash)} include held-out scenes")
    args.work = args.work.resolve()
    args.config = args.config.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    # what the rendered data and the run depend on (not --minutes or --stop-at: a rerun trains on, for longer)
    state = State(args.work, "gpu_model", STEPS, {k: getattr(args, k) for k in
                                                  ("config", "set", "fraction", "seed_offset", "resolution")})
    run_step = {"render": lambda: step_render(args), "train": lambda: step_train(args),
                "export": lambda: step_export(args, state)}
    for step in args.step or STEPS:
        if state.done(step) and step == "render":  # a rerun trains for another --minutes, then exports that
            log(f"{step}: done")
            continue
        log(f"{step} ...")
        state.mark(step, run_step[step]())
    log(f"state in {state.path}")


if __name__ == "__main__":
    from script_errors import run

    run(main)
