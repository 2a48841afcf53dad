"""The training config: dataclasses for the YAML sections, load_config (YAML + --set overrides) and its checks."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dap.errors import ConfigError
from dap.losses import LossConfig


@dataclass
class ModelSection:
    name: str = "dap_tiny"  # dap_tiny | dap_vits | dap_vitb | dap_vitl (used when init is scratch or DINOv3)
    overrides: dict = field(default_factory=dict)  # DapConfig fields, e.g. {token_adapter: plain}
    # scratch | bundled (the packaged default model) | our checkpoint dir | official model.pth (these decide the
    # architecture) | a DINOv3 backbone .pth from Meta (model.name decides; the heads start random)
    init: str = "scratch"


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
    exposure: float = 1.0  # > 1: also an exposure gain in [1/x, x] (p=0.5, clipped; not in the paper)
    highlights: int = 0  # > 0: also up to this many blown-out spots, lamps and windows (p=0.5; not in the paper)
    vertical_gain: float = 1.0  # > 1: also a top-to-bottom brightness ramp, end gains in [1/x, x] (p=0.5; not paper)
    scale_jitter: float = 1.0  # > 1: half the batches at a working size scaled by [1/x, x] (not in the paper)
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
        for i, v in enumerate(data or []):
            if v is None and dataclasses.is_dataclass(args[0]):  # else built as all defaults: a source of its own
                raise ConfigError(f"config {where}[{i}]: an empty entry (a `-` with nothing after it, or what followed "
                                  "commented out); remove its dash, or give it its keys")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(data or [])]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and isinstance(data, list | tuple):  # tuple[X, ...]
        return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is tuple and isinstance(data, list | tuple) and len(data) == len(args):
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
    if cls is float and not isinstance(data, bool):
        try:
            return float(data)  # YAML reads 5e-6 as a string
        except (TypeError, ValueError):
            pass
    elif cls is str and isinstance(data, bool):
        return "on" if data else "off"  # YAML 1.1 reads unquoted off/no as false: `amp: off`, as the docs write it
    elif origin is None and isinstance(data, cls) and not (cls is int and isinstance(data, bool)):
        return data
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        cls, f"a list of {len(args)}" if origin is tuple else "a list")
    raise ConfigError(f"config {where}: expected {kind}, got {data!r}")


def _merge(base: Any, update: Any) -> Any:
    """`update` laid over `base` (mappings merge recursively; lists and scalars replace). An empty section (`run:`
    with its keys commented out, which YAML reads as null) keeps the defaults: it replaced them with null, and a
    `--set run.steps=2` into it then read as "no such config entry"."""
    if isinstance(base, dict) and update is None:
        return copy.deepcopy(base)
    if isinstance(base, dict) and isinstance(update, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in update.items()}}
    return copy.deepcopy(update)


def _set_path(d: dict, dotted: str, value: Any, list_example: str) -> None:
    keys = dotted.split(".")
    node: Any = d
    try:
        for k in keys[:-1]:
            if isinstance(node, dict) and k not in node:  # model.overrides.vit.depth=4 into an empty mapping; a
                node[k] = {}  # misspelt section is still refused, by name, when the config is built
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    except (KeyError, IndexError, ValueError, TypeError):
        raise ConfigError(f"--set {dotted}: no such config entry (list items are addressed by index, e.g. "
                          f"{list_example})") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping: PyYAML keeps the last silently, so a
    second `run:` section would reset every key of the first to its default."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: keys given after it override those
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice (the later one "
                                                        "would silently replace the earlier)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str | os.PathLike, what: str, example: str) -> dict:
    """The mapping of sections in the YAML file `path` ({} if it is empty); errors name `what` (e.g. "training
    config") and an `example` file to follow."""
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except OSError as e:
        # the documented configs/*.yaml are in the repository, not in an installed package
        clone = ("; the configs/ of the docs are in the dap repository, not in the installed package: run from a "
                 "clone of it, or write your own" if Path(path).parts[:1] == ("configs",) and not Path(path).exists()
                 else "")
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror or e}; check the path{clone}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{what} {path} is not valid YAML{at} ({getattr(e, 'problem', None) or e}); "
                          f"fix the file ({example} is an example)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping of sections (see {example})")
    return raw


