"""The training loop of `dap train`: the model and optimiser, the LR schedule and EMA, validation, and `train`.

One process:  `dap train --config configs/tiny_cpu.yaml --out runs/tiny`
DDP:          `torchrun --nproc-per-node N -m dap.train --config ... --out ...` (gloo on CPU, nccl on GPU)

Exact resumption: the samples a rank sees at step s, their augmentation draws and the step's torch seed are
pure functions of (run.seed, s, rank, world size, batch size); a checkpoint therefore only needs the step
(plus model, optimiser, scheduler, EMA and RNG states) to continue as if never stopped. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from dap.errors import CheckpointError, ConfigError, DapError, DatasetLayoutError, DivergedError
from dap.inference import DEFAULT_SEAM_PAD, apply_range_mask, drop_small_range_regions, infer, normalize_image
from dap.io import folder_lock
from dap.losses import DapLoss
from dap.models.dap import INFERENCE_SETTINGS
from dap.train.checkpoints import (
    _set_rng_state,
    append_metrics,
    check_run_folder,
    prepare_run_folder,
    resume_checkpoint,
    save_checkpoint,
)
from dap.train.config import UNSPLIT_KINDS, SourceConfig, TrainConfig, check_config
from dap.train.data import (
    MixtureDataset,
    MixtureSampler,
    ValidationSet,
    build_source,
    jitter_size,
    resize_sample,
    seed_of,
)
from dap.train.distributed import (
    Dist,
    any_rank,
    barrier,
    loader_batches,
    quiet_worker,
    reduce_mean,
    setup_distributed,
)

# A logged window in which training waited this share of its time for the next batch is loader-bound: say so once.
LOADER_BOUND_SHARE = 0.3


# ====================================================================================== LR and EMA
def lr_factor(step: int, steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """LR multiplier for the update made at `step` (0-based): linear warm-up, then cosine/linear/constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t
    return min_ratio + (1 - min_ratio) * shape


