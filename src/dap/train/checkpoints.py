"""The run folder: training checkpoints (list, load, save, prune), RNG states, the checks that keep two runs
from mixing in one folder, and metrics.jsonl (append-only, tolerant of a line cut off by a kill)."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from dap.errors import CheckpointError, ModelChangedError, RunExistsError
from dap.models.dap import INFERENCE_SETTINGS
from dap.train.distributed import Dist, barrier

CHECKPOINT_VERSION = 1


def _rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain Python data (gatherable across ranks, weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in <out>/checkpoints, by step, oldest first. Only names `dap train` writes count
    (step_<digits>.pt; its temporaries start with '.'): a user's copy (step_backup.pt) is neither resumed from nor
    pruned, and step_2.pt sorts before step_00000004.pt."""
    found = [p for p in (Path(out) / "checkpoints").glob("step_*.pt") if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(path.stem.removeprefix("step_"))


def check_run_folder(out: Path, resume: bool) -> None:
    """A fresh run never writes into a folder that holds another run: it would mix metrics and configs, and
    pruning would delete the new run's checkpoints in favour of the old run's higher steps."""
    if not out.exists():
        return
    found = [name for name in ("checkpoints", "metrics.jsonl", "config.yaml", "final", "tb") if (out / name).exists()]
    if resume and (out / "final").exists() and not list_checkpoints(out):
        # --resume would start over and replace the trained model (a run killed before its first checkpoint has
        # none: it starts over as it should)
        raise RunExistsError(
            f"{out} holds a trained model (final/) but no checkpoint to resume its run from (checkpoints/ is missing "
            "or empty); pass another --out to train again, or delete the folder to start over")
    if found and not resume:
        raise RunExistsError(
            f"{out} already holds a training run ({', '.join(found)}); continue it with --resume, or pass another "
            "--out (delete the folder to start over)")


def read_metrics(path: Path) -> list[dict]:
    """Rows of metrics.jsonl; a line cut off by a kill (only ever the last) is dropped, not an error."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"dap train: dropping a cut-off line of {path}", file=sys.stderr)
    return rows


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the rows up to the checkpoint we continue from (later steps are redone and logged again)."""
    from dap.io import atomic_write

    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if isinstance(r, dict) and r.get("step", math.inf) <= last_step]
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    changes = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            changes.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return changes


RESUME_KEYS = ("step", "model", "optimizer", "scheduler", "data", "rng")  # what resuming reads


def load_checkpoint(path: str | os.PathLike, needs: tuple[str, ...] = ("step", "model")) -> dict:
    """A training checkpoint's contents; `needs`: the entries the caller reads (resuming: RESUME_KEYS)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(e).__name__}: the file is damaged or "
                              "not a checkpoint). Delete it to resume from the "
                              "previous one.") from e
    missing = [k for k in needs if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of dap train (it lacks {', '.join(missing)}). "
                              "Move it out of the checkpoints folder to resume from the previous one.")
    return ckpt


def save_checkpoint(out: Path, step: int, d: Dist, keep_last: int, state: Callable[[], dict],
                    keep_step: int | None = None) -> None:
    """<out>/checkpoints/step_XXXXXXXX.pt from rank 0: `state()` (model, optimizer, ...) plus every rank's RNG
    state, written atomically; then this run's older checkpoints beyond `keep_last` are deleted, but not the one of
    `keep_step`. All ranks call it."""
    from dap.io import atomic_write

    rngs: list = [None] * d.world
    if d.world > 1:
        dist.all_gather_object(rngs, _rng_state())
    else:
        rngs = [_rng_state()]
    if d.main:
        path = out / "checkpoints" / f"step_{step:08d}.pt"
        with atomic_write(path) as tmp:
            try:
                torch.save({"version": CHECKPOINT_VERSION, "step": step, **state(), "rng": rngs}, tmp)
            except RuntimeError as e:  # torch's zip writer says a failed write (disk full, file size limit) so
                if "unexpected pos" in str(e):  # a short write: its words for what a full disk does
                    raise OSError(errno.ENOSPC, "no space left on device", str(path)) from e
                raise OSError(errno.EIO, f"writing the checkpoint failed: {e}", str(path)) from e
        # Only this run's checkpoints (steps up to now) are pruned; never one from a later step.
        ours = [p for p in list_checkpoints(out) if checkpoint_step(p) <= step and checkpoint_step(p) != keep_step]
        for old in ours[:-max(1, keep_last)]:
            old.unlink(missing_ok=True)
    barrier(d)


def prepare_run_folder(out: Path, config: dict, start: int) -> None:
    """Rank 0, before the first step: the folder, no stale temporaries, metrics up to `start`, config.yaml."""
    from dap.io import atomic_write, remove_temporaries

    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out / "checkpoints")  # checkpoint writes killed mid-way
    trim_metrics(out / "metrics.jsonl", start)
    with atomic_write(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))


def append_metrics(path: Path, step: int, row: dict) -> None:
    """One row of metrics.jsonl; a value that is not a finite number (a mask IoU with nothing out of range: NaN) is
    null, as JSON has it (Python's NaN is not JSON: jq and JavaScript refuse the line)."""
    row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in {"step": step, **row}.items()}
    with path.open("a") as f:
        f.write(json.dumps(row, allow_nan=False) + "\n")


def resume_checkpoint(out: Path, config: dict, d: Dist) -> tuple[Path, dict] | tuple[None, None]:
    """The newest checkpoint of `out` and its contents, or (None, None). Refuses one whose model section differs
    from `config`'s; other changes are listed once on stderr."""
    existing = list_checkpoints(out)
    if not existing:
        return None, None
    ckpt = load_checkpoint(existing[-1], needs=RESUME_KEYS)
    changes = _config_changes(ckpt.get("config", {}), config)
    settings = tuple(f"model.overrides.{k}:" for k in INFERENCE_SETTINGS)  # not architecture: the weights still fit
    if "model_config" in ckpt:  # the network is built from the architecture it records: model.init (where the run
        settings += ("model.init:",)  # started, which may have moved since) is not read again
    if model_changes := [c for c in changes if c.startswith("model.") and not c.startswith(settings)]:
        raise ModelChangedError(
            f"cannot resume {existing[-1]}: its model differs from the config ({'; '.join(model_changes)}); resume "
            f"with the run's own config (<out>/config.yaml), or start a new --out with model.init={existing[-1]}",
            model_changes)
    if changes and d.main:
        print(f"dap train: resuming {out} with a changed config: {'; '.join(changes)}", file=sys.stderr)
    return existing[-1], ckpt