def apply_overrides(full: dict, overrides: list[str] | None, example: str,
                    list_example: str = "data.sources.0.ratio") -> None:
    """`--set key.sub=value` items applied to a config dict in place (values parsed as YAML: 1e-4, true, [1,2]);
    `example` and `list_example` (a list item's key) are the command's own, for its messages."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value (e.g. {example}), got {item!r}")
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not valid YAML; quote strings, e.g. 'a: b'") from None
        _set_path(full, key.strip(), value, list_example)


def config_source(path: str | os.PathLike | None, overrides: list[str] | None) -> str:
    """Where a config came from, as the user wrote it: "c.yaml with --set a=1, --set b=2" ("" for defaults)."""
    settings = ", ".join(f"--set {item}" for item in overrides or [])
    return " with ".join(part for part in (str(path or ""), settings) if part)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file plus `key.sub=value` overrides (values parsed as YAML: 1e-4, true, [1,2]; one
    override may be given as a string)."""
    overrides = [overrides] if isinstance(overrides, str) else overrides  # else read one character at a time
    raw = read_yaml_mapping(path, "training config", "configs/tiny_cpu.yaml") if path is not None else {}
    full = _merge(TrainConfig().to_dict(), raw)  # defaults first, so --set can reach into lists
    apply_overrides(full, overrides, "optim.lr_head=1e-4")
    try:
        cfg = _build(TrainConfig, full, "")
        # "~/data" in a YAML file or a quoted --set is no shell's to expand
        for src in (*cfg.data.sources, *cfg.data.val):
            src.path = os.path.expanduser(src.path) if src.path else src.path
        if cfg.model.init:
            cfg.model.init = os.path.expanduser(cfg.model.init)
        check_config(cfg)
    except ConfigError as e:
        where = config_source(path, overrides)
        if not where:
            raise
        raise type(e)(f"{where}: {e}") from None
    return cfg


SOURCE_KINDS = ("shards", "folder", "dataset", "synthetic", "rooms", "pseudo")
# kinds without splits, and where their held-out panoramas come from instead
UNSPLIT_KINDS = {"shards": "render a held-out set with other seeds (dap synth --seed) and give its folder",
                 "synthetic": "give it seeds the training sources do not use", "rooms": "give it another seed",
                 "pseudo": "give the pool of other panoramas"}


def reads_shards(src: SourceConfig) -> bool:
    """Whether a source reads a `dap synth` folder as shards: `kind: shards`, or `kind: dataset, dataset: synth`
    (the evaluation loader of those folders keeps no sky or range marks, so training reads them as shards)."""
    return src.kind == "shards" or (src.kind == "dataset" and (src.dataset or "").lower() == "synth")


def check_source(src: SourceConfig, where: str) -> None:
    """One data source's settings, before any model is built or data read (`build_source` relies on them)."""
    from dap.curation.manifest import STAGES
    from dap.data.datasets import DATASETS

    if src.kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(SOURCE_KINDS)}, got {src.kind!r}")
    synth = src.kind == "dataset" and reads_shards(src)  # read as shards: all of it, whatever the split
    kind = "shards" if synth else src.kind
    if kind in UNSPLIT_KINDS and src.split not in ("train", "all"):  # "train": the default, given or not
        what = "a dap synth folder (dataset: synth)" if synth else f"a {kind} source"
        raise ConfigError(f"{where}.split: {what} has no splits, it reads every panorama it has (split "
                          f"{src.split!r} read the training panoramas); {UNSPLIT_KINDS[kind]}")
    if src.kind in ("synthetic", "rooms"):
        if not src.size >= 1:
            raise ConfigError(f"{where}.size is the number of panoramas a {src.kind} source makes, at least 1, "
                              f"got {src.size}")
        if src.seed < 0:
            raise ConfigError(f"{where}.seed is the first scene's seed, 0 or more, got {src.seed}")
        return
    if not src.path:
        raise ConfigError(f"{where} (kind {src.kind}) needs a path")
    if src.kind == "pseudo" and src.label_stage not in STAGES:
        raise ConfigError(f"{where}.label_stage is one of {', '.join(STAGES)}, got {src.label_stage!r}")
    if src.kind == "dataset" and (src.dataset or "").lower() not in DATASETS:
        raise ConfigError(f"{where}.dataset must be one of {', '.join(DATASETS)} for kind dataset, got "
                          f"{src.dataset!r}")