def ema_decay_at(num_averaged: int, decay: float) -> float:
    """EMA decay after `num_averaged` updates, ramped up from 0.1 so the random initial weights do not linger
    (with a fixed 0.999 they would still weigh 0.999^n, 9% after 2400 steps)."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged))


def ema_update(decay: float):
    def update(ema_param: torch.Tensor, param: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = ema_decay_at(int(num_averaged), decay)
        return ema_param + (param - ema_param) * (1.0 - d)

    return update


# ======================================================================================== model

def build_model(cfg: TrainConfig, *, quiet: bool = False):
    """The network to train: random (seeded by run.seed) for init=scratch, the same with the backbone copied from
    a DINOv3 checkpoint (Meta's .pth) for init=<that file>, else loaded from model.init. A new network's
    default_resolution is the training size (data.height x data.width) unless model.overrides sets it.

    A loaded model keeps the checkpoint's architecture: model.overrides that differ from it are refused
    (they could not be applied), except INFERENCE_SETTINGS (the working resolution it is fine-tuned for, the
    range threshold), and a model.name other than the checkpoint's gets one warning (unless quiet).
    """
    from dap.models import DapConfig, create_model, load_model
    from dap.models.checkpoint import init_backbone_from_dinov3, is_dinov3_checkpoint

    init = cfg.model.init or "scratch"
    if init == "scratch" or is_dinov3_checkpoint(init):
        torch.manual_seed(seed_of(cfg.run.seed, "init"))  # identical on every rank (DDP also broadcasts)
        overrides = copy.deepcopy(cfg.model.overrides)
        # a new model works at the size it learned at, unless told (the architectures' default is the paper's)
        overrides.setdefault("default_resolution", (cfg.data.height, cfg.data.width))
        with _overrides_checked():
            model = create_model(cfg.model.name, **overrides)
        if init != "scratch":
            init_backbone_from_dinov3(model, init)
        return model
    if init == "bundled":
        from dap.inference import default_model_path

        init = default_model_path()
    model = load_model(init)  # our directory or the official model.pth; the variant comes from the file
    _check_init_matches(cfg, model.cfg, init, quiet)
    settings = {k: v for k, v in cfg.model.overrides.items() if k in INFERENCE_SETTINGS}
    if settings:  # not architecture: fine-tuning at a new resolution sets it, likewise the range threshold
        with _overrides_checked():
            model.cfg = DapConfig.from_dict({**model.cfg.to_dict(), **settings})
    return model


@contextlib.contextmanager
def _overrides_checked():
    """DapConfig refuses bad values (a depth_scale of 0, one latitude_scale factor); from model.overrides that is
    the user's config, reported as such rather than as a traceback."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.overrides: {e}") from None


def _check_init_matches(cfg: TrainConfig, loaded: Any, init: Any, quiet: bool) -> None:
    have = loaded.to_dict()
    if unknown := sorted(set(cfg.model.overrides) - set(have)):  # a typo, not a change of architecture
        raise ConfigError(f"model.overrides: unknown keys {unknown}; valid keys: {sorted(have)}")
    conflicts = [f"{k}: {v!r} (the checkpoint has {have[k]!r})" for k, v in cfg.model.overrides.items()
                 if k not in INFERENCE_SETTINGS and not _agrees(v, have[k])]
    if conflicts:
        raise ConfigError(f"model.overrides cannot change the model loaded from model.init={init}: "
                          f"{'; '.join(conflicts)}; remove them (the checkpoint decides the architecture) or "
                          "train from scratch")
    if cfg.model.name != loaded.name and not quiet:
        print(f"dap train: model.name {cfg.model.name!r} is ignored: model.init={init} is a {loaded.name} "
              f"(set model.name: {loaded.name} to silence this)", file=sys.stderr)


def _agrees(override: Any, have: Any) -> bool:
    """An override agrees with the checkpoint's value; a partial mapping (vit: {depth: 8}) only in its keys."""
    if isinstance(override, dict) and isinstance(have, dict):
        return all(k in have and _agrees(v, have[k]) for k, v in override.items())
    return _plain(override) == _plain(have)


def _plain(v: Any) -> Any:
    """Tuples as lists (YAML has no tuples), so a config value compares equal to the checkpoint's."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, list | tuple) else v


def _autocast(device: torch.device, amp: str):
    # auto: bf16 on GPUs only (on most CPUs bf16 is emulated and slower); bf16 asked for: wherever it runs
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# =================================================================================== validation
@torch.no_grad()
def validate(model: torch.nn.Module, val: ValidationSet, cfg: TrainConfig, d: Dist, *,
             seam_pad: float = DEFAULT_SEAM_PAD, precision: str = "fp32") -> tuple[dict, np.ndarray | None]:
    """Metric-protocol depth metrics (dap.evaluation) and range-mask IoU over the validation set, split
    across ranks; returns (per-image means, rank 0's first image panel, `dap.evaluation.depth_panel`).
    Predictions take `dap eval`'s path (`dap.inference.infer`: seam padding, `precision`, then the range
    cap), so the depth metrics are those `dap eval` reports for the same model and samples where they are stored at
    the training resolution (others are resized to it first). fp32 as `dap eval`'s
    default: "auto" was bf16 on a GPU and, on a CPU, by a speed measured in each process (sittings of one run, or
    its ranks, could validate differently), and 1.4% off `dap eval`'s AbsRel on a tiny model."""
    from dap.errors import NoValidDepthError
    from dap.evaluation import aggregate, compute_metrics, depth_panel

    was_training = model.training
    model.eval()
    rows, panel, no_depth = [], None, []
    for k in range(d.rank, len(val), d.world):
        s = val[k]
        out = infer(model, s["rgb"], (cfg.data.height, cfg.data.width), seam_pad=seam_pad, device=d.device,
                    precision=precision)
        prob = drop_small_range_regions(out["out_of_range_prob"][0].cpu(), model.cfg.range_threshold,
                                        model.cfg.range_min_region)
        masked = prob >= model.cfg.range_threshold
        pred = apply_range_mask(out["depth"][0].cpu(), masked, model.cfg.max_depth)
        gt, valid, oor = s["depth"], s["valid"], s["out_of_range"]
        row = {}
        try:
            row.update(compute_metrics(pred, gt, valid, protocol="metric", min_depth=1e-3,
                                       max_depth=cfg.loss.max_depth))
        except NoValidDepthError:
            no_depth.append(val.items[k][0])  # scored for the range mask only
        target = oor | (valid & (gt > cfg.loss.mask_threshold))
        known = valid | oor
        hit = masked & known
        union = (hit | target).sum().item()
        row["mask_iou"] = (hit & target).sum().item() / union if union else float("nan")
        n_known = known.sum().item()  # none: no accuracy to give (NaN, left out of the mean), not 0
        row["mask_acc"] = ((hit == target) & known).sum().item() / n_known if n_known else float("nan")
        rows.append(row)
        if panel is None and d.main:
            panel = depth_panel(s["rgb"].permute(1, 2, 0).numpy(), torch.where(valid, gt, 0)[0].numpy(),
                                pred[0].numpy(), max_depth=cfg.loss.max_depth, prob=prob[0].numpy())
    if d.world > 1:
        gathered: list = [None] * d.world
        dist.all_gather_object(gathered, (rows, no_depth))
        rows = [r for part, _ in gathered for r in part]
        no_depth = [j for _, part in gathered for j in part]
    model.train(was_training)
    keys = sorted({k for r in rows for k in r})
    rows = [{k: r.get(k, float("nan")) for k in keys} for r in rows]
    metrics = aggregate(rows)
    metrics["no_valid_depth"] = len(no_depth)  # images left out of the depth metrics
    if no_depth and d.main and not val.reported_no_depth:
        val.reported_no_depth = True
        where = "; ".join(f"{no_depth.count(j)} from data.val[{j}] ({_describe(val.configs[j])})"
                          for j in sorted(set(no_depth)))
        print(f"dap train: {len(no_depth)} of {len(val)} validation images have no valid depth in "
              f"(0, {cfg.loss.max_depth:g}] m and count for the range mask only ({where}); logged as "
              "val/no_valid_depth", file=sys.stderr)
    return metrics, panel


def _describe(src: SourceConfig) -> str:
    return f"kind={src.kind}" + (f", path={src.path}" if src.path else f", seed={src.seed}")


# ====================================================================================== trainer
@dataclass
class TrainResult:
    step: int  # last completed step
    finished: bool  # reached run.steps (final/ written) rather than stopped early
    history: list[dict]  # the logged rows of this process's run
    model: torch.nn.Module  # the trained network (EMA weights when EMA is on), unwrapped
    out: Path


@dataclass
class _State:
    """What a checkpoint restores besides the data position: the network, optimiser, LR schedule and EMA."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.nn.Module | None
    params: list[torch.nn.Parameter]  # the trained ones

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation and final/ use: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model


def keep_freed_memory(environ=os.environ) -> bool:
    """On Linux with glibc, serve every allocation from the heap (never mmap) and do not trim the heap, so each
    step's large activations reuse the memory the previous step freed instead of mapping fresh pages that the
    kernel must fault in and zero: dap_tiny training steps at 256x512, batch 8, 7.83 -> 6.30 s on two cores,
    system CPU 1.76 -> 0.11 s a step (benchmarks/train_step.py). Left alone when the user sets glibc's MALLOC_*
    variables themselves, or where there is no glibc. Returns whether it applied."""
    import ctypes
    import ctypes.util

    if sys.platform != "linux" or any(k.startswith("MALLOC_") for k in environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    time_limit_min: float | None = None,
) -> TrainResult:
    """Train (or continue training) into `out`: checkpoints/, tb/ (TensorBoard), metrics.jsonl, config.yaml
    and, when run.steps is reached, final/ (our model format).

    resume: continue from the newest checkpoint in out/checkpoints (fresh start when there is none).
    stop_at / time_limit_min: checkpoint and return early at that step / after that many minutes (to split a
    run across sittings; continue with resume=True).
    """
    if not isinstance(cfg, TrainConfig):  # a path or a dict: "'str' object has no attribute 'data'"
        raise ConfigError(f"train() takes a TrainConfig, got {type(cfg).__name__}; load one with "
                          "dap.train.load_config('config.yaml', ['run.steps=100'])")
    check_config(cfg)  # a config built or edited in Python, as load_config checks a file's (before any folder)
    out = Path(out)
    keep_freed_memory()
    d = setup_distributed(cfg.run.device)
    try:  # rank 0 holds the run folder: a second `dap train` into it (resuming or not) is refused, not mixed in
        with folder_lock(out, "dap train") if d.main else contextlib.nullcontext():
            return _train(cfg, out, d, resume, stop_at, time_limit_min)
    finally:
        if d.initialised_here:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, d: Dist, resume: bool, stop_at, time_limit_min) -> TrainResult:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from tqdm import tqdm

    run = cfg.run
    check_run_folder(out, resume)
    ckpt_path, ckpt = resume_checkpoint(out, cfg.to_dict(), d) if resume else (None, None)
    start = int(ckpt["step"]) if ckpt else 0
    if start > run.steps:  # else it would report the run finished and write final/ from the later checkpoint
        raise ConfigError(f"run.steps {run.steps} is below step {start}, which {ckpt_path} reached; give run.steps "
                          f"above it to continue this run, or start a new one from it with model.init={ckpt_path}")
    final = out / "final"
    if ckpt and start == run.steps and (final / "config.json").is_file():
        # Nothing to train: rewriting final/ and config.yaml would record settings that were never used
        if d.main:
            print(f"dap train: {out} already reached run.steps={run.steps}; nothing trained, no setting changed (raise "
                  "run.steps to continue it, e.g. --set run.steps=N)", file=sys.stderr)
        barrier(d)
        from dap.models import load_model

        return TrainResult(step=start, finished=True, history=[], model=load_model(final), out=out)
    barrier(d)  # every rank has checked the folder before rank 0 writes into it
    # The step of an earlier end this run extends: its checkpoint is the finished model until the new end, kept
    # however many checkpoints come after it (recorded in each checkpoint: a resumed extension keeps it too)
    finished_step = (start if final.exists() else ckpt.get("finished_step")) if ckpt else None
    if ckpt and d.main and final.exists():
        # an extended run: the folder loads final/ before its checkpoints, and this final/ is the model of step
        # `start`, which the step-`start` checkpoint holds too (always saved at run.steps)
        shutil.rmtree(final)
        print(f"dap train: removed {final} (step {start}): the run goes on to step {run.steps}, and until it gets "
              f"there the folder's model is its newest checkpoint; step_{start:08d}.pt is kept until the run reaches "
              f"step {run.steps}", file=sys.stderr)

    st = _build_state(cfg, d, ckpt.get("model_config") if ckpt else None)
    if ckpt:
        _restore(st, ckpt, ckpt_path, cfg, d)
    # static_graph: the DPT heads hold a block the forward never uses (refinenet4.resConfUnit1, kept for the
    # official layout); a static graph lets DDP skip it without find_unused_parameters' per-step graph walk.
    train_model = DDP(st.model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                      static_graph=True) if d.world > 1 else st.model
    loss_fn = DapLoss(cfg.loss)
    loader, val = _build_data(cfg, d, start)
    sizes = [len(s) for s in loader.dataset.sources]  # recorded in each checkpoint: a resume reads the same data?
    for text in _setting_notes(cfg, st.model.cfg, loader.dataset, val) if d.main else []:
        print(f"dap train: note: {text}", file=sys.stderr)
    if ckpt and d.main and (before := ckpt["data"].get("source_sizes")) is not None and before != sizes:
        changed = "; ".join(f"data.sources[{i}] {a} -> {b}" for i, (a, b) in enumerate(zip(before, sizes, strict=False))
                            if a != b) or f"{len(before)} -> {len(sizes)} sources"
        print(f"dap train: the sources hold other numbers of panoramas than when {ckpt_path.name} was written "
              f"({changed}): the run goes on, but draws other samples than the uninterrupted run would",
              file=sys.stderr)
    log = _RunLog(out, cfg, d, start)

    bar = tqdm(total=run.steps, initial=start, disable=not (d.main and run.progress), desc="train",
               dynamic_ncols=True)
    history: list[dict] = []
    t_start, t_log, n_log, t_extra = time.monotonic(), time.monotonic(), 0, 0.0
    t_wait, t_asked, warned = 0.0, time.monotonic(), False  # time spent waiting for the loader's next batch
    step = start
    end = run.steps if stop_at is None else min(run.steps, max(stop_at, start))
    with loader_batches(loader) as batches:  # its workers stopped also when a step raises
        for step_idx, batch in zip(range(start, end), batches, strict=False):
            t_wait += time.monotonic() - t_asked
            loss, terms, grad_norm, lrs = _train_step(st, train_model, loss_fn, batch, step_idx, cfg, d)
            step = step_idx + 1
            n_log += 1
            bar.update(1)

            if step % run.log_every == 0 or step == run.steps:
                row = reduce_mean({"loss/total": loss.item(), **{f"loss/{k}": v.item() for k, v in terms.items()},
                                   "grad_norm": float(grad_norm)}, d)
                now = time.monotonic()
                row.update(lrs)
                window = max(now - t_log - t_extra, 1e-9)
                row["samples_per_s"] = n_log * d.world * cfg.data.batch_size / window
                row["data_wait_share"] = min(1.0, t_wait / window)  # this rank's
                t_log, n_log, t_extra, t_wait = now, 0, 0.0, 0.0
                history.append({"step": step, **row})
                log(step, row)
                # the first window holds the loader workers' start-up
                if len(history) > 1 and row["data_wait_share"] > LOADER_BOUND_SHARE and not warned and d.main:
                    warned = True
                    tqdm.write(f"dap train: the data loader kept training waiting {row['data_wait_share']:.0%} of the "
                               f"time up to step {step} (data.num_workers={cfg.data.num_workers}, "
                               f"{os.cpu_count()} CPU cores here): raise data.num_workers if cores are free, or "
                               "lower the training resolution", file=sys.stderr)
                bar.set_postfix(loss=f"{row['loss/total']:.4f}")

            t0 = time.monotonic()  # validation and checkpoints do not count against the training throughput
            if val is not None and (step % run.val_every == 0 or step == run.steps):
                metrics, panel = validate(st.eval_model, val, cfg, d)
                show = run.image_every and (step % run.image_every == 0 or step == run.steps)
                log(step, {f"val/{k}": v for k, v in metrics.items()}, panel if show else None)

            out_of_time = time_limit_min is not None and any_rank(time.monotonic() - t_start > 60 * time_limit_min, d)
            stopped = step == end < run.steps or out_of_time  # every rank stops at the same step
            if (run.ckpt_every and step % run.ckpt_every == 0) or step == run.steps or stopped:
                keep = finished_step if step < run.steps else None
                save_checkpoint(out, step, d, run.keep_last,
                                functools.partial(_checkpoint_state, st, cfg, d, step, keep, sizes), keep_step=keep)
            t_extra += time.monotonic() - t0
            if stopped:
                break
            t_asked = time.monotonic()
    bar.close()

    finished = step >= run.steps
    if finished and d.main:
        from dap.models import save_model

        save_model(st.eval_model, out / "final", training={
            "trainer": "dap.train", "steps": step, "world_size": d.world, "config": cfg.to_dict(),
            "ema": st.ema is not None})
    log.close()
    barrier(d)
    return TrainResult(step=step, finished=finished, history=history, model=st.eval_model, out=out)


def _build_state(cfg: TrainConfig, d: Dist, model_config: dict | None = None) -> _State:
    """The model (on d.device, training mode), Adam(W) with the backbone and head LR groups, the LR schedule
    and the EMA. `model_config`: a resumed checkpoint's architecture, built as it is (its weights are loaded next)
    rather than from model.init, which may have moved since the run started."""
    from torch.optim.swa_utils import AveragedModel

    from dap.models import DAP, DapConfig

    run, oc = cfg.run, cfg.optim
    if model_config is not None:
        settings = {k: v for k, v in cfg.model.overrides.items() if k in INFERENCE_SETTINGS}  # may change on resume
        with _overrides_checked():
            model = DAP(DapConfig.from_dict({**model_config, **settings}))
    else:
        model = build_model(cfg, quiet=not d.main)
    model = model.to(d.device).train()
    if oc.freeze_backbone:
        model.backbone.requires_grad_(False)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": oc.lr_backbone,
         "name": "backbone"},
        {"params": [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad],
         "lr": oc.lr_head, "name": "head"},
    ]
    groups = [g for g in groups if g["params"]]
    opt_cls = torch.optim.AdamW if oc.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, betas=tuple(oc.betas), weight_decay=oc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, run.steps, oc.warmup_steps, oc.schedule, oc.min_lr_ratio))
    ema = AveragedModel(model, avg_fn=ema_update(oc.ema_decay), use_buffers=True) if oc.ema_decay > 0 else None
    return _State(model, optimizer, scheduler, ema, [p for g in groups for p in g["params"]])


def _restore(st: _State, ckpt: dict, path: Path, cfg: TrainConfig, d: Dist) -> None:
    """Load a checkpoint's states; say on stderr (once, rank 0) what a changed world or batch size costs."""
    st.model.load_state_dict(ckpt["model"])
    if len(ckpt["optimizer"]["param_groups"]) != len(st.optimizer.param_groups):
        raise CheckpointError(f"{path} was trained with {len(ckpt['optimizer']['param_groups'])} parameter groups, "
                              f"this config makes {len(st.optimizer.param_groups)} (optim.freeze_backbone changed?); "
                              f"resume with the config it was made with, or start a new run from it with model.init="
                              f"{path}")
    # The optimiser's and the schedule's states bring back the learning rates, weight decay and betas they were
    # made with; the config may have changed them (a finished run extended at another LR): its values win, and
    # this step's LR is the current schedule's. Unchanged, they are the same numbers, so resume stays exact.
    hyper = {"weight_decay": cfg.optim.weight_decay, "betas": tuple(cfg.optim.betas)}
    peak = {"backbone": cfg.optim.lr_backbone, "head": cfg.optim.lr_head}
    base = [peak[g["name"]] for g in st.optimizer.param_groups]
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.scheduler.load_state_dict(ckpt["scheduler"])
    st.scheduler.base_lrs = base
    for group, lr, factor in zip(st.optimizer.param_groups, base, st.scheduler.lr_lambdas, strict=True):
        group.update(hyper, initial_lr=lr, lr=lr * factor(st.scheduler.last_epoch))
    st.scheduler._last_lr = [g["lr"] for g in st.optimizer.param_groups]  # what get_last_lr() reports
    if st.ema is not None and ckpt.get("ema") is not None:
        st.ema.load_state_dict(ckpt["ema"])
    data_pos = ckpt["data"]
    if (data_pos["world_size"], data_pos["batch_size"]) != (d.world, cfg.data.batch_size) and d.main:
        print(f"dap train: resuming with world size {d.world} x batch {cfg.data.batch_size} instead of "
              f"{data_pos['world_size']} x {data_pos['batch_size']}: the data order differs from the "
              "uninterrupted run", file=sys.stderr)
    rng = ckpt["rng"]
    if len(rng) == d.world:
        _set_rng_state(rng[d.rank])
    elif d.main:
        print(f"dap train: {path} holds RNG states for {len(rng)} processes, this run has {d.world}: "
              "they are not restored; the run continues but is not bit-exact with an uninterrupted one",
              file=sys.stderr)


def _checkpoint_state(st: _State, cfg: TrainConfig, d: Dist, step: int, finished_step: int | None,
                      source_sizes: list[int]) -> dict:
    return {
        "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(), "ema": st.ema.state_dict() if st.ema is not None else None,
        "data": {"seed": cfg.run.seed, "step": step, "samples_seen": step * d.world * cfg.data.batch_size,
                 "world_size": d.world, "batch_size": cfg.data.batch_size, "source_sizes": source_sizes},
        "config": cfg.to_dict(),
        "model_config": st.model.cfg.to_dict(),  # what load_model builds the network from (model.init may be gone)
        **({"finished_step": finished_step} if finished_step is not None else {}),
    }


def _build_data(cfg: TrainConfig, d: Dist, start: int) -> tuple[DataLoader, ValidationSet | None]:
    """This rank's loader for steps [start, run.steps) and the validation set (None when validation is off)."""
    sources = _sources(cfg.data.sources, "data.sources", cfg)
    sampler = MixtureSampler([len(s) for s in sources], [s.ratio for s in cfg.data.sources], seed=cfg.run.seed,
                             rank=d.rank, world=d.world, batch=cfg.data.batch_size, start=start,
                             steps=cfg.run.steps)
    loader = DataLoader(MixtureDataset(sources, cfg.data.sources, cfg.data),
                        batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=d.device.type == "cuda", worker_init_fn=quiet_worker)
    val = None
    if cfg.data.val and cfg.run.val_every:
        val_sources = _sources(cfg.data.val, "data.val", cfg)
        val = ValidationSet(val_sources, cfg.data.val, cfg.data.height, cfg.data.width, cfg.data.val_samples)
        val.check()
    return loader, val


def _setting_notes(cfg: TrainConfig, model_cfg, train_data: MixtureDataset, val: ValidationSet | None) -> list[str]:
    """Settings that run but train or measure something else than meant. The overlap of validation and training
    data is judged on the splits the built sources read: a folder without splits reads all of it, whatever its
    configured split."""
    def splits(data) -> list[str]:
        return [getattr(ds, "split", c.split) for ds, c in zip(data.sources, data.configs, strict=True)]

    train_contents = [_contents(s) for s in train_data.sources]  # for both checks: a folder's files, listed once
    notes = validation_overlaps(cfg, (splits(train_data), splits(val)),
                                (train_contents, [_contents(s) for s in val.sources])) if val is not None else []
    notes += _repeated_sources(cfg, train_contents)
    for where, data in (("data.sources", train_data), ("data.val", val)):
        for i, (ds, c) in enumerate(zip(data.sources, data.configs, strict=True) if data is not None else []):
            if c.kind in ("folder", "dataset") and (problem := depth_unit_problem(ds, cfg.loss.max_depth)):
                notes.append(f"{where}[{i}] ({c.kind} {c.path}): {problem}")
    if val is not None:
        scored = {j for j, _ in val.items}
        for j, c in enumerate(val.configs):
            if j not in scored:
                notes.append(f"data.val[{j}] ({c.kind}{f' {c.path}' if c.path else ''}) is not validated on: "
                             f"data.val_samples ({cfg.data.val_samples}) are all taken from the sources before it; "
                             f"raise data.val_samples to {sum(len(s) for s in val.sources)} to score them all")
    off = [f"data.{name}" for name, on in (("rotate", cfg.data.rotate), ("exposure", cfg.data.exposure > 1),
                                             ("highlights", cfg.data.highlights > 0),
                                             ("vertical_gain", cfg.data.vertical_gain > 1)) if on]
    if off and not cfg.data.augment:
        notes.append(f"data.augment is false, which also turns off {', '.join(off)}: set data.augment true to train "
                     "with them")
    reach = model_cfg.max_depth * model_cfg.depth_scale  # the depth head's output is capped there
    if cfg.loss.max_depth > 1.1 * reach:
        notes.append(f"loss.max_depth is {cfg.loss.max_depth:g} m but the model outputs at most {reach:g} m (its "
                     "max_depth x depth_scale): ground truth between the two is asked of it and cannot be reached; "
                     "set them alike (loss.max_depth, or model.overrides.max_depth for a new model)")
    return notes


def depth_unit_problem(data, max_depth: float, count: int = 8) -> str | None:
    """What the ground truth of `count` of a source's panoramas, spread over it, says about its unit and content;
    None where it reads as metres. Depth in millimetres is all beyond the loss's cap: the depth losses learn nothing
    from it and the range head learns it as out of range; a panorama with no valid depth trains nothing but takes
    its share of the batches. Checked panorama by panorama: a source whose first ones are in metres and the rest in
    millimetres passed."""
    from dap.evaluation import other_unit

    n = min(count, len(data))
    picks = sorted({round(k * (len(data) - 1) / max(n - 1, 1)) for k in range(n)})
    units = []
    for i in picks:
        depth = np.asarray(data[i]["depth"], np.float32)
        units.append(other_unit(depth, max_depth) if (np.isfinite(depth) & (depth > 0)).any() else "none")
    of = f"of {len(picks)} of its panoramas checked (spread over it)"
    problems = [
        f"{far} {of} have over 90% of their ground truth beyond loss.max_depth {max_depth:g} m: if its depth is not "
        "in metres, give its unit (a folder manifest's metres_per_unit); the depth losses learn nothing from them and "
        "the range head learns them as out of range" if (far := units.count("far")) else "",
        f"{near} {of} have over 90% of their ground truth nearer than 0.1 m: check its unit (a folder manifest's "
        "metres_per_unit)" if (near := units.count("near")) else "",
        f"{none} {of} have no valid depth (all 0, NaN, inf or negative): they train nothing and take their share of "
        "the batches" if (none := units.count("none")) else "",
    ]
    return "; ".join(p for p in problems if p) or None


def _contents(data) -> set | None:
    """What a built source's panoramas are, where it can be told: the real paths of the files it lists (a folder, a
    benchmark), or the (seed, kind) of the scenes it renders or holds rendered (synthetic, shards); else None."""
    from dap.data.shards import ShardDataset
    from dap.data.synthetic import kind_for_seed
    from dap.train.data import RenderedSynthetic

    if isinstance(data, RenderedSynthetic):
        return {(s, kind_for_seed(s, data.kind)) for s in range(data.seed, data.seed + data.size)}
    if isinstance(data, ShardDataset):
        try:  # panorama i of a dap synth folder renders its seed + i
            seed = int(json.loads((data.root / "synth_config.json").read_text())["seed"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return {(seed + int(r["key"]), r["kind"]) for r in data.rows}
    items = getattr(data, "items", None)
    if not items or not hasattr(items[0], "rgb"):
        return None
    return {os.path.realpath(it.rgb) for it in items}


def _repeated_sources(cfg: TrainConfig, files: list[set | None]) -> list[str]:
    """Training sources that list the same panoramas (`files`: their `_contents`): each is drawn at its ratio, so
    together at their sum."""
    return [f"data.sources[{a}] and data.sources[{b}] ({cfg.data.sources[b].path}) hold {n} of the same panoramas "
            "(files, or scenes of the same seeds): they are drawn at the sum of their ratios; give each once"
            for a in range(len(files)) for b in range(a + 1, len(files))
            if files[a] is not None and files[b] is not None and (n := len(files[a] & files[b]))]


def validation_overlaps(cfg: TrainConfig, splits: tuple | None = None, contents: tuple | None = None) -> list[str]:
    """The validation sources that read training data: the same files (kind, path, dataset, split) or, for the
    generated kinds, overlapping seed ranges. A source's split is "train" unless given, in data.val too; `splits`
    ([training], [validation]) are those the built sources read, where they differ from the configured ones.
    `contents` ([training], [validation] `_contents` of the built sources): sources whose panoramas can be told are
    compared by them, not by their folders (a val.csv beside a train.csv in one folder; a manifest elsewhere naming
    training files; a dap synth folder of the training seeds, rendered again into another folder)."""
    train_splits, val_splits = splits or ([s.split for s in cfg.data.sources], [s.split for s in cfg.data.val])
    train_files, val_files = contents or ([None] * len(cfg.data.sources), [None] * len(cfg.data.val))

    def folder(s: SourceConfig) -> str:
        """The folder a source reads, however it is given (a shards folder or its manifest.parquet, a trailing /)."""
        path = os.path.realpath(s.path or "")
        return os.path.dirname(path) if os.path.splitext(path)[1].lower() in (".parquet", ".csv") else path

    def same(v: SourceConfig, vs: str, t: SourceConfig, ts: str) -> bool:
        if v.kind in ("synthetic", "rooms") or t.kind in ("synthetic", "rooms"):  # generated: by their seeds
            if v.kind != t.kind:
                return False
            if v.kind == "synthetic":  # panorama i renders seed + i
                return v.seed < t.seed + t.size and t.seed < v.seed + v.size
            return v.seed == t.seed  # rooms: room i draws from the generator of (seed, i)
        # files: one folder is one set of panoramas whichever kind reads it (shards, or dataset synth of it)
        return folder(v) == folder(t) and (vs == ts or "all" in (vs, ts))

    def shown(v: SourceConfig) -> str:
        return {"synthetic": f"seeds {v.seed}+", "rooms": f"seed {v.seed}"}.get(v.kind, v.path)

    def fix(v: SourceConfig, vs: str) -> str:
        if v.kind in UNSPLIT_KINDS:
            return UNSPLIT_KINDS[v.kind]
        if vs == "all":  # a folder or dataset without split files
            return "it has no splits: give it a folder of other panoramas"
        # split: val is a folder manifest's usual name; Stanford2D3D has test and train only
        return "give it a held-out split: test, or val where it has one"

    notes = []
    for i, (v, vs) in enumerate(zip(cfg.data.val, val_splits, strict=True)):
        for j, (t, ts) in enumerate(zip(cfg.data.sources, train_splits, strict=True)):
            listed = val_files[i] is not None and train_files[j] is not None  # both list files: those decide
            shared = len(val_files[i] & train_files[j]) if listed else 0
            if same(v, vs, t, ts) and (shared or not listed):  # what the config says, and how to fix it
                notes.append(f"data.val[{i}] ({v.kind} {shown(v)}, split {vs}) reads the panoramas of "
                             f"data.sources[{j}], which the run trains on: its validation is no held-out measure "
                             f"({fix(v, vs)})")
            elif shared:  # by other names: a manifest elsewhere naming training files, a synth folder of its seeds
                notes.append(f"data.val[{i}] ({v.kind} {shown(v)}) holds {shared} of the {len(val_files[i])} "
                             f"panoramas it validates on among those of data.sources[{j}] (the same files, or "
                             "scenes of the same seeds), which the run trains on: its validation is no held-out "
                             "measure (give it other panoramas)")
    return notes


def _sources(configs: list[SourceConfig], where: str, cfg: TrainConfig) -> list:
    """The datasets of these sources. Their errors name the entry (a missing path read the same for a training and
    a validation source); one without a sample is refused (a shard manifest without rows was a ZeroDivisionError at
    the first step, an empty validation set validated nothing without a word)."""
    sources = []
    for i, src in enumerate(configs):
        name = f"{where}[{i}] ({src.kind}{f' {src.path}' if src.path else ''})"
        try:
            data = build_source(src, cfg.data.height, cfg.data.width)
        except DapError as e:
            raise type(e)(f"{name}: {e}") from e
        if len(data) == 0:
            raise ConfigError(f"{name} holds no panorama; give it data, or remove it from the config")
        # a user's folder (benchmarks have known layouts; Deep360 stores Cassini images): else found when drawn
        if src.kind == "folder" and (bad := _not_panoramas(data)):
            path, (w, h) = bad[0]
            raise ConfigError(f"{name}: {len(bad)} of its {len(data)} panoramas are not 2:1 (e.g. {path}, {w}x{h}); "
                              "remove them from the source, or convert them to equirectangular panoramas")
        if src.kind == "folder" and (problem := data.header_problem()):
            raise DatasetLayoutError(f"{name}: {problem}")
        sources.append(data)
    return sources


def _not_panoramas(data) -> list[tuple[Path, tuple[int, int]]]:
    """(RGB file, (width, height)) of the items of a file source whose image, upright as it is read, is not 2:1,
    by the files' headers (`rgb_sizes`; a thousand JPEGs: 0.03 s here); files Pillow does not open (HDR, EXR) are
    left to reading."""
    return [(it.rgb, size) for it, size in zip(data.items, data.rgb_sizes, strict=True)
            if size is not None and size[0] != 2 * size[1]]


def _train_step(st: _State, train_model: torch.nn.Module, loss_fn: DapLoss, batch: dict, step_idx: int,
                cfg: TrainConfig, d: Dist) -> tuple[torch.Tensor, dict, torch.Tensor, dict[str, float]]:
    """One optimiser update; returns the loss, its terms, the gradient norm and the LRs it used."""
    # The step's randomness (dropout, if any) depends only on (seed, step, rank): resume is exact.
    torch.manual_seed(seed_of(cfg.run.seed, "step", step_idx, d.rank))
    batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
    if cfg.data.scale_jitter > 1:
        gen = torch.Generator().manual_seed(seed_of(cfg.run.seed, "scale", step_idx))  # resume stays exact
        batch = resize_sample(batch, *jitter_size(cfg.data.height, cfg.data.scale_jitter, gen))
    with _autocast(d.device, cfg.optim.amp):
        pred = train_model(normalize_image(batch["rgb"]))
    loss, terms = loss_fn(pred["depth"], pred["out_of_range_prob"], batch["depth"], batch["valid"],
                          batch["out_of_range"])
    if not torch.isfinite(loss):
        rounded = {k: round(v.item(), 6) for k, v in terms.items()}
        what = f"loss is {loss.item()} at step {step_idx} (terms: {rounded})"
        raise DivergedError(
            f"{what}. Lower the learning rates (optim.lr_head, optim.lr_backbone) or set optim.grad_clip, or check the "
            "data, then resume with the new settings (--resume --set ...): resuming with these would repeat the same "
            "steps exactly", what)
    st.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(st.params, cfg.optim.grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in st.params if p.grad is not None]))
    lrs = {f"lr/{g['name']}": g["lr"] for g in st.optimizer.param_groups}
    st.optimizer.step()
    st.scheduler.step()
    if st.ema is not None:
        st.ema.update_parameters(st.model)
    return loss, terms, grad_norm, lrs


class _RunLog:
    """Rank 0's TensorBoard writer and metrics.jsonl (set up on creation); does nothing on other ranks."""

    def __init__(self, out: Path, cfg: TrainConfig, d: Dist, start: int):
        self.out, self.writer = out, None
        if d.main:
            from torch.utils.tensorboard import SummaryWriter

            prepare_run_folder(out, cfg.to_dict(), start)
            # events past the start are dropped, also those of a run killed before its first checkpoint (start 0)
            self.writer = SummaryWriter(str(out / "tb"), purge_step=start + 1)

    def __call__(self, step: int, row: dict, panel: np.ndarray | None = None) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, float | int) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        if panel is not None:
            self.writer.add_image("val/panel_rgb_gt_pred_mask", panel, step, dataformats="HWC")
        self.writer.flush()
        append_metrics(self.out / "metrics.jsonl", step, row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
