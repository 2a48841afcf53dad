"""`dap curate run`: the paper's three-stage data-in-the-loop pipeline from one config, resumable.

Steps, each recorded in <work>/state.json when done (a rerun continues at the first step not done; the
training steps resume from their own checkpoints, labeling from its label files, except steps redone because what
they are made from changed (MADE_FROM): those are made anew, the earlier run or labels moved to <folder>.replaced):
  ingest       pool.inputs -> <work>/pool (manifest.parquet, images/)
  stage1       train the Scene-Invariant Labeler on `labeled` (indoor + outdoor together) -> runs/stage1
  label1       it labels the whole pool (labels/stage1, confidence signals, domain tags)
  disc         PatchGAN discriminator: GT of `discriminator.data` (panoramas the labeler did not train on) as
               real, the labeler's predictions on them as fake -> <work>/discriminator (held-out AUC recorded)
  select       the discriminator scores every stage-1 label; top-k per domain marked `selected`
  stage2       train the Realism-Invariant Labeler on `labeled` + the selected stage-1 labels -> runs/stage2
  label3       it re-labels the whole pool (labels/stage3)
  final        train the final model on `labeled` + all stage-3 labels -> runs/final
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dap.curation.discriminator import (
    DiscriminatorConfig,
    DiscriminatorTraining,
    discriminator_input,
    save_discriminator,
    train_discriminator,
)
from dap.curation.ingest import OPTION_NAMES, IngestOptions, ingest, options_problem
from dap.curation.label import LabelOptions, label_batch, label_path, label_pool, resolution_problem
from dap.curation.manifest import MANIFEST, read_manifest
from dap.curation.selection import PAPER_FRACTIONS, score_pool, select_pool
from dap.errors import DapError, DivergedError, ModelChangedError, RunExistsError
from dap.inference import changed_keys
from dap.train import SourceConfig, _build, _merge
from dap.train.config import apply_overrides, config_source, read_yaml_mapping

STEPS = ("ingest", "stage1", "label1", "disc", "select", "stage2", "label3", "final")
# What each step is made from (stage 2 and final also start from the model before them, through select and label3)
MADE_FROM = {"ingest": (), "stage1": (), "label1": ("ingest", "stage1"), "disc": ("stage1",),
             "select": ("label1", "disc"), "stage2": ("select",), "label3": ("stage2", "ingest"), "final": ("label3",)}
# The label steps and the stage of the labels each makes (labels/<stage> in the pool)
LABEL_STAGES = {"label1": "stage1", "label3": "stage3"}
# The first step that uses each config section: changing a section is refused once that step is done
FIRST_USE = {"pool": "ingest", "labeled": "stage1", "stage1": "stage1", "label": "label1", "discriminator": "disc",
             "select": "select", "stage2": "stage2", "final": "final"}
SPEED_ONLY = ("label.batch_size", "label.num_workers")  # settings that change how fast a step runs, not its result


@dataclass
class PoolInput:
    path: str  # folder, file or glob of panoramas / 360° videos
    source: str | None = None  # source name (default: the folder's name)
    generated: bool = False  # generated panoramas (text-to-panorama output)
    tags: str | None = None  # CSV of indoor/outdoor tags (file, domain)


@dataclass
class PoolSection:
    inputs: list[PoolInput] = field(default_factory=list)
    every_s: float = 2.0
    pad_to_erp: bool = False
    max_width: int = 2048  # the defaults of the steps' own commands (dap curate ingest, label)
    min_width: int = 512
    dedupe_bits: int = 6
    max_tilt_deg: float = 8.0
    level: bool = False  # store panoramas tilted beyond max_tilt_deg levelled instead of rejecting them


@dataclass
class LabelSection:
    resolution: tuple[int, int] = (256, 512)  # the bundled labeler's own
    batch_size: int = 4
    num_workers: int = 2
    tta: bool = True
    outdoor_sky_fraction: float = 0.05


@dataclass
class DiscriminatorSection:
    data: list[SourceConfig] = field(default_factory=list)  # labeled panoramas the stage-1 labeler never saw
    samples: int = 64  # pairs built from `data`
    height: int = 128
    width: int = 256
    channels: int = 32
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    held_out: float = 0.25


@dataclass
class SelectSection:
    score: str = "disc"  # disc | tta | disc_tta
    keep: dict = field(default_factory=lambda: dict(PAPER_FRACTIONS))  # domain -> fraction (< 1) or count


@dataclass
class StageTraining:
    config: str | None = None  # a dap train YAML (relative to the curation config's folder or absolute)
    set: dict = field(default_factory=dict)  # dap train overrides, dotted key -> value (like --set key=value)
    pseudo_ratio: float = 1.0  # sampling weight of the pseudo-labels against the labeled sources' total


@dataclass
class CurateConfig:
    pool: PoolSection = field(default_factory=PoolSection)
    labeled: list[SourceConfig] = field(default_factory=list)  # labeled data of every training stage
    label: LabelSection = field(default_factory=LabelSection)
    discriminator: DiscriminatorSection = field(default_factory=DiscriminatorSection)
    select: SelectSection = field(default_factory=SelectSection)
    stage1: StageTraining = field(default_factory=StageTraining)
    stage2: StageTraining = field(default_factory=StageTraining)
    final: StageTraining = field(default_factory=StageTraining)
    base_dir: str = "."  # where relative paths of the config resolve (set by load_curate_config)


def load_curate_config(path: str | os.PathLike, overrides: list[str] | None = None) -> CurateConfig:
    p = Path(path)
    raw = read_yaml_mapping(p, "curation config", "configs/curate_tiny.yaml")
    full = _merge(asdict(CurateConfig()), raw)
    if isinstance(raw.get("select"), dict) and "keep" in raw["select"]:  # a mapping of values, not a section: as
        full["select"]["keep"] = raw["select"]["keep"]  # given (merged, a domain left out kept the default's share)
    apply_overrides(full, overrides, "label.batch_size=8", "labeled.0.ratio")
    try:
        cfg = _build(CurateConfig, full, "")
    except (ValueError, TypeError) as e:
        raise DapError(f"curation config {config_source(p, overrides)}: {e}") from e
    cfg.base_dir = str(p.resolve().parent)
    if not cfg.pool.inputs:
        raise DapError(f"curation config {p}: pool.inputs is empty; list folders of unlabeled panoramas")
    if not cfg.labeled:
        raise DapError(f"curation config {p}: `labeled` is empty; the labelers need labeled panoramas")
    if not cfg.discriminator.data:
        raise DapError(f"curation config {p}: discriminator.data is empty; give labeled panoramas that the "
                       "stage-1 labeler does not train on (e.g. a disjoint seed range of synthetic data)")
    # Settings the later steps use are checked now: a typo found after hours of stage-1 training costs those hours
    from dap.curation.selection import SCORES, keep_problem

    if cfg.select.score not in SCORES:
        raise DapError(f"curation config {p}: select.score must be one of {', '.join(SCORES)}, got "
                       f"{cfg.select.score!r}")
    if problem := resolution_problem(cfg.label.resolution):
        raise DapError(f"curation config {p}: label.resolution {problem}")
    if problem := keep_problem(cfg.select.keep, "select.keep"):
        raise DapError(f"curation config {p}: {problem}")
    if problem := _number_problem(cfg):
        raise DapError(f"curation config {p}: {problem}")
    if problem := options_problem(_ingest_options(cfg.pool), {k: f"pool.{k}" for k in OPTION_NAMES}):
        raise DapError(f"curation config {p}: {problem}")  # else found at the ingest step, in dap curate ingest's words
    stages = ("stage1", "stage2", "final")
    for name in stages:
        stage = getattr(cfg, name)
        if not (isinstance(stage.pseudo_ratio, (int, float)) and 0 <= stage.pseudo_ratio < math.inf):
            raise DapError(f"curation config {p}: {name}.pseudo_ratio must be a number >= 0, got "
                           f"{stage.pseudo_ratio!r}")
        try:
            tc = stage_train_config(cfg, stage, None, Path(cfg.base_dir))
        except DapError as e:
            raise DapError(f"curation config {p}: {name}: {e}") from e
        _check_init(tc.model.init, name, stages, Path(cfg.base_dir), p)
    return cfg


def _number_problem(cfg: CurateConfig) -> str | None:
    """The first numeric setting out of its range, in words; None if all are fine. Each failed only where it is
    used, the discriminator's after the whole of stage-1 training (a batch size of 0, steps 0, held_out 1)."""
    lab, disc = cfg.label, cfg.discriminator
    rules = [
        ("label.batch_size", lab.batch_size, lab.batch_size >= 1, "a whole number >= 1"),
        ("label.num_workers", lab.num_workers, lab.num_workers >= 0, "a whole number >= 0 (0: in-process)"),
        ("label.outdoor_sky_fraction", lab.outdoor_sky_fraction, 0 <= lab.outdoor_sky_fraction <= 1,
         "a fraction from 0 to 1"),
        ("pool.every_s", cfg.pool.every_s, cfg.pool.every_s > 0, "seconds > 0"),
        ("discriminator.samples", disc.samples, disc.samples >= 1, "a whole number >= 1"),
        ("discriminator.steps", disc.steps, disc.steps >= 1, "a whole number >= 1"),
        ("discriminator.batch_size", disc.batch_size, disc.batch_size >= 1, "a whole number >= 1"),
        ("discriminator.channels", disc.channels, disc.channels >= 1, "a whole number >= 1"),
        ("discriminator.lr", disc.lr, 0 < disc.lr < math.inf, "a learning rate > 0"),
        ("discriminator.held_out", disc.held_out, 0 <= disc.held_out < 1, "a fraction from 0 to below 1"),
    ]
    for name, value, ok, what in rules:
        if not ok or (isinstance(value, float) and math.isnan(value)):
            return f"{name} must be {what}, got {value!r}"
    if not (disc.height >= 1 and disc.width >= 1):
        return f"discriminator.height and width must be >= 1, got {disc.height} x {disc.width}"
    return None


