"""Checkpoint formats: the official `model.pth` and ours (safetensors weights + JSON config).

Ours is a directory holding `model.safetensors` and `config.json`:
    {"format": "dap", "format_version": 1, "model": DapConfig.to_dict(),
     "units": {...}, "training": {...free-form provenance...}}
Loading is always strict: missing or unexpected keys are an error that lists them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any

import torch

from dap.errors import CheckpointError, DapError
from dap.models.dap import DAP, DapConfig
from dap.models.dinov3 import architecture, convert_dinov3_state_dict, describe, is_dinov3_state_dict
from dap.models.official import (
    convert_official_state_dict,
    is_official_state_dict,
    official_config,
    read_official_checkpoint,
)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def _key_list(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" ... (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def load_state_dict_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, *,
                           arch: str | None = None, assign: bool = True) -> None:
    """assign=True adopts the file's tensors (no copy; for a model built on the meta device); False copies them
    into the model's own (keeping its dtype)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    # whole numbers where the network has a float weight: torch says only that they cannot require gradients
    kinds = [f"{k} {str(sd[k].dtype).removeprefix('torch.')}, not a float" for k in own
             if k in sd and own[k].is_floating_point() and not sd[k].is_floating_point()]
    if missing or unexpected or wrong or kinds:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_key_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_key_list(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches: {_key_list(wrong)}")
        if kinds:
            parts.append(f"{len(kinds)} tensors of the wrong type: {_key_list(kinds)}")
        raise CheckpointError(
            f"{source} does not match the {arch or model.cfg.name} architecture: " + "; ".join(parts)
            + ". Check that the checkpoint and the model variant belong together."
        )
    model.load_state_dict(sd, strict=True, assign=assign)


def release_file_pages(tensors) -> None:
    """Give the memory pages of these CPU tensors back to the kernel where they lie in a weights file's mapping
    (`load_model` maps .safetensors files, torch.load(mmap=True) .pt ones), for tensors about to be replaced. The
    mapping is shared by all of the file's tensors and stays until the last of them goes; until then each page read
    counts as the process's memory, so converting weights one by one held the whole float32 file and the new copies
    at once. Only pages entirely inside a tensor's bytes; one read again comes back from the file. Linux only."""
    import ctypes
    import mmap

    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return
    maps = []
    for line in lines:  # address range, permissions (private mappings: 'p'), offset, device, inode, path
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[1].endswith("p") and parts[5].endswith((".safetensors", ".pt", ".pth")):
            maps.append(tuple(int(v, 16) for v in parts[0].split("-")))
    if not maps or not hasattr(mmap, "MADV_DONTNEED"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    for t in tensors:
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        first, last = -(-start // page) * page, end // page * page
        if t.device.type == "cpu" and last > first and any(lo <= start and end <= hi for lo, hi in maps):
            libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)


def check_finite(model: DAP, source: Path) -> None:
    """Refuse NaN/inf weights (e.g. from a run that diverged): they would silently make every depth NaN."""
    # A sum is non-finite when any element is (or, rarely, when it overflows: then the exact check decides);
    # it is ~10x cheaper than an elementwise check, which matters for the 1.4 GB official weights.
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v.sum()) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} weight tensors hold NaN or infinite values ({_key_list(bad)}); the checkpoint "
            "is corrupt or from a run that diverged. Use an earlier checkpoint."
        )


