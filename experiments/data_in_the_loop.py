"""The data-in-the-loop experiment of issue #13, and the recipe of the bundled default model.

    python experiments/data_in_the_loop.py --work runs/default_model            # everything, resumable
    python experiments/data_in_the_loop.py --work runs/default_model --step eval  # one step again (sheet and
                                                                                  # export are then redone too)

Labeled synthetic data A (`dap synth`, photo style) and the unlabeled real pool B (../shared/real-panos) go through
the curation config configs/default_model.yaml, once per seed, and four models are compared:
  (a) A only                                  = the curation's stage 1 (Scene-Invariant Labeler)
  (b) A + every stage-1 pseudo-label          fine-tuned from (a) like stage 2, without the selection
  (c) A + discriminator-selected pseudo-labels = stage 2 (Realism-Invariant Labeler)
  (d) the full three stages                   = the final model (A + every stage-3 pseudo-label)
on held-out synthetic panoramas of the seen style (photo) and of an unseen one (clean), plus a contact sheet of the
real panoramas: input | bundled model | (a) | (d).

Steps (each skipped once done; rerun the same command after an interruption, training resumes from checkpoints):
  render  A (train), val_photo, val_clean (both held out from training) and val_disc (the discriminator's GT)
  size    stage-1 and fine-tune step counts from --budget-s and a probe of the training speed (two seeds at once),
          unless --stage1-steps and --finetune-steps are given
  seeds   one process per seed, in parallel: `dap curate run` steps, then variant (b)
  eval    every variant on val_photo and val_clean -> results.json, results.md (mean and spread over seeds)
  sheet   contact sheet of the real panoramas (seed 0), and the bundled model's numbers for comparison
  export  seed 0's (d) as float16 weights in <work>/export/ (the bundled model)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dap.cli import positive_int

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "default_model.yaml"
DATA = ROOT / "data" / "default_model"
POOL = ROOT.parent / "shared" / "real-panos"
VARIANTS = {"a": "runs/stage1/final", "b": "runs/all_stage1/final", "c": "runs/stage2/final", "d": "runs/final/final"}
VARIANT_NAMES = {"a": "(a) A only", "b": "(b) A + all stage-1 pseudo-labels", "c": "(c) A + selected pseudo-labels",
                 "d": "(d) three stages"}
START = time.monotonic()
STEPS = ("render", "size", "seeds", "eval", "sheet", "export")
REQUIRES = {"size": "render", "seeds": "size", "eval": "seeds", "sheet": "seeds", "export": "seeds"}
# held-out sets: (name, style, seed of the first panorama, count); disjoint seed ranges from A (seed 0...)
HELD_OUT = (("val_photo", "photo", 900000, 96), ("val_clean", "clean", 900000, 96), ("val_disc", "photo", 950000, 96))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dap_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dap.cli", *args]


class State:
    """What a resumable experiment has done in its --work folder (<work>/experiment.json): which experiment it is,
    the settings its results depend on, and a record per finished step. A folder of another experiment, or one run
    with other settings, is refused: its steps' names would pass for done (one script's "render" is not another's)
    and their data would be reused under the new settings' names. A step that runs again drops the records of the
    steps after it in `steps`, which were made from what it replaces (a new calibration's old evaluation)."""

    def __init__(self, work: Path, experiment: str, steps: tuple[str, ...], settings: dict | None = None):
        self.path, self.experiment, self.steps = work / "experiment.json", experiment, steps
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        if saved and "steps" not in saved:  # written before experiments were named: steps only, taken as ours
            saved = {"experiment": experiment, "steps": saved}
        self.data: dict = saved.get("steps", {})
        theirs = saved.get("experiment", experiment)
        if theirs != experiment:
            raise SystemExit(f"{work} holds a run of experiments/{theirs}.py ({self.path.name}), not of "
                             f"experiments/{experiment}.py; choose another --work")
        self.settings = json.loads(json.dumps(settings, default=str)) if settings is not None else None
        before = saved.get("settings")
        if self.settings is not None and before is not None and self.data and before != self.settings:
            changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in self.settings.items()
                                if before.get(k) != v)
            raise SystemExit(f"{work} was run with other settings ({changed}): its finished steps would be reused as "
                             "if made with these. Rerun with the recorded settings to resume, or choose another --work")
        if self.settings is None:
            self.settings = before

    def done(self, step: str) -> bool:
        return step in self.data

    def mark(self, step: str, info: dict) -> None:
        from dap.io import atomic_write

        later = self.steps[self.steps.index(step) + 1:] if step in self.steps else ()
        self.data = {k: v for k, v in self.data.items() if k not in later} | {step: info}
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps({"experiment": self.experiment, "settings": self.settings, "steps": self.data},
                                      indent=1))


