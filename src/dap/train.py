"""Training DAP: config dataclasses, a seeded dataset mixture and a resumable DDP trainer (`dap train`).

One process:  `dap train --config configs/tiny_cpu.yaml --out runs/tiny`
DDP:          `torchrun --nproc-per-node N -m dap.train --config ... --out ...` (gloo on CPU, nccl on GPU)

Exact resumption: the samples a rank sees at step s, their augmentation draws and the step's torch seed are
pure functions of (run.seed, s, rank, world size, batch size); a checkpoint therefore only needs the step
(plus model, optimiser, scheduler, EMA and RNG states) to continue as if never stopped. See docs/training.md.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Dataset

from dap import geometry
from dap.errors import CheckpointError, ConfigError, DapError, NotPanoramaError, RunExistsError
from dap.inference import (
    DEFAULT_SEAM_PAD,
    apply_range_mask,
    infer,
    normalize_image,
    resize_image,
    resize_nearest,
    to_rgb,
)
from dap.losses import DapLoss, LossConfig

CHECKPOINT_VERSION = 1
RANGE_THRESHOLDS = (10.0, 20.0, 50.0, 100.0)  # the paper's range-mask variants


# ============================================================================================ configs
@dataclass
class ModelSection:
    name: str = "dap_tiny"  # dap_tiny | dap_vits | dap_vitb | dap_vitl (used when init is scratch)
    overrides: dict = field(default_factory=dict)  # DapConfig fields, e.g. {token_adapter: plain}
    init: str = "scratch"  # scratch | bundled (the packaged default model) | our checkpoint dir | official model.pth


@dataclass
class SourceConfig:
    """One data source of the training mixture (or of the validation set)."""

    kind: str = "rooms"  # shards (dap synth) | folder | dataset | synthetic (rendered live) | rooms | pseudo (pool)
    path: str | None = None  # shard dir or manifest (shards), manifest or folder (folder), dataset root
    ratio: float = 1.0  # sampling weight within the mixture (normalised over sources)
    split: str = "train"
    dataset: str | None = None  # loader name for kind=dataset: stanford2d3d, matterport3d, deep360, ...
    size: int = 1000  # number of panoramas for the generated kinds (synthetic, rooms)
    seed: int = 0  # first scene seed for the generated kinds; give validation a disjoint range
    invalid_is_sky: bool = False  # treat depth-less pixels as out of range (only where that is true)
    label_stage: str = "stage1"  # pseudo: which labels of the curation pool (stage1 | stage3)
    selected_only: bool = False  # pseudo: only the rows kept by stage-2 selection


@dataclass
class DataSection:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    val: list[SourceConfig] = field(default_factory=list)
    height: int = 128
    width: int = 256
    batch_size: int = 4  # per rank; the global batch is batch_size x world size
    num_workers: int = 0
    augment: bool = True  # paper: colour jitter (p=0.5), random yaw roll, horizontal flip (p=0.5)
    rotate: bool = False  # also random pitch/roll up to 10 degrees (not in the paper)
    val_samples: int = 32  # first N panoramas of the validation sources


@dataclass
class OptimSection:
    optimizer: str = "adam"  # adam | adamw
    lr_backbone: float = 5e-6  # paper
    lr_head: float = 5e-5  # paper (depth head, range head and token adapter)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warm-up from 0
    schedule: str = "cosine"  # cosine | linear | constant, after the warm-up
    min_lr_ratio: float = 0.0  # final LR / peak LR for cosine and linear
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    freeze_backbone: bool = False
    ema_decay: float = 0.0  # 0 = off; else EMA of the weights, used for validation and final/
    amp: str = "auto"  # auto (bf16 autocast on CUDA only) | bf16 | off


@dataclass
class RunSection:
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    val_every: int = 500  # 0 = off
    ckpt_every: int = 500  # 0 = only at the end
    image_every: int = 1000  # image panel on validation steps that are multiples of this; 0 = off
    keep_last: int = 3  # checkpoints kept in <out>/checkpoints
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossConfig = field(default_factory=LossConfig)  # loss.mask_threshold = range-mask threshold (m)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return asdict(self)


def _build(cls, data: Any, where: str):
    """Dataclass `cls` from nested plain data, checking key names (typos are errors, not silent defaults)."""
    if dataclasses.is_dataclass(cls):
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"config {where or 'root'}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"config {where or 'root'}: unknown keys {unknown}; valid keys: {sorted(names)}")
        return cls(**{k: _build(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in data.items()})
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):  # X | None
        if data is None:
            return None
        return _build(next(a for a in args if a is not type(None)), data, where)
    if origin is list and isinstance(data, list | None):
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(data or [])]
    if origin is tuple and isinstance(data, list | tuple) and len(data) == len(args):
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
    if cls is float and not isinstance(data, bool):
        try:
            return float(data)  # YAML reads 5e-6 as a string
        except (TypeError, ValueError):
            pass
    elif origin is None and isinstance(data, cls) and not (cls is int and isinstance(data, bool)):
        return data
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        cls, f"a list of {len(args)}" if origin is tuple else "a list")
    raise ConfigError(f"config {where}: expected {kind}, got {data!r}")


def _merge(base: Any, update: Any) -> Any:
    """`update` laid over `base` (mappings merge recursively; lists and scalars replace)."""
    if isinstance(base, dict) and isinstance(update, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in update.items()}}
    return copy.deepcopy(update)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = d
    try:
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    except (KeyError, IndexError, ValueError, TypeError):
        raise ConfigError(f"--set {dotted}: no such config entry (list items are addressed by index, e.g. "
                         "data.sources.0.ratio)") from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file plus `key.sub=value` overrides (values parsed as YAML: 1e-4, true, [1,2])."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read the training config {path}: {e.strerror or e}; check the path") from e
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise ConfigError(f"training config {path} is not valid YAML{at} ({getattr(e, 'problem', None) or e}); "
                              "fix the file (configs/tiny_cpu.yaml is an example)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"training config {path} must be a YAML mapping of sections (model, data, ...)")
    full = _merge(TrainConfig().to_dict(), raw)  # defaults first, so --set can reach into lists
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value (e.g. optim.lr_head=1e-4), got {item!r}")
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not valid YAML; quote strings, e.g. 'a: b'") from None
        _set_path(full, key.strip(), value)
    try:
        cfg = _build(TrainConfig, full, "")
        _check_config(cfg)
    except (ConfigError, NotPanoramaError) as e:
        if path is None:
            raise
        raise type(e)(f"{path}: {e}") from None
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    from dap.models import MODEL_CONFIGS, DapConfig

    geometry.check_erp_shape(cfg.data.height, cfg.data.width, "training resolution")
    if cfg.data.height < 16 or cfg.data.height % 16:
        raise ConfigError(f"data.height must be a multiple of 16 (the ViT patch), got {cfg.data.height}")
    if (cfg.model.init or "scratch") == "scratch":
        if cfg.model.name not in MODEL_CONFIGS:
            raise ConfigError(f"model.name {cfg.model.name!r} is not a model; use one of {', '.join(MODEL_CONFIGS)}")
        unknown = sorted(set(cfg.model.overrides) - {f.name for f in dataclasses.fields(DapConfig)})
        if unknown:
            raise ConfigError(f"model.overrides: unknown keys {unknown}; valid keys: "
                              f"{sorted(f.name for f in dataclasses.fields(DapConfig))}")
    positive = {"run.steps": cfg.run.steps, "data.batch_size": cfg.data.batch_size, "run.keep_last": cfg.run.keep_last}
    non_negative = {"data.num_workers": cfg.data.num_workers, "optim.lr_backbone": cfg.optim.lr_backbone,
                    "optim.lr_head": cfg.optim.lr_head, "optim.warmup_steps": cfg.optim.warmup_steps,
                    "optim.weight_decay": cfg.optim.weight_decay, "optim.grad_clip": cfg.optim.grad_clip,
                    "run.log_every": cfg.run.log_every, "run.val_every": cfg.run.val_every,
                    "run.ckpt_every": cfg.run.ckpt_every, "data.val_samples": cfg.data.val_samples,
                    **{f"data.sources[{i}].ratio": s.ratio for i, s in enumerate(cfg.data.sources)}}
    for key, value in positive.items():
        if not value >= 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in non_negative.items():
        if not 0 <= value < math.inf:
            raise ConfigError(f"{key} must be a number >= 0, got {value}")
    if not cfg.data.sources or sum(s.ratio for s in cfg.data.sources) <= 0:
        raise ConfigError("data.sources needs at least one source with a positive ratio")
    if cfg.run.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device must be auto, cpu or cuda, got {cfg.run.device!r}")
    if cfg.optim.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"optim.optimizer must be adam or adamw, got {cfg.optim.optimizer!r}")
    if cfg.optim.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"optim.schedule must be cosine, linear or constant, got {cfg.optim.schedule!r}")
    if cfg.optim.amp not in ("auto", "bf16", "off"):
        raise ConfigError(f"optim.amp must be auto, bf16 or off, got {cfg.optim.amp!r}")
    if not 0 <= cfg.optim.ema_decay < 1:
        raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 = off), got {cfg.optim.ema_decay}")
    if not 0 < cfg.loss.mask_threshold <= cfg.loss.max_depth:
        raise ConfigError(
            f"loss.mask_threshold (range-mask threshold) must be in (0, {cfg.loss.max_depth}] m; the paper uses "
            f"{', '.join(f'{t:g}' for t in RANGE_THRESHOLDS)}"
        )


# ============================================================================================== data
def seed_of(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RoomsDataset(Dataset):
    """Analytic box rooms with exact metric depth: a fast, dependency-free source for smoke tests and CPU runs.

    Panorama i: the camera sits off-centre in an axis-aligned room (half-extents 1.5-6 m), faces get random
    colours with a checker texture; a third of the rooms have no ceiling, whose pixels are sky (no depth,
    out of range).
    """

    def __init__(self, size: int = 64, height: int = 64, width: int = 128, seed: int = 0):
        geometry.check_erp_shape(height, width, "rooms panorama")
        self.size, self.height, self.width, self.seed = size, height, width, seed
        self.rays = geometry.erp_rays(height, width, dtype=torch.float64)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = np.random.default_rng([self.seed, i])
        half = g.uniform(1.5, 6.0, 3)
        half[1] = g.uniform(1.2, 2.5)
        cam = g.uniform(-0.6, 0.6, 3) * half
        lo, hi = torch.tensor(-half - cam), torch.tensor(half - cam)
        d = self.rays
        with np.errstate(divide="ignore"):
            t_axis = torch.where(d > 0, hi / d, torch.where(d < 0, lo / d, torch.inf))  # (H, W, 3)
        t, axis = t_axis.min(dim=-1)
        face = axis * 2 + (torch.gather(d, -1, axis[..., None])[..., 0] > 0).long()  # 2 = ceiling (-y)
        sky = (face == 2) & bool(g.random() < 1 / 3)
        p = t[..., None] * d + torch.tensor(cam)
        colours = torch.tensor(g.uniform(0.15, 0.9, (6, 3)))
        cell = torch.floor(p / g.uniform(0.3, 1.0)).long().sum(-1) % 2  # checker on every face
        rgb = colours[face] * (0.75 + 0.25 * cell[..., None])
        rgb = torch.where(sky[..., None], torch.tensor([0.55, 0.7, 0.95], dtype=torch.float64), rgb)
        depth = torch.where(sky, 0.0, t)
        return {
            "rgb": rgb.permute(2, 0, 1).float().clamp(0, 1),
            "depth": depth[None].float(),
            "valid": ~sky[None],
            "out_of_range": sky[None],
        }


class RenderedSynthetic(Dataset):
    """Panoramas rendered on the fly by dap.data.synthetic (panorama i = scene seed + i, as `dap synth`)."""

    def __init__(self, size: int, height: int, width: int, seed: int, kind: str = "mixed", style: str = "clean"):
        self.size, self.height, self.width, self.seed, self.kind, self.style = size, height, width, seed, kind, style

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        from dap.data.synthetic import kind_for_seed, make_scene, render

        seed = self.seed + i
        return render(make_scene(seed, kind_for_seed(seed, self.kind)), self.height, self.width, self.style)


def build_source(src: SourceConfig, height: int, width: int) -> Dataset:
    """The dataset behind one SourceConfig; items are dicts with rgb/depth and optional valid/out_of_range."""
    if src.kind == "rooms":
        return RoomsDataset(src.size, height, width, seed=src.seed)
    if src.kind == "synthetic":
        return RenderedSynthetic(src.size, height, width, src.seed)
    if src.path is None:
        raise ValueError(f"data source kind={src.kind!r} needs a path")
    if src.kind == "shards":
        from dap.data.shards import ShardDataset

        return ShardDataset(src.path)
    if src.kind == "pseudo":
        from dap.curation.manifest import PseudoLabelDataset

        return PseudoLabelDataset(src.path, src.label_stage, src.selected_only)
    if src.kind == "folder":
        from dap.data.datasets import FolderDataset

        return FolderDataset(src.path, src.split)
    if src.kind == "dataset":
        from dap.data.datasets import get_dataset

        if not src.dataset:
            raise ValueError("data source kind=dataset needs `dataset:` (e.g. stanford2d3d)")
        return get_dataset(src.dataset, src.path, src.split)
    raise ValueError(f"unknown data source kind {src.kind!r}; use shards, folder, dataset, synthetic, rooms or "
                     "pseudo")


def _as_chw(x: Any, channels: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3 and t.shape[0] != channels and t.shape[-1] == channels:
        t = t.permute(2, 0, 1)  # HWC -> CHW
    return t


def to_training_sample(item: dict, invalid_is_sky: bool = False) -> dict[str, torch.Tensor]:
    """Normalise a loader's sample (HWC numpy or CHW tensors) to rgb (3,H,W) [0,1], depth (1,H,W) metres,
    valid (1,H,W) bool, out_of_range (1,H,W) bool."""
    rgb = torch.from_numpy(to_rgb(item["rgb"], "training sample")).permute(2, 0, 1)  # the one rule for ranges
    depth = _as_chw(item["depth"], 1).float()
    depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    valid = _as_chw(item["valid"], 1).bool() if "valid" in item else depth > 0
    valid = valid & (depth > 0)
    oor = next((item[k] for k in ("out_of_range", "range_mask", "sky") if k in item), None)
    oor = _as_chw(oor, 1).bool() if oor is not None else torch.zeros_like(valid)
    if invalid_is_sky:
        oor = oor | ~valid
    return {"rgb": rgb, "depth": depth, "valid": valid, "out_of_range": oor & ~valid}


def resize_sample(s: dict[str, torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """RGB by antialiased bilinear; depth and masks by nearest, so no depth is invented across edges (the
    resampling rules of dap.inference)."""
    size = (height, width)
    if tuple(s["rgb"].shape[-2:]) == size:
        return s
    near = {k: resize_nearest(s[k], size) for k in ("depth", "valid", "out_of_range")}
    return {"rgb": resize_image(s["rgb"], size).clamp(0, 1), **near}


def augment_sample(s: dict[str, torch.Tensor], gen: torch.Generator, rotate: bool = False) -> dict[str, torch.Tensor]:
    """The paper's ERP augmentations (dap.data.transforms), drawn from `gen`: random yaw roll, horizontal flip
    (p=0.5), colour jitter (p=0.5: brightness/contrast/saturation 0.8-1.2, hue ±0.1); `rotate` adds small
    random pitch/roll (not in the paper)."""
    from dap.data.transforms import train_transforms

    return train_transforms(rotation=rotate, generator=gen)(s)


class MixtureDataset(Dataset):
    """Indexed by keys (source, index, augmentation seed) produced by `MixtureSampler`."""

    def __init__(self, sources: list[Dataset], configs: list[SourceConfig], data: DataSection):
        self.sources, self.configs, self.data = sources, configs, data

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        j, idx, aug_seed = key
        s = to_training_sample(self.sources[j][idx], self.configs[j].invalid_is_sky)
        s = resize_sample(s, self.data.height, self.data.width)
        if self.data.augment:
            s = augment_sample(s, torch.Generator().manual_seed(aug_seed), self.data.rotate)
        return s


class MixtureSampler:
    """Batches for steps [start, steps): a pure function of (seed, step, rank, world, batch).

    Global sample position n = (step·world + rank)·batch + i. Its source is drawn with the mixture ratios
    from a generator seeded by (seed, step); within source j, position n reads permutation
    perm_j(epoch = n // len_j) at n % len_j, so no panorama repeats within len_j consecutive positions
    (the DistributedSampler property) and every rank gets different samples.
    """

    def __init__(self, lengths: list[int], ratios: list[float], *, seed: int, rank: int, world: int,
                 batch: int, start: int, steps: int):
        self.lengths, self.seed, self.rank, self.world, self.batch = lengths, seed, rank, world, batch
        self.start, self.steps = start, steps
        p = torch.tensor(ratios, dtype=torch.float64)
        self.probs = p / p.sum()

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few (source, epoch) permutations, per sampler
    def _perm(self, j: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seed_of(self.seed, "perm", j, epoch))
        return torch.randperm(self.lengths[j], generator=g).tolist()

    def keys(self, step: int) -> list[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(seed_of(self.seed, "mix", step))
        src = torch.multinomial(self.probs, self.world * self.batch, replacement=True, generator=g).tolist()
        out = []
        for i in range(self.rank * self.batch, (self.rank + 1) * self.batch):
            n = step * self.world * self.batch + i
            j = src[i]
            epoch, pos = divmod(n, self.lengths[j])
            out.append((j, self._perm(j, epoch)[pos], seed_of(self.seed, "aug", n)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.steps):
            yield self.keys(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class ValidationSet(Dataset):
    """The first `limit` panoramas of the validation sources, resized, not augmented."""

    def __init__(self, sources: list[Dataset], configs: list[SourceConfig], height: int, width: int, limit: int):
        self.items = [(j, i) for j, s in enumerate(sources) for i in range(len(s))][:limit]
        self.sources, self.configs, self.height, self.width = sources, configs, height, width
        self.reported_no_depth = False  # validate() warns once per run about images without depth

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        j, i = self.items[k]
        s = to_training_sample(self.sources[j][i], self.configs[j].invalid_is_sky)
        return resize_sample(s, self.height, self.width)


# ============================================================================================ helpers
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun job described by the environment (env://), or run as a single process."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise DapError("run.device is cuda but no CUDA device is visible; use run.device=cpu")
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    here = not dist.is_initialized()
    if here:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    return Dist(rank, world, local_rank, dev, here)


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


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in <out>/checkpoints, oldest first (temporary files start with '.')."""
    return sorted((Path(out) / "checkpoints").glob("step_*.pt"))


def checkpoint_step(path: Path) -> int:
    return int(path.stem.removeprefix("step_"))


def check_run_folder(out: Path, resume: bool) -> None:
    """A fresh run never writes into a folder that holds another run: it would mix metrics and configs, and
    pruning would delete the new run's checkpoints in favour of the old run's higher steps."""
    if resume or not out.exists():
        return
    found = [name for name in ("checkpoints", "metrics.jsonl", "config.yaml", "final", "tb") if (out / name).exists()]
    if found:
        raise RunExistsError(
            f"{out} already holds a training run ({', '.join(found)}); continue it with --resume, or pass another "
            "--out (delete the folder to start over)")


def remove_stale_temporaries(out: Path) -> None:
    """Checkpoint writes killed mid-way leave hidden '.step_*.tmp.pt' files (see io.atomic_write)."""
    for tmp in (out / "checkpoints").glob(".step_*.tmp*"):
        tmp.unlink(missing_ok=True)


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


def load_checkpoint(path: str | os.PathLike) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(e).__name__}: the file is damaged or "
                              "not a checkpoint). Delete it to resume from the "
                              "previous one.") from e