def _check_init(init: str, name: str, stages: tuple[str, ...], base: Path, config: Path) -> None:
    """A stage starts from scratch, a named or existing model, or an earlier stage's model (found when it runs)."""
    from dap.models import registry

    earlier = {str(base / "runs" / s / "final"): s for s in stages}
    if init in earlier:
        if stages.index(earlier[init]) >= stages.index(name):
            raise DapError(f"curation config {config}: {name}: model.init {earlier[init]} is not made before {name}; "
                           "a stage starts from an earlier one's model (stage2 from stage1, final from stage1 or "
                           "stage2)")
    elif init not in ("scratch", "bundled", *registry.MODELS) and not Path(init).exists():
        raise DapError(f"curation config {config}: {name}: model.init {init} does not exist; use scratch, bundled, a "
                       "model name, a checkpoint path, or stage1/stage2 for an earlier stage's model")


def _dotted(d: dict, prefix: str = "") -> dict:
    """A nested mapping as one level of dotted keys ({"run": {"steps": 2}} -> {"run.steps": 2}); lists as they are."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _flat(d: dict) -> dict:
    """A nested config as one level of dotted keys (lists as JSON text), as a state file records it."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, dict)) else v
            for k, v in _dotted(d).items()}


def _shown(flat: dict, key: str) -> str:
    """A `_flat` config's value as the YAML had it: a list or mapping as its JSON text, unquoted; a key that
    one side lacks (`set: {}` against `set: {train.lr: 0.1}` flattens to other keys) is "not set"."""
    if key not in flat:
        return "not set"
    value = flat[key]
    return value if isinstance(value, str) and value.startswith(("[", "{")) else repr(value)