def check_config(cfg: TrainConfig) -> None:
    from dap.models import MODEL_CONFIGS, DapConfig
    from dap.models.checkpoint import is_dinov3_checkpoint

    if cfg.data.width != 2 * cfg.data.height:  # config values: check_erp_shape's hints are about image files
        raise ConfigError(f"data.width must be twice data.height (equirectangular panoramas are 2:1), got "
                          f"{cfg.data.height}x{cfg.data.width}; e.g. data.height={cfg.data.height} "
                          f"data.width={2 * cfg.data.height}")
    if cfg.data.height < 16 or cfg.data.height % 16:
        raise ConfigError(f"data.height must be a multiple of 16 (the ViT patch), got {cfg.data.height}")
    if (cfg.model.init or "scratch") == "scratch" or is_dinov3_checkpoint(cfg.model.init):
        if cfg.model.name not in MODEL_CONFIGS:
            raise ConfigError(f"model.name {cfg.model.name!r} is not a model; use one of {', '.join(MODEL_CONFIGS)}")
        unknown = sorted(set(cfg.model.overrides) - {f.name for f in dataclasses.fields(DapConfig)})
        if unknown:
            raise ConfigError(f"model.overrides: unknown keys {unknown}; valid keys: "
                              f"{sorted(f.name for f in dataclasses.fields(DapConfig))}")
    hints = typing.get_type_hints(DapConfig)
    for key, value in cfg.model.overrides.items():  # types, as the sections' own values are checked
        if key in hints:
            _build(hints[key], value, f"model.overrides.{key}")
    positive = {"run.steps": cfg.run.steps, "data.batch_size": cfg.data.batch_size, "run.keep_last": cfg.run.keep_last,
                "run.log_every": cfg.run.log_every}  # 0 meant every step, not never
    non_negative = {"data.num_workers": cfg.data.num_workers, "optim.lr_backbone": cfg.optim.lr_backbone,
                    "optim.lr_head": cfg.optim.lr_head, "optim.warmup_steps": cfg.optim.warmup_steps,
                    "optim.weight_decay": cfg.optim.weight_decay, "optim.grad_clip": cfg.optim.grad_clip,
                    "run.image_every": cfg.run.image_every, "run.val_every": cfg.run.val_every,
                    "run.ckpt_every": cfg.run.ckpt_every, "data.val_samples": cfg.data.val_samples,
                    **{f"data.sources[{i}].ratio": s.ratio for i, s in enumerate(cfg.data.sources)}}
    for key, value in positive.items():
        if not value >= 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for key, value in non_negative.items():
        if not 0 <= value < math.inf:
            raise ConfigError(f"{key} must be a number >= 0, got {value}")
    if cfg.data.highlights < 0:
        raise ConfigError(f"data.highlights is a number of spots, 0 (off) or more, got {cfg.data.highlights}")
    if not 1 <= cfg.data.exposure < math.inf:
        raise ConfigError(f"data.exposure is the largest exposure gain, at least 1 (1 = off), got {cfg.data.exposure}")
    if not 1 <= cfg.data.vertical_gain < math.inf:
        raise ConfigError("data.vertical_gain is the largest gain at the top or bottom row, at least 1 (1 = off), "
                          f"got {cfg.data.vertical_gain}")
    if not 1 <= cfg.data.scale_jitter <= 4:
        raise ConfigError("data.scale_jitter is the largest factor a batch's working size is scaled by either way, "
                          f"1 (off) to 4, got {cfg.data.scale_jitter}")
    if not cfg.data.sources or sum(s.ratio for s in cfg.data.sources) <= 0:
        raise ConfigError("data.sources needs at least one source with a positive ratio")
    if cfg.data.val and cfg.run.val_every and cfg.data.val_samples < 1:
        raise ConfigError("data.val_samples is 0, so validation would score no panorama; set it to 1 or more, or "
                          "run.val_every=0 to validate never")
    for where, sources in (("data.sources", cfg.data.sources), ("data.val", cfg.data.val)):
        for i, src in enumerate(sources):
            check_source(src, f"{where}[{i}]")
    if cfg.run.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device must be auto, cpu or cuda, got {cfg.run.device!r}")
    if cfg.optim.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"optim.optimizer must be adam or adamw, got {cfg.optim.optimizer!r}")
    if cfg.optim.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"optim.schedule must be cosine, linear or constant, got {cfg.optim.schedule!r}")
    if cfg.optim.amp not in ("auto", "bf16", "off"):
        raise ConfigError(f"optim.amp must be auto, bf16 or off, got {cfg.optim.amp!r}")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio is the final LR over the peak LR, 0 to 1, got {cfg.optim.min_lr_ratio}")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas are Adam's two decay rates, each in [0, 1), got {list(cfg.optim.betas)}")
    try:
        cfg.loss.check()
    except ValueError as e:
        raise ConfigError(f"loss.{e}") from None
    if not 0 <= cfg.optim.ema_decay < 1:
        raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 = off), got {cfg.optim.ema_decay}")