def curate_config(args: argparse.Namespace, seed: int, steps: dict | None):
    """configs/default_model.yaml with this run's pool, seed, step counts and extra training overrides."""
    from dap.curation.pipeline import load_curate_config

    cfg = load_curate_config(args.config, args.curate_set)
    pool = Path(args.pool).resolve()
    cfg.pool.inputs[0].path = str(pool)
    cfg.pool.inputs[0].tags = str(pool / "manifest.csv") if (pool / "manifest.csv").exists() else None
    # the config's labeled and discriminator sets live in DATA; --data moves them where the render step wrote them
    # (the config's own paths trained stage 1 and the discriminator on other data than eval read, or on none)
    for src in [*cfg.labeled, *cfg.discriminator.data]:
        where = (Path(cfg.base_dir) / (src.path or "")).resolve()
        if src.path and where.is_relative_to(DATA.resolve()):
            src.path = str(args.data / where.relative_to(DATA.resolve()))
    extra = dict(item.split("=", 1) for item in args.train_set)
    stage1_extra = dict(item.split("=", 1) for item in args.stage1_set)
    import yaml

    for name in ("stage1", "stage2", "final"):
        stage = getattr(cfg, name)
        stage.set["run.seed"] = seed
        for k, v in [*extra.items(), *(stage1_extra.items() if name == "stage1" else ())]:
            stage.set[k] = yaml.safe_load(v)
        if steps is not None:
            stage.set["run.steps"] = steps["stage1" if name == "stage1" else "finetune"]
    return cfg