def _resolve(cfg: CurateConfig, path: str | None) -> str | None:
    if path is None or Path(path).is_absolute():
        return path
    return str(Path(cfg.base_dir) / path)


def _with_resolved_paths(cfg: CurateConfig) -> dict:
    """The config as a dict, every relative path resolved against its folder: the same `../data` next to a config
    moved elsewhere is other data, and a run's record must tell them apart."""
    d = {k: v for k, v in asdict(cfg).items() if k != "base_dir"}
    for item in d["pool"]["inputs"]:
        item.update(path=_resolve(cfg, item["path"]), tags=_resolve(cfg, item["tags"]))
    d["labeled"] = [asdict(s) for s in _sources(cfg, cfg.labeled)]
    d["discriminator"]["data"] = [asdict(s) for s in _sources(cfg, cfg.discriminator.data)]
    for name in ("stage1", "stage2", "final"):
        d[name]["config"] = _resolve(cfg, d[name]["config"])
        d[name]["config_sha256"] = _file_sha256(d[name]["config"])
    # what the files a path names hold, not only their names: an edited stage config or tag file was used by the
    # steps not yet done, beside the steps done with the old one, without a word
    d["pool"]["tags_sha256"] = [_file_sha256(item["tags"]) for item in d["pool"]["inputs"]]
    return d