# ============================================================================================ trainer
@dataclass
class TrainResult:
    step: int  # last completed step
    finished: bool  # reached run.steps (final/ written) rather than stopped early
    history: list[dict]  # the logged rows of this process's run
    model: torch.nn.Module  # the trained network (EMA weights when EMA is on), unwrapped
    out: Path


def build_model(cfg: TrainConfig, *, quiet: bool = False):
    """The network to train: random (seeded by run.seed) for init=scratch, else loaded from model.init.

    A loaded model keeps the checkpoint's architecture: model.overrides that differ from it are refused
    (they could not be applied), and a model.name other than the checkpoint's gets one warning (unless quiet).
    """
    from dap.models import create_model, load_model

    init = cfg.model.init or "scratch"
    if init == "scratch":
        torch.manual_seed(seed_of(cfg.run.seed, "init"))  # identical on every rank (DDP also broadcasts)
        return create_model(cfg.model.name, **copy.deepcopy(cfg.model.overrides))
    if init == "bundled":
        from dap.inference import default_model_path

        init = default_model_path()
    model = load_model(init)  # our directory or the official model.pth; the variant comes from the file
    _check_init_matches(cfg, model.cfg, init, quiet)
    return model


def _check_init_matches(cfg: TrainConfig, loaded: Any, init: Any, quiet: bool) -> None:
    have = loaded.to_dict()
    conflicts = [f"{k}: {v!r} (the checkpoint has {have.get(k)!r})" for k, v in cfg.model.overrides.items()
                 if k not in have or _plain(v) != _plain(have[k])]
    if conflicts:
        raise ConfigError(f"model.overrides cannot change the model loaded from model.init={init}: "
                          f"{'; '.join(conflicts)}; remove them (the checkpoint decides the architecture) or "
                          "train from scratch")
    if cfg.model.name != loaded.name and not quiet:
        print(f"dap train: model.name {cfg.model.name!r} is ignored: model.init={init} is a {loaded.name} "
              f"(set model.name: {loaded.name} to silence this)", file=sys.stderr)