def _float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` with 16-bit float weights as float32 (float32 ones as they are, not copied). Weights may be stored in
    16 bit (half the download, as the bundled model is); a loaded model computes in float32 and inference picks its
    own precision."""
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _load_ours(directory: Path, weights: Path | None = None) -> DAP:
    """A model folder: config.json with model.safetensors, or with `weights`, another .safetensors file beside it
    (a training run's earlier weights, say)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = weights or directory / WEIGHTS_FILE
    config_path = directory / CONFIG_FILE
    again = "copy or download the model folder again (config.json and model.safetensors belong together)"
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the model config {config_path}: {e}; {again}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{config_path} has no 'model' section: it is not the config.json of a model folder "
                              f"written by dap (save_model, `dap convert`, `dap train`); {again}")
    if not isinstance(version := meta.get("format_version", FORMAT_VERSION), int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format_version {version!r}; this dap reads up to "
                              f"{FORMAT_VERSION}. Upgrade dap (pip install -U depth-any-panoramas) to load it.")
    try:
        cfg = DapConfig.from_dict(meta["model"])
        with torch.device("meta"):  # weights come from the file: skip the random init
            model = DAP(cfg)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"the model config in {config_path} is not valid: {e}; {again}") from e
    if not weights.is_file():
        raise CheckpointError(f"{directory} has {CONFIG_FILE} but no {weights.name}; {again}")
    try:
        sd = load_file(weights)
        with safe_open(weights, "pt") as f:
            weights_id = (f.metadata() or {}).get("save_id")
    except Exception as e:
        raise CheckpointError(f"cannot read weights {weights}: {e}; the file is damaged or cut short: {again}") from e
    if weights.name == WEIGHTS_FILE and None not in (weights_id, meta.get("save_id")) and weights_id != meta["save_id"]:
        raise CheckpointError(f"{config_path} and {weights} were written by different saves (one was interrupted, "
                              f"or one file was copied over from another model); {again}")
    load_state_dict_strict(model, _float32(sd), str(weights if weights.name != WEIGHTS_FILE else directory))
    check_finite(model, weights)
    model.checkpoint_info = meta
    return model


def _training_checkpoint(path: Path) -> dict | None:
    """The contents of a `dap train` checkpoint (checkpoints/step_*.pt), or None for another file. Mapped, not read:
    only the model's tensors are touched."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # read before as a state dict: this cannot be a training checkpoint
        return None
    keys = ("version", "step", "model", "config")
    return ckpt if isinstance(ckpt, dict) and all(k in ckpt for k in keys) else None


def _load_training_checkpoint(path: Path, ckpt: dict) -> DAP:
    """The network of a `dap train` checkpoint, with the weights validation and final/ use: the EMA's when the run
    keeps one. Its architecture is the one the checkpoint records (older checkpoints: the run's config, when the
    run started from scratch)."""
    from dap.models import model_config

    train_cfg = ckpt["config"].get("model", {}) if isinstance(ckpt["config"], dict) else {}
    if "model_config" not in ckpt and (train_cfg.get("init") or "scratch") != "scratch":
        raise CheckpointError(
            f"{path} is a `dap train` checkpoint from before checkpoints recorded their model's architecture, of a "
            f"run that started from {train_cfg.get('init')}: resume the run to its end (its final/ folder is the "
            "model), or load that model")
    try:
        if "model_config" in ckpt:
            cfg = DapConfig.from_dict(ckpt["model_config"])
        else:  # a run from scratch: its config names the architecture
            cfg = model_config(train_cfg.get("name", ""), **(train_cfg.get("overrides") or {}))
        with torch.device("meta"):
            model = DAP(cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"the model config recorded in {path} is not valid: {e}") from e
    sd = ckpt["model"]
    if isinstance(ckpt.get("ema"), dict):  # torch's AveragedModel: the network under "module.", plus a counter
        sd = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    load_state_dict_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    check_finite(model, path)
    model.checkpoint_info = {"format": "dap train checkpoint", "source": str(path), "step": int(ckpt["step"]),
                             "ema": isinstance(ckpt.get("ema"), dict)}
    return model


def _load_official(path: Path) -> DAP:
    sd = read_official_checkpoint(path)
    if is_dinov3_state_dict(sd):
        raise CheckpointError(
            f"{path} holds a DINOv3 {describe(*architecture(sd, str(path)))} backbone without depth heads, not a "
            "DAP model; train from it with model.init: <this file> (docs/training.md)"
        )
    if not is_official_state_dict(sd):
        if (training := _training_checkpoint(path)) is not None:
            return _load_training_checkpoint(path, training)
        raise CheckpointError(
            f"{path} is a state dict but not in the official DAP layout (no 'core.' keys). Our own checkpoints "
            f"are directories with {WEIGHTS_FILE} and {CONFIG_FILE}, or `dap train` checkpoints (step_*.pt)."
        )
    sd = convert_official_state_dict(sd)
    with torch.device("meta"):
        model = DAP(DapConfig(**official_config(sd)))
    load_state_dict_strict(model, _float32(sd), str(path))
    check_finite(model, path)
    model.checkpoint_info = {"format": "official", "source": str(path)}
    return model


def is_dinov3_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a file holding a DINOv3 backbone state dict (Meta's layout). Reads only the keys."""
    if not Path(path).is_file():
        return False
    try:
        return is_dinov3_state_dict(read_official_checkpoint(Path(path), mmap=True))
    except CheckpointError:  # not a state dict: the loader it goes to says what it is
        return False


def init_backbone_from_dinov3(model: DAP, path: str | os.PathLike) -> None:
    """Copy a DINOv3 checkpoint (Meta's layout, dap.models.dinov3) into `model`'s backbone, strictly: a variant
    other than the model's, a missing or unexpected key or a shape mismatch is an error. The heads are untouched."""
    sd = read_official_checkpoint(Path(path), mmap=True)
    if not is_dinov3_state_dict(sd):
        raise CheckpointError(f"{path} is not a DINOv3 backbone checkpoint (no cls_token / patch_embed.proj.weight)")
    width, depth = architecture(sd, str(path))
    vit = model.cfg.vit
    if (width, depth) != (vit.embed_dim, vit.depth):
        from dap.models import MODEL_CONFIGS

        fits = [n for n, c in MODEL_CONFIGS.items() if (c.vit.embed_dim, c.vit.depth) == (width, depth)]
        raise CheckpointError(
            f"{path} holds a DINOv3 {describe(width, depth)}, but model.name is {model.cfg.name}, a "
            f"{describe(vit.embed_dim, vit.depth)}; "
            + (f"set model.name: {fits[0]}" if fits else "no model of ours has that backbone")
        )
    load_state_dict_strict(model.backbone, convert_dinov3_state_dict(sd), str(path),
                           arch=f"{model.cfg.name} backbone", assign=False)
    check_finite(model.backbone, Path(path))


def _download_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    repo = spec.removeprefix("hf:")
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.pth", "*.safetensors", "*.json"]))
    except Exception as e:
        raise CheckpointError(
            f"could not fetch {repo!r} from the Hugging Face Hub ({type(e).__name__}: {e}). Offline? Download "
            "the checkpoint on a connected machine and pass its local path."
        ) from e


def _name_hint(spec: str) -> str:
    """" Did you mean <name>?" for a near miss of a registered name, and what an architecture name is."""
    import difflib

    from dap.io import is_url
    from dap.models import MODEL_CONFIGS, registry

    names, key = list(registry.MODELS), spec.lower().replace("_", "-")
    alike = ([n for n in names if n == key] or [n for n in names if key and n.startswith(key)]
             or difflib.get_close_matches(key, names, n=1, cutoff=0.9))
    hint = f" Did you mean {alike[0]}?" if alike else ""
    hub = re.match(r"^https?://(?:www\.)?huggingface\.co/([^/]+/[^/]+)", spec)
    if hub:
        hint += f" A Hugging Face Hub repository is given as hf:{hub.group(1)}."
    elif is_url(spec):
        hint += " URLs are not downloaded: download the file and pass its path."
    if spec in MODEL_CONFIGS:
        hint += (f" ({spec} is an architecture, for `dap.create_model` and training configs; it has no weights of "
                 "its own.)")
    return hint


def load_model(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> DAP:
    """Load a DAP model in eval mode from a registered name (`dap models`, e.g. "dap-vitl"; fetched and converted
    on first use), our checkpoint directory, its config/weights file, an official `model.pth`, a `dap train` run
    folder or one of its checkpoints (checkpoints/step_*.pt), or `hf:<repo>` (online only). Names win over paths:
    write `./dap-vitl` for a folder of that name. `device`: as for `dap.predict` (None: CUDA, else MPS, else the
    CPU)."""
    from dap.inference import select_device
    from dap.models import registry

    if isinstance(path, torch.nn.Module):  # its repr is the whole network, hundreds of lines
        raise CheckpointError(f"got a {type(path).__name__} module: it is loaded already, use it as it is (load_model "
                              "takes a model name, a folder or a checkpoint file)")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise CheckpointError(f"expected a model name ({', '.join(registry.MODELS)}), a folder or a checkpoint file, "
                              f"got {path!r:.80}; dap.load_model('dap-tiny-synth') loads the bundled model")
    device = select_device(device)  # a mistyped device is said before the weights load, not after
    spec = str(path)
    if spec in registry.MODELS:
        p = registry.weights_path(spec)
    else:
        p = _download_hub(spec) if spec.startswith("hf:") else Path(path)
    if not p.exists():
        given = p if spec in registry.MODELS else spec  # as typed: a Path would fold a URL's // into /
        raise CheckpointError(
            f"checkpoint {given} does not exist and is not a model name ({', '.join(registry.MODELS)}). Pass a "
            f"name, the official model.pth or a directory written by `dap convert`/`dap train`.{_name_hint(spec)}"
            + (f" ('~' is not expanded: pass {os.path.expanduser(spec)})" if spec.startswith("~") else "")
        )
    if p.is_dir():
        if (p / CONFIG_FILE).exists():
            try:
                model = _load_ours(p)
            except CheckpointError:
                if spec not in registry.MODELS or registry.get(spec).bundled:
                    raise
                # our conversion of the download, damaged since (a disk, a cleanup): made again from the download
                model = _load_ours(registry.weights_path(spec, again=True))
        elif (p / "final" / CONFIG_FILE).exists() and (p / "checkpoints").is_dir():  # a `dap train` run: its model
            model = _load_ours(p / "final")
        elif (p / "checkpoints").is_dir() and (p / "config.yaml").is_file():  # a run stopped before its end
            from dap.train.checkpoints import list_checkpoints

            if not (ckpts := list_checkpoints(p)):
                raise CheckpointError(f"{p} is a `dap train` run without a model yet: no final/ and no checkpoint")
            try:
                model = _load_official(ckpts[-1])  # the newest; the dispatch there recognises it
            except CheckpointError:  # not a download: "download it again" was the wrong fix
                earlier = f", or pass the one before, {ckpts[-2]}" if len(ckpts) > 1 else ""
                raise CheckpointError(f"the newest checkpoint of the run {p}, {ckpts[-1].name}, cannot be read: "
                                      "damaged, or cut short (a kill, a full disk). Delete it (`dap train --resume` "
                                      f"goes on from the one before){earlier}") from None
        else:
            pths = sorted(p.glob("*.pth"))
            if not pths:
                if (p / WEIGHTS_FILE).exists():  # config.json lost or not copied
                    raise CheckpointError(f"{p} has {WEIGHTS_FILE} but no {CONFIG_FILE}: our weights are read with "
                                          f"the config written beside them; copy {CONFIG_FILE} from where the model "
                                          "came from")
                raise CheckpointError(f"{p} holds neither {CONFIG_FILE}+{WEIGHTS_FILE} nor a .pth checkpoint")
            if len(pths) > 1:
                raise CheckpointError(f"{p} holds {len(pths)} .pth files ({_key_list([q.name for q in pths])}); "
                                      f"pass the one to load, e.g. {pths[0]}")
            model = _load_official(pths[0])
    elif p.name == CONFIG_FILE:
        model = _load_ours(p.parent)
    elif p.suffix == ".safetensors":
        if not (p.parent / CONFIG_FILE).is_file():
            raise CheckpointError(f"{p} has no {CONFIG_FILE} beside it: our weights files are loaded with the "
                                  f"model folder's config; copy {CONFIG_FILE} next to it (or pass the folder)")
        model = _load_ours(p.parent, p)
    elif p.suffix.lower() == ".onnx":
        raise CheckpointError(f"{p} is an ONNX graph, not a PyTorch checkpoint: predict with it through "
                              "`dap predict --backend onnxruntime --model <file.onnx>` (Python: dap.export.OnnxModel)")
    else:
        model = _load_official(p)
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as e:  # torch's words for a device this machine lacks
        raise DapError(f"cannot put the model on {device}: {e}; use cpu, or a device this machine has") from None


def save_model(model: DAP, directory: str | os.PathLike, training: dict[str, Any] | None = None, *,
               dtype: torch.dtype | None = None) -> Path:
    """Write our format (weights + config) atomically; returns the directory. `dtype` (e.g. torch.float16)
    stores the floating-point weights in that type; loading always gives a float32 model."""
    from safetensors.torch import save_file

    from dap.io import atomic_write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    meta = {
        "format": "dap",
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "units": {"depth": "metres (distance along the ray)", "max_depth": model.cfg.max_depth,
                  "out_of_range_prob": "probability that the pixel is sky or beyond max_depth"},
        "training": training or {},
    }
    # The same random id in both files: a save interrupted between the two renames leaves a pair that loading
    # refuses instead of new weights read with an older config (another architecture or calibration).
    meta["save_id"] = secrets.token_hex(8)
    with atomic_write(directory / WEIGHTS_FILE) as tmp:
        save_file(sd, str(tmp), metadata={"format": "dap", "name": model.cfg.name, "save_id": meta["save_id"]})
        os.chmod(tmp, 0o644)  # safetensors creates owner-only files; weights are meant to be shared
    with atomic_write(directory / CONFIG_FILE) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return directory