def _file_sha256(path: str | None) -> str | None:
    import hashlib

    if not path or not os.path.isfile(path):
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _sources(cfg: CurateConfig, sources: list[SourceConfig]) -> list[SourceConfig]:
    out = []
    for s in sources:
        s = SourceConfig(**asdict(s))
        if s.kind in ("shards", "folder", "dataset") and s.path:
            s.path = _resolve(cfg, s.path)
        out.append(s)
    return out


def stage_train_config(cfg: CurateConfig, stage: StageTraining, pseudo: SourceConfig | None,
                       work: Path | None = None):
    """The dap train config of one stage: its YAML and overrides, data = labeled (+ pseudo-labels).
    model.init may name an earlier stage (stage1, stage2): its final model in `work` (fine-tuning chain)."""
    from dap.train import check_config, load_config

    # dotted: `dap curate run --set stage1.set.run.steps=2` nests {"run": {"steps": 2}} in `set`, which as one
    # override would replace the whole run section (its val_every, ckpt_every, ... back to the defaults)
    tc = load_config(_resolve(cfg, stage.config), [f"{k}={json.dumps(v)}" for k, v in _dotted(stage.set).items()])
    tc.data.sources = _sources(cfg, cfg.labeled)
    if pseudo is not None:
        pseudo.ratio = stage.pseudo_ratio * sum(s.ratio for s in tc.data.sources)
        tc.data.sources.append(pseudo)
    tc.data.val = _sources(cfg, tc.data.val)
    init = tc.model.init
    if init in ("stage1", "stage2"):
        if work is None:
            raise DapError(f"model.init: {init} needs the pipeline's work folder")
        tc.model.init = str(work / "runs" / init / "final")
    elif init not in ("scratch", "bundled") and not Path(init).is_absolute():
        tc.model.init = _resolve(cfg, init)
    check_config(tc)
    return tc


def discriminator_pairs(cfg: CurateConfig, labeler) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, fake) discriminator inputs: GT and the labeler's prediction for each of the first `samples`
    panoramas of discriminator.data, at the label resolution."""
    from dap.inference import DEFAULT_SEAM_PAD, prepare_input
    from dap.train import build_source, resize_sample, to_training_sample

    d = cfg.discriminator
    dcfg = DiscriminatorConfig(d.height, d.width, d.channels)
    h, w = cfg.label.resolution
    sources = [build_source(s, h, w) for s in _sources(cfg, d.data)]
    items = [(j, i) for j, s in enumerate(sources) for i in range(len(s))][:d.samples]
    real, fake = [], []
    for j, i in items:
        s = resize_sample(to_training_sample(sources[j][i], d.data[j].invalid_is_sky), h, w)
        x = prepare_input(s["rgb"], (h, w), next(labeler.parameters()).device)
        pred = label_batch(labeler, x, tta=False, seam_pad=DEFAULT_SEAM_PAD)
        p_depth, p_oor = pred["depth"][:, None].cpu(), pred["prob"][:, None].cpu() >= 0.5
        hole = ~s["valid"] & ~s["out_of_range"]  # no GT here: the prediction's value, so holes carry no signal
        g_depth = torch.where(hole[None], p_depth, s["depth"][None])
        g_oor = torch.where(hole[None], p_oor, s["out_of_range"][None])
        real.append(discriminator_input(s["rgb"][None], g_depth, g_oor, dcfg))
        fake.append(discriminator_input(s["rgb"][None], p_depth, p_oor, dcfg))
    if not real:
        raise DapError("discriminator.data holds no panoramas")
    return torch.cat(real), torch.cat(fake)


def _ingest_options(p: PoolSection, source: str | None = None, generated: bool = False,
                    tags: str | None = None) -> IngestOptions:
    """The ingest options of a config's pool section (and of one of its inputs)."""
    return IngestOptions(source=source, generated=generated, every_s=p.every_s, pad_to_erp=p.pad_to_erp,
                         max_width=p.max_width, min_width=p.min_width, dedupe_bits=p.dedupe_bits,
                         max_tilt_deg=p.max_tilt_deg, level=p.level, tags=tags)