def _plain(v: Any) -> Any:
    """Tuples as lists (YAML has no tuples), so a config value compares equal to the checkpoint's."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, list | tuple) else v


def _autocast(device: torch.device, amp: str):
    enabled = device.type == "cuda" and amp in ("auto", "bf16")  # bf16 autocast on GPU only
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _reduce_mean(values: dict[str, float], d: Dist) -> dict[str, float]:
    if d.world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world).tolist(), strict=True))


@torch.no_grad()
def validate(model: torch.nn.Module, val: ValidationSet, cfg: TrainConfig, d: Dist, *,
             seam_pad: float = DEFAULT_SEAM_PAD) -> tuple[dict, np.ndarray | None]:
    """Metric-protocol depth metrics (dap.evaluation) and range-mask IoU over the validation set, split
    across ranks; returns (per-image means, rank 0's first image panel, `dap.evaluation.depth_panel`).
    Predictions take `dap eval`'s path (`dap.inference.infer`: seam padding, inference precision, then the range
    cap), so the depth metrics are those `dap eval` reports for the same model and samples."""
    from dap.errors import NoValidDepthError
    from dap.evaluation import aggregate, compute_metrics, depth_panel

    was_training = model.training
    model.eval()
    rows, panel, no_depth = [], None, []
    for k in range(d.rank, len(val), d.world):
        s = val[k]
        out = infer(model, s["rgb"], (cfg.data.height, cfg.data.width), seam_pad=seam_pad, device=d.device)
        prob = out["out_of_range_prob"][0].cpu()
        pred = apply_range_mask(out["depth"][0].cpu(), prob >= 0.5, model.cfg.max_depth)
        gt, valid, oor = s["depth"], s["valid"], s["out_of_range"]
        row = {}
        try:
            row.update(compute_metrics(pred, gt, valid, protocol="metric", min_depth=1e-3,
                                       max_depth=cfg.loss.max_depth))
        except NoValidDepthError:
            no_depth.append(val.items[k][0])  # scored for the range mask only
        target = oor | (valid & (gt > cfg.loss.mask_threshold))
        known = valid | oor
        hit = (prob >= 0.5) & known
        union = (hit | target).sum().item()
        row["mask_iou"] = (hit & target).sum().item() / union if union else float("nan")
        row["mask_acc"] = ((hit == target) & known).sum().item() / max(1, known.sum().item())
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
    out = Path(out)
    d = setup_distributed(cfg.run.device)
    try:
        return _train(cfg, out, d, resume, stop_at, time_limit_min)
    finally:
        if d.initialised_here:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, d: Dist, resume: bool, stop_at, time_limit_min) -> TrainResult:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.optim.swa_utils import AveragedModel

    from dap.io import atomic_write
    from dap.models import save_model

    run, oc = cfg.run, cfg.optim
    ckpt = None
    check_run_folder(out, resume)
    existing = list_checkpoints(out) if resume else []
    if existing:
        ckpt = load_checkpoint(existing[-1])
        changes = _config_changes(ckpt.get("config", {}), cfg.to_dict())
        if any(c.startswith("model.") for c in changes):
            raise RunExistsError(
                f"cannot resume {existing[-1]}: its model differs from the config ({'; '.join(changes)}); resume "
                "with the run's own config (<out>/config.yaml), or start a new --out with model.init=<checkpoint>")
        if changes and d.main:
            print(f"dap train: resuming {out} with a changed config: {'; '.join(changes)}", file=sys.stderr)
    start = int(ckpt["step"]) if ckpt else 0
    if d.world > 1:
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it

    model = build_model(cfg, quiet=not d.main).to(d.device).train()
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

    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        data_pos = ckpt["data"]
        if (data_pos["world_size"], data_pos["batch_size"]) != (d.world, cfg.data.batch_size) and d.main:
            print(f"dap train: resuming with world size {d.world} x batch {cfg.data.batch_size} instead of "
                  f"{data_pos['world_size']} x {data_pos['batch_size']}: the data order differs from the "
                  "uninterrupted run", file=sys.stderr)
        rng = ckpt["rng"]
        if len(rng) == d.world:
            _set_rng_state(rng[d.rank])
        elif d.main:
            print(f"dap train: {existing[-1]} holds RNG states for {len(rng)} processes, this run has {d.world}: "
                  "they are not restored; the run continues but is not bit-exact with an uninterrupted one",
                  file=sys.stderr)

    # static_graph: the DPT heads hold a block the forward never uses (refinenet4.resConfUnit1, kept for the
    # official layout); a static graph lets DDP skip it without find_unused_parameters' per-step graph walk.
    train_model = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, static_graph=True) \
        if d.world > 1 else model
    loss_fn = DapLoss(cfg.loss)

    sources = [build_source(s, cfg.data.height, cfg.data.width) for s in cfg.data.sources]
    sampler = MixtureSampler([len(s) for s in sources], [s.ratio for s in cfg.data.sources], seed=run.seed,
                             rank=d.rank, world=d.world, batch=cfg.data.batch_size, start=start, steps=run.steps)
    loader = DataLoader(MixtureDataset(sources, cfg.data.sources, cfg.data),
                        batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=d.device.type == "cuda")
    val = None
    if cfg.data.val and run.val_every:
        val_sources = [build_source(s, cfg.data.height, cfg.data.width) for s in cfg.data.val]
        val = ValidationSet(val_sources, cfg.data.val, cfg.data.height, cfg.data.width, cfg.data.val_samples)

    writer = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        trim_metrics(out / "metrics.jsonl", start)
        with atomic_write(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)

    def save_checkpoint(step: int) -> None:
        rngs: list = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if d.main:
            state = {
                "version": CHECKPOINT_VERSION, "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "rng": rngs,
                "data": {"seed": run.seed, "step": step, "samples_seen": step * d.world * cfg.data.batch_size,
                         "world_size": d.world, "batch_size": cfg.data.batch_size},
                "config": cfg.to_dict(),
            }
            path = out / "checkpoints" / f"step_{step:08d}.pt"
            with atomic_write(path) as tmp:
                torch.save(state, tmp)
            # Only this run's checkpoints (steps up to now) are pruned; never one from a later step.
            ours = [p for p in list_checkpoints(out) if checkpoint_step(p) <= step]
            for old in ours[:-max(1, run.keep_last)]:
                old.unlink(missing_ok=True)
        if d.world > 1:
            dist.barrier()

    def log(step: int, row: dict, panel: np.ndarray | None = None) -> None:
        if writer is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, float | int) and math.isfinite(v):
                writer.add_scalar(k, v, step)
        if panel is not None:
            writer.add_image("val/panel_rgb_gt_pred_mask", panel, step, dataformats="HWC")
        writer.flush()
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **row}) + "\n")

    from tqdm import tqdm

    bar = tqdm(total=run.steps, initial=start, disable=not (d.main and run.progress), desc="train",
               dynamic_ncols=True)
    history: list[dict] = []
    params = [p for g in groups for p in g["params"]]
    t_start, t_log, n_log, t_extra = time.monotonic(), time.monotonic(), 0, 0.0
    step, stopped = start, False
    end = run.steps if stop_at is None else min(run.steps, max(stop_at, start))
    for step_idx, batch in zip(range(start, end), loader, strict=False):
        # The step's randomness (dropout, if any) depends only on (seed, step, rank): resume is exact.
        torch.manual_seed(seed_of(run.seed, "step", step_idx, d.rank))
        batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
        with _autocast(d.device, oc.amp):
            pred = train_model(normalize_image(batch["rgb"]))
        loss, terms = loss_fn(pred["depth"], pred["out_of_range_prob"], batch["depth"], batch["valid"],
                              batch["out_of_range"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step_idx} (terms: { {k: v.item() for k, v in terms.items()} }); "
                "lower the learning rate or check the data; resume from the last checkpoint")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if oc.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, oc.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        step = step_idx + 1
        n_log += 1
        bar.update(1)

        if step % max(1, run.log_every) == 0 or step == run.steps:
            row = _reduce_mean({"loss/total": loss.item(), **{f"loss/{k}": v.item() for k, v in terms.items()},
                                "grad_norm": float(grad_norm)}, d)
            now = time.monotonic()
            row.update(lrs)
            row["samples_per_s"] = n_log * d.world * cfg.data.batch_size / max(now - t_log - t_extra, 1e-9)
            t_log, n_log, t_extra = now, 0, 0.0
            history.append({"step": step, **row})
            log(step, row)
            bar.set_postfix(loss=f"{row['loss/total']:.4f}")

        t0 = time.monotonic()  # validation and checkpoints do not count against the training throughput
        if val is not None and (step % run.val_every == 0 or step == run.steps):
            metrics, panel = validate(ema.module if ema is not None else model, val, cfg, d)
            show = run.image_every and (step % run.image_every == 0 or step == run.steps)
            log(step, {f"val/{k}": v for k, v in metrics.items()}, panel if show else None)

        stopped = step == end < run.steps
        if time_limit_min is not None:
            flag = torch.tensor([float(time.monotonic() - t_start > 60 * time_limit_min)], device=d.device)
            if d.world > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
            stopped = stopped or bool(flag.item())
        if (run.ckpt_every and step % run.ckpt_every == 0) or step == run.steps or stopped:
            save_checkpoint(step)
        t_extra += time.monotonic() - t0
        if stopped:
            break
    bar.close()

    final_model = ema.module if ema is not None else model
    finished = step >= run.steps
    if finished and d.main:
        save_model(final_model, out / "final", training={
            "trainer": "dap.train", "steps": step, "world_size": d.world, "config": cfg.to_dict(),
            "ema": ema is not None})
    if writer is not None:
        writer.close()
    if d.world > 1:
        dist.barrier()
    return TrainResult(step=step, finished=finished, history=history, model=final_model, out=out)


if __name__ == "__main__":  # `torchrun -m dap.train ...`: the `dap train` command
    from dap.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