# ----------------------------------------------------------------------------------------------------- render
def step_render(args: argparse.Namespace) -> dict:
    res = args.resolution
    info = {}
    sets = [("train", "photo", args.train_seed, args.count), *HELD_OUT]
    for name, style, seed, count in sets:
        count = min(count, args.val_count) if name != "train" else count
        out = args.data / name
        t0 = time.monotonic()
        cmd = dap_cli("synth", "--count", str(count), "--out", str(out), "--resolution", res, "--style", style,
                      "--seed", str(seed), "--workers", str(args.render_workers), "--shard-size",
                      str(min(200, -(-count // (2 * args.render_workers)))), "--no-progress")
        device = [] if args.render_device == "cpu" else ["--device", args.render_device]
        log(f"render {name}: {' '.join(cmd[3:] + device)}")
        if subprocess.run(cmd + device, cwd=ROOT).returncode:
            if not device:
                raise SystemExit(f"dap synth failed for {name}")
            log(f"render {name} on {args.render_device} failed; resuming it on the CPU")
            args.render_device = "cpu"
            subprocess.run(cmd, check=True, cwd=ROOT)
        info[name] = {"count": count, "style": style, "seed": seed, "seconds": round(time.monotonic() - t0, 1)}
    return info


# ------------------------------------------------------------------------------------------------------- size
def step_size(args: argparse.Namespace) -> dict:
    if args.stage1_steps and args.finetune_steps:
        return {"stage1": args.stage1_steps, "finetune": args.finetune_steps, "from": "arguments"}
    probes = [subprocess.Popen([sys.executable, __file__, "_probe", "--seed", str(s), *args.passthrough])
              for s in args.seeds]
    if any(p.wait() for p in probes):
        raise SystemExit("a speed probe failed (see above)")
    per_step = max(json.loads((args.work / f"probe{s}" / "speed.json").read_text())["s_per_step"]
                   for s in args.seeds)
    budget = args.budget_s
    if args.deadline_s:  # what is left of the whole run's time, less what the steps after training need
        budget = min(budget, args.deadline_s - (time.monotonic() - START) - args.reserve_s)
    # per seed: stage 1 (2F steps) + stage 2, final and (b) (F each) = 5F steps, every seed at once
    finetune = int(budget / (5 * per_step))
    if finetune < 50:  # a model of a few dozen steps says nothing; refuse rather than train one
        raise SystemExit(f"only {budget:.0f} s are left for training ({per_step:.3f} s/step): fewer than 50 "
                         "fine-tune steps. Rerun with a larger --deadline-s/--budget-s, or fix the step counts "
                         "with --stage1-steps and --finetune-steps.")
    return {"stage1": 2 * finetune, "finetune": finetune, "s_per_step": round(per_step, 4),
            "budget_s": round(budget, 1), "from": "probe"}


def probe(args: argparse.Namespace, seed: int) -> None:
    from dap.curation.pipeline import stage_train_config
    from dap.train import train

    cfg = curate_config(args, seed, {"stage1": 40, "finetune": 40})
    tc = stage_train_config(cfg, cfg.stage1, None)
    tc.run.log_every, tc.run.ckpt_every, tc.run.progress = 10, 0, False
    out = args.work / f"probe{seed}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    train(tc, out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][-2:]
    s_per_step = tc.data.batch_size / (sum(rates) / len(rates))
    (out / "speed.json").write_text(json.dumps({"s_per_step": s_per_step}))
    log(f"probe seed {seed}: {s_per_step:.3f} s/step at batch {tc.data.batch_size}")


# ------------------------------------------------------------------------------------------------------ seeds
def one_seed(args: argparse.Namespace, seed: int, steps: dict) -> None:
    from dap.curation.pipeline import Pipeline, stage_train_config
    from dap.train import SourceConfig, train

    cfg = curate_config(args, seed, steps)
    work = args.work / f"seed{seed}"
    Pipeline(cfg, work, progress=False).run()
    if not (work / VARIANTS["b"] / "config.json").is_file():  # a kill while saving it leaves the folder only
        pseudo = SourceConfig(kind="pseudo", path=str(work / "pool"), label_stage="stage1", selected_only=False)
        tc = stage_train_config(cfg, cfg.stage2, pseudo, work)
        tc.run.progress = False
        train(tc, work / "runs" / "all_stage1", resume=True)
    log(f"seed {seed}: all variants trained")


def step_seeds(args: argparse.Namespace, steps: dict) -> dict:
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, "_seed", "--seed", str(s), "--stage1-steps",
                               str(steps["stage1"]), "--finetune-steps", str(steps["finetune"]), *args.passthrough])
             for s in args.seeds]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a seed run failed (exit codes {codes}); rerun to resume")
    return {"seeds": args.seeds, "seconds": round(time.monotonic() - t0, 1)}


# ------------------------------------------------------------------------------------------------------- eval
def evaluate(model_dir: str | Path, data: Path, sets: list[str], resolution: tuple[int, int]) -> dict:
    from dap.models import load_model
    from dap.train import ValidationSet, build_source, load_config, setup_distributed, validate
    from dap.train.config import SourceConfig

    d = setup_distributed("auto")
    model = load_model(model_dir).to(d.device).eval()
    tc = load_config(None, [f"data.height={resolution[0]}", f"data.width={resolution[1]}"])
    out = {}
    for name in sets:
        src = SourceConfig(kind="shards", path=str(data / name))
        val = ValidationSet([build_source(src, *resolution)], [src], *resolution, limit=10**9)
        metrics, _ = validate(model, val, tc, d, precision="fp32")  # variants differ by ~1%: no bf16 drift
        out[name] = {k: metrics[k] for k in ("abs_rel", "delta1", "rmse", "mask_iou") if k in metrics}
        out[name]["abs_rel_depth_only"] = depth_only_abs_rel(model, val, resolution, d.device)
    return out


def depth_only_abs_rel(model, val, resolution: tuple[int, int], device) -> float:
    """AbsRel of the depth head alone (no range cap) on pixels with ground truth: separates what the depth head
    learned from what the range head marks out of range (a marked pixel counts as 100 m in `abs_rel`)."""
    import torch

    from dap.evaluation import compute_metrics
    from dap.inference import infer

    rows = []
    with torch.inference_mode():
        for k in range(len(val)):
            s = val[k]
            depth = infer(model, s["rgb"], resolution, device=device, precision="fp32")["depth"][0].cpu()
            if s["valid"].any():
                rows.append(compute_metrics(depth, s["depth"], s["valid"], protocol="metric")["abs_rel"])
    return float(sum(rows) / len(rows))


def _spread(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (max(values) - min(values)) / 2


def step_eval(args: argparse.Namespace) -> dict:
    from dap.inference import default_model_path
    from dap.models import load_model

    sets = ["val_photo", "val_clean"]
    res = tuple(int(v) for v in args.resolution.split("x"))
    rows: dict = {}
    for s in args.seeds:
        for v, rel in VARIANTS.items():
            rows.setdefault(v, {})[s] = evaluate(args.work / f"seed{s}" / rel, args.data, sets, res)
            log(f"eval seed {s} {VARIANT_NAMES[v]}: {rows[v][s]}")
    bundled = default_model_path()
    bres = tuple(load_model(bundled).cfg.default_resolution)
    before = evaluate(bundled, args.data, sets, bres)
    log(f"eval bundled ({bundled.name}, {bres[0]}x{bres[1]}): {before}")
    keys = ("abs_rel", "delta1", "abs_rel_depth_only", "mask_iou")
    summary = {v: {name: {m: _spread([rows[v][s][name][m] for s in args.seeds]) for m in keys}
                   for name in sets} for v in VARIANTS}
    lines = ["| model | " + " | ".join(f"{n[4:]} {m}" for n in sets for m in keys) + " |",
             "|---|" + "---|" * (len(sets) * len(keys))]
    for v in VARIANTS:
        cells = [f"{summary[v][n][m][0]:.3f} ± {summary[v][n][m][1]:.3f}" for n in sets for m in keys]
        lines.append(f"| {VARIANT_NAMES[v]} | " + " | ".join(cells) + " |")
    cells = [f"{before[n][m]:.3f}" for n in sets for m in keys]
    lines.append(f"| before: bundled `{bundled.name}` ({bres[0]}x{bres[1]}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.work / "results.md").write_text(
        f"Mean ± half-range over seeds {args.seeds}; {len(args.seeds)} runs per row, each set "
        f"{min(args.val_count, HELD_OUT[0][3])} "
        f"panoramas at {args.resolution}.\n\n{table}\n")
    result = {"per_seed": rows, "summary": summary, "bundled_before": before}
    (args.work / "results.json").write_text(json.dumps(result, indent=1))
    print(table)
    return {"table": table}


# ------------------------------------------------------------------------------------------------------ sheet
def step_sheet(args: argparse.Namespace) -> dict:
    s = args.seeds[0]
    out = args.work / "real_sheet.jpg"
    models = [str(args.work / f"seed{s}" / VARIANTS[v]) for v in ("a", "d")]
    cmd = [sys.executable, str(ROOT / "experiments" / "real_contact_sheet.py"), "--models", "bundled", *models,
           "--pool", str(args.pool), "--scene", "all", "--limit", "0", "--resolution", args.resolution,
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"the contact sheet failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"
                         f"\n(command: {' '.join(cmd)})")
    print(r.stdout)
    (args.work / "real_sheet.txt").write_text(r.stdout)
    return {"sheet": str(out), "stats": r.stdout}


def step_export(args: argparse.Namespace) -> dict:
    import torch

    from dap.models import load_model
    from dap.models.checkpoint import save_model

    src = args.work / f"seed{args.seeds[0]}" / VARIANTS["d"]
    model = load_model(src)
    info = getattr(model, "checkpoint_info", {}).get("training", {})
    out = save_model(model, args.work / "export" / "dap_small_real", info, dtype=torch.float16)
    size = (out / "model.safetensors").stat().st_size
    log(f"exported {src} -> {out} ({size / 1e6:.1f} MB float16)")
    return {"from": str(src), "to": str(out), "bytes": size}


# ------------------------------------------------------------------------------------------------------- main
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="all", choices=["all", "_probe", "_seed"],
                   help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "default_model", help="output folder")
    p.add_argument("--step", choices=STEPS, help="run only this step (again)")
    p.add_argument("--config", default=str(CONFIG), help="curation config (default: configs/default_model.yaml)")
    p.add_argument("--data", type=Path, default=DATA,
                   help="folder of the rendered sets (train, val_photo, val_clean, val_disc); default "
                        "data/default_model (where configs/default_model.yaml points)")
    p.add_argument("--pool", default=str(POOL), help="folder of unlabeled real panoramas (+ manifest.csv tags)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds, run in parallel")
    p.add_argument("--count", type=int, default=4000, help="labeled synthetic panoramas (A)")
    p.add_argument("--val-count", type=int, default=96, help="panoramas per held-out set")
    p.add_argument("--train-seed", type=int, default=0, help="scene seed of A's first panorama")
    p.add_argument("--resolution", default="256x512", help="render and working resolution HxW")
    p.add_argument("--render-workers", type=positive_int, default=os.cpu_count() or 1,
                   help="`dap synth` processes for the render step")
    p.add_argument("--render-device", default="cpu", help="torch device for `dap synth --device`")
    p.add_argument("--budget-s", type=float, default=900.0,
                   help="wall-clock seconds for all training (both seeds run at once); sizes the step counts")
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="wall-clock seconds for this whole invocation: the training budget shrinks to fit it")
    p.add_argument("--reserve-s", type=float, default=150.0,
                   help="with --deadline-s: seconds kept for labeling, discriminator, evaluation and export")
    p.add_argument("--stage1-steps", type=int, default=0, help="fix stage 1's steps (with --finetune-steps)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fix the fine-tunes' steps (stage 2, final, (b))")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dap train override for every stage, e.g. data.batch_size=8 (repeatable)")
    p.add_argument("--stage1-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dap train override for stage 1 only, e.g. model.init=bundled (repeatable)")
    p.add_argument("--curate-set", action="append", default=[], metavar="KEY=VALUE",
                   help="curation config override, e.g. label.batch_size=4 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.work, args.data = args.work.resolve(), args.data.resolve()
    args.passthrough = ["--work", str(args.work), "--config", args.config, "--pool", args.pool,
                        "--data", str(args.data), *[f"--train-set={x}" for x in args.train_set],
                        *[f"--stage1-set={x}" for x in args.stage1_set],
                        *[f"--curate-set={x}" for x in args.curate_set]]
    return args


def settings(args: argparse.Namespace) -> dict:
    """What the results depend on (not how fast they come: workers, devices, deadlines). The step counts are the
    size step's record, sized again only by --step size."""
    keys = ("config", "data", "pool", "seeds", "count", "val_count", "train_seed", "resolution", "train_set",
            "stage1_set", "curate_set")
    return {k: getattr(args, k) for k in keys}


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.mode == "_probe":
        return probe(args, args.seed)
    if args.mode == "_seed":
        return one_seed(args, args.seed, {"stage1": args.stage1_steps, "finetune": args.finetune_steps})
    state = State(args.work, "data_in_the_loop", STEPS, settings(args))
    for step in STEPS:
        if args.step not in (None, step) or (args.step is None and state.done(step)):
            continue
        if (needs := REQUIRES.get(step)) and not state.done(needs):
            raise SystemExit(f"the {step} step needs the {needs} step's results: run it first (--step {needs}, or "
                             "without --step for every step)")
        t0 = time.monotonic()
        log(f"step {step}")
        if step == "seeds":
            info = step_seeds(args, state.data["size"])
        else:
            info = globals()[f"step_{step}"](args)
        info["seconds"] = round(time.monotonic() - t0, 1)
        state.mark(step, info)
        log(f"step {step} done ({info['seconds']} s)")


if __name__ == "__main__":
    from script_errors import run

    run(main)