class Pipeline:
    def __init__(self, cfg: CurateConfig, work: str | os.PathLike, progress: bool = True):
        # absolute: the training steps record their data and init paths, and a resume from another folder must
        # find them the same
        self.cfg, self.work, self.progress = cfg, Path(os.path.abspath(work)), progress
        self.pool = self.work / "pool"
        self.state_file = self.work / "state.json"

    def state(self) -> dict:
        if not self.state_file.exists():
            return {"done": {}}
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as e:
            state = e
        if not isinstance(state, dict) or not isinstance(state.get("done"), dict):
            raise DapError(f"{self.state_file} is damaged ({state if isinstance(state, Exception) else 'no steps'}); "
                           "it is only ever replaced whole, so it was changed outside dap: restore it, or delete it "
                           "to run every step again")
        return state

    def _mark(self, step: str, info: dict) -> None:
        state = self.state()
        state["done"][step] = {**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._save(state)

    def _save(self, state: dict) -> None:
        from dap.io import atomic_write

        with atomic_write(self.state_file) as tmp:
            tmp.write_text(json.dumps(state, indent=1))

    def run(self, stop_after: str | None = None) -> dict:
        if stop_after is not None and stop_after not in STEPS:
            raise DapError(f"--stop-after must be one of {', '.join(STEPS)}, got {stop_after!r}")
        from dap.io import folder_lock

        self.work.mkdir(parents=True, exist_ok=True)
        # one run in a work folder: a second would redo the steps that hold no lock of their own (the
        # discriminator, the selection) under the first one's feet, and both write state.json
        with folder_lock(self.work, "dap curate run"):
            return self._run(stop_after)

    def _run(self, stop_after: str | None) -> dict:
        for where, sources in (("labeled", self.cfg.labeled), ("discriminator.data", self.cfg.discriminator.data)):
            for i, src in enumerate(_sources(self.cfg, sources)):  # found missing after hours of stage 1, or ingest
                if src.kind in ("shards", "folder", "dataset") and not os.path.exists(src.path or ""):
                    raise DapError(f"{where}[{i}] ({src.kind} {src.path}) does not exist; fix the path in the "
                                   "curation config (relative paths are read from the config's folder)")
        state = self.state()
        config = _flat(_with_resolved_paths(self.cfg))
        as_written = _flat({k: v for k, v in asdict(self.cfg).items() if k != "base_dir"})  # state from before
        # A rerun may change what steps not yet done use, not what made the steps done (they would be kept silently)
        old = state.get("config", config)
        changed = [k for k in changed_keys(old, config) if old.get(k) != as_written.get(k)
                   and k not in SPEED_ONLY and FIRST_USE[k.split(".")[0]] in state["done"]]
        if changed:
            shown = "; ".join(f"{k}: {_shown(state['config'], k)} -> {_shown(config, k)}" for k in changed[:5])
            raise DapError(f"{self.work} holds steps done with another curation config ({shown}"
                           f"{'; ...' if len(changed) > 5 else ''}); use a new --work, or the config they were done "
                           "with")
        # the pool's rows, read once for the checks below (a manifest of millions of rows takes seconds to read)
        rows = read_manifest(self.pool) if (self.pool / MANIFEST).is_file() else []
        missing = next(((step, what) for step in STEPS if step in state["done"]
                        and (what := self._missing_output(step, rows))), None)
        if missing:  # deleted since (to free disk), or rows added to the pool: that step and those made from it again
            step, what = missing
            redo = [step]
            for later in STEPS[STEPS.index(step) + 1:]:
                if any(earlier in redo for earlier in MADE_FROM[later]):
                    redo.append(later)
            print(f"dap curate: step {step}: {what} missing; running {', '.join(redo)} again", file=sys.stderr)
            state["done"] = {k: v for k, v in state["done"].items() if k not in redo}
            for later in redo[1:]:  # made from what changes: made anew, not resumed (a finished training run
                self._set_aside(later)  # resumed as "nothing trained", keeping the model of the old selection)
        self._save({**state, "config": config})
        if "ingest" in state["done"]:
            self._note_new_inputs(rows)
        for step in STEPS:
            if step not in self.state()["done"]:
                t0 = time.monotonic()
                info = getattr(self, f"_{step}")()
                self._mark(step, {**info, "seconds": round(time.monotonic() - t0, 1)})
                print(f"dap curate: {step} done: {info}")  # also in a log, where no progress bar is drawn
            if step == stop_after:
                break
        return self.state()

    def _note_new_inputs(self, rows: list[dict]) -> None:
        """Files in pool.inputs that the pool does not hold: the ingest step is done, so a run does not add them
        (they were left out without a word); `dap curate ingest` does, and the steps made from the pool then run
        again."""
        from dap.curation.ingest import expand_sources
        from dap.io import utf8_text  # as the manifest stores paths

        held = {r["path"] for r in rows}
        for inp in self.cfg.pool.inputs:
            path = _resolve(self.cfg, inp.path)
            try:
                new = [f for f in expand_sources([path], self.pool) if utf8_text(os.path.abspath(f)) not in held]
            except DapError:  # the input is gone: the pool keeps its copies
                continue
            if new:
                print(f"dap curate: note: {path} holds {len(new)} file(s) the pool does not ({new[0].name}, ...), "
                      f"which this run leaves out; `{self._ingest_command(inp, path)}` adds them as the config's "
                      "pool settings say, and the next run redoes the steps made from the pool", file=sys.stderr)

    def _ingest_command(self, inp: PoolInput, path: str) -> str:
        """The `dap curate ingest` command that ingests `path` as the config's pool section and input `inp` say."""
        import shlex

        o, default = _ingest_options(self.cfg.pool, inp.source, inp.generated, _resolve(self.cfg, inp.tags)), \
            IngestOptions()
        words = ["dap curate ingest", shlex.quote(path), "--pool", shlex.quote(str(self.pool))]
        words += [f"{flag} {getattr(o, k):g}" for k, flag in OPTION_NAMES.items()
                  if getattr(o, k) != getattr(default, k)]
        words += [flag for flag, on in (("--pad-to-erp", o.pad_to_erp), ("--level", o.level),
                                        ("--generated", o.generated)) if on]
        words += [f"{flag} {shlex.quote(str(v))}" for flag, v in (("--source", o.source), ("--tags", o.tags)) if v]
        return " ".join(words)

    def _set_aside(self, step: str) -> None:
        """Move what `step` made before to <its folder>.replaced (the one there before goes), so that it is made
        again from scratch: a training run, or a stage's label files."""
        import shutil

        old = self._folder(step)
        if old is None or not old.exists():
            return
        aside = old.with_name(old.name + ".replaced")
        shutil.rmtree(aside, ignore_errors=True)
        old.rename(aside)
        print(f"dap curate: {step} is made again from what changed: its earlier {old.name} is in {aside}",
              file=sys.stderr)

    def _folder(self, step: str) -> Path | None:
        """The folder a training or label step makes (a training run, a stage's label files); None for the others."""
        if step in ("stage1", "stage2", "final"):
            return self.work / "runs" / step
        return self.pool / "labels" / LABEL_STAGES[step] if step in LABEL_STAGES else None

    def _missing_output(self, step: str, rows: list[dict]) -> str | None:
        """What a done step made that is no longer there, in words; None if all of it is. `rows`: the pool's."""
        if step == "ingest":
            return None if (self.pool / MANIFEST).is_file() else str(self.pool / MANIFEST)
        if step in ("stage1", "stage2", "final"):
            final = self._folder(step) / "final"
            return None if (final / "config.json").is_file() else f"the model {final}"
        if step == "disc":
            return None if (self.work / "discriminator").is_dir() else f"{self.work / 'discriminator'}"
        if step in LABEL_STAGES:
            stage = LABEL_STAGES[step]
            # a row without its label file (rows added to the pool), or whose file the manifest does not name (a row
            # rejected for its lost image and ingested again keeps its file, unmerged, and was left out for good)
            gone = sum(1 for r in rows if r["status"] == "ok"
                       and not (r[f"{stage}_label"] and (self.pool / label_path(stage, r["id"])).is_file()))
            return f"the {stage} labels of {gone} accepted row(s)" if gone else None
        return None

    # --- steps -------------------------------------------------------------------------------------------
    def _ingest(self) -> dict:
        p = self.cfg.pool
        totals: dict[str, int] = {}
        for inp in p.inputs:
            opts = _ingest_options(p, inp.source, inp.generated, _resolve(self.cfg, inp.tags))
            counts = ingest([_resolve(self.cfg, inp.path)], self.pool, opts, progress=self.progress)
            totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
        # not done: stage 1 would train for a pool that fails at label1
        if not any(r["status"] == "ok" for r in read_manifest(self.pool)):
            raise DapError(f"no panorama of pool.inputs was accepted into the pool ({totals}); see why with `dap "
                           f"curate status --pool {self.pool}`, then fix pool.inputs (or min_width, max_tilt_deg) in "
                           "the config and run again")
        return totals

    def _train(self, name: str, stage: StageTraining, pseudo: SourceConfig | None) -> dict:
        from dap.train import train

        tc = stage_train_config(self.cfg, stage, pseudo, self.work)
        tc.run.progress = self.progress
        try:
            result = train(tc, self.work / "runs" / name, resume=True)
        except ModelChangedError as e:  # its advice is dap train's (<out>/config.yaml, a new --out): said in ours
            raise RunExistsError(f"{name} was begun with another model than the curation config now gives it "
                                 f"({'; '.join(e.changes)}); run with the config it was begun with, or use a new "
                                 "--work") from None
        except DivergedError as e:  # "resume with --resume --set ...": dap train's options, not ours
            raise DivergedError(f"{name}: {e.what}. Lower its learning rates "
                                f"(--set {name}.set.optim.lr_head=..., or the config's {name}.set) or set "
                                f"{name}.set.optim.grad_clip, or check the data, then run again: the run goes on from "
                                "its last checkpoint with the new settings", e.what) from None
        return {"steps": result.step, "model": str(self.work / "runs" / name / "final")}

    def _stage1(self) -> dict:
        return self._train("stage1", self.cfg.stage1, None)

    def _label(self, stage: str, model_dir: Path) -> dict:
        lab = self.cfg.label
        opts = LabelOptions(resolution=tuple(lab.resolution), batch_size=lab.batch_size, num_workers=lab.num_workers,
                            tta=lab.tta, outdoor_sky_fraction=lab.outdoor_sky_fraction)
        return label_pool(self.pool, str(model_dir), stage, opts, progress=self.progress)

    def _label1(self) -> dict:
        return self._label("stage1", self.work / "runs/stage1/final")

    def _disc(self) -> dict:
        from dap.inference import select_device
        from dap.models import load_model

        d = self.cfg.discriminator
        device = select_device()  # the GPU where there is one, as for labeling
        labeler = load_model(self.work / "runs/stage1/final", device).eval()
        real, fake = discriminator_pairs(self.cfg, labeler)
        model, metrics = train_discriminator(
            real, fake, DiscriminatorConfig(d.height, d.width, d.channels),
            DiscriminatorTraining(steps=d.steps, batch_size=d.batch_size, lr=d.lr, held_out=d.held_out),
            progress=self.progress, device=device)
        save_discriminator(model, self.work / "discriminator", metrics)
        return metrics

    def _select(self) -> dict:
        from dap.curation.discriminator import load_discriminator

        scored = score_pool(self.pool, load_discriminator(self.work / "discriminator"), progress=self.progress)
        kept = select_pool(self.pool, dict(self.cfg.select.keep), self.cfg.select.score)
        return {"scored": scored, "selected": kept}

    def _stage2(self) -> dict:
        pseudo = SourceConfig(kind="pseudo", path=str(self.pool), label_stage="stage1", selected_only=True)
        return self._train("stage2", self.cfg.stage2, pseudo)

    def _label3(self) -> dict:
        return self._label("stage3", self.work / "runs/stage2/final")

    def _final(self) -> dict:
        pseudo = SourceConfig(kind="pseudo", path=str(self.pool), label_stage="stage3")
        return self._train("final", self.cfg.final, pseudo)
