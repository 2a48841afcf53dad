"""Named models: `dap.load_model("dap-vitl")`, `dap predict --model dap-vitl`, `dap models`.

A name maps to weights bundled with the package or to a file on the Hugging Face Hub. Hub files are fetched with
`huggingface_hub.hf_hub_download`, so its cache, resumable downloads, progress bar and `HF_HUB_OFFLINE=1` all
apply; a file already in that cache is used without a network request. An official-format `model.pth` is then
loaded once with the strict loader, checked against the architecture the name promises, and written in our format
(safetensors + config.json) to `<cache>/converted/<name>/<commit>/`, so every later load is fast and never
unpickles. `<cache>` is `$DAP_CACHE`, else `$HF_HOME/dap` (beside the Hub cache, not inside it, where `hf cache`
tools would report it as corrupt).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from dap.errors import CheckpointError
from dap.models import MODEL_CONFIGS
from dap.models.dap import DapConfig

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    config: DapConfig  # the architecture the weights must load into (checked when a download is converted)
    description: str
    size: str  # download size (bundled: size in the package)
    licence: str
    bundled: str | None = None  # folder under dap/weights/, or
    repo_id: str | None = None  # a Hub model repository holding
    filename: str = "model.pth"  # this file (its main branch)

    @property
    def source(self) -> str:
        return f"bundled (dap/weights/{self.bundled})" if self.bundled else f"hf.co/{self.repo_id}/{self.filename}"


MODELS: dict[str, RegisteredModel] = {m.name: m for m in (
    RegisteredModel(
        name="dap-tiny-synth",
        # The working resolution and the calibration (experiments/bundled_model.py) ship in its config.json
        config=dataclasses.replace(MODEL_CONFIGS["dap_tiny"], default_resolution=(256, 512), range_threshold=0.999,
                                   depth_scale=0.95, latitude_scale=(1.14, 1.01, 0.94, 0.91, 0.91, 1.0, 1.09, 1.31),
                                   range_min_region=0.01),
        description="default; trained on `dap synth` panoramas only, on CPU then GPU (see docs/models.md)",
        size="10 MB", licence="Apache-2.0 (this package)", bundled="dap_tiny_synth",
    ),
    RegisteredModel(
        name="dap-vitl",
        config=MODEL_CONFIGS["dap_vitl"],
        description="the official DAP release (Insta360 Research), the paper's model",
        size="1.46 GB", licence="the authors' terms on the Hub model card", repo_id="Insta360-Research/DAP-weights",
    ),
)}


def get(name: str) -> RegisteredModel:
    if name not in MODELS:
        raise CheckpointError(f"unknown model name {name!r}; known names: {', '.join(MODELS)} (see `dap models`)")
    return MODELS[name]


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("DAP_CACHE") or Path(constants.HF_HOME) / "dap")


def weights_path(name: str, *, again: bool = False) -> Path:
    """Local folder in our checkpoint format holding the weights of a registered model; downloads and converts
    them the first time, and with `again` (the conversion there cannot be loaded: damaged since)."""
    entry = get(name)
    if entry.bundled:
        return BUNDLED_DIR / entry.bundled
    pth = _download(entry)
    # hf_hub_download returns <cache>/snapshots/<commit>/<filename>: the commit names this exact file version.
    out = cache_dir() / "converted" / entry.name / pth.parent.name
    if again or not (out / "config.json").exists():
        shutil.rmtree(out, ignore_errors=True)  # a damaged conversion, or what is left of one
        # and the temporaries of conversions killed while writing (a copy of the weights each); one younger than an
        # hour may be another process's, converting now
        if out.parent.is_dir():
            from dap.io import remove_temporaries

            remove_temporaries(out.parent, older_than_s=3600)
        _convert(entry, pth, out)
    return out


def _download(entry: RegisteredModel) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    where = f"{entry.filename} of the Hub repository {entry.repo_id}"
    # A cached copy is used without asking the Hub whether a newer one exists: that question alone took 23 s of
    # retries on a machine without a network (and waited on every run); `hf download --force-download` refreshes.
    cached = huggingface_hub.try_to_load_from_cache(entry.repo_id, entry.filename)
    if isinstance(cached, str):
        return Path(cached)

    def not_here(why: str) -> CheckpointError:
        return CheckpointError(
            f"{entry.name}: {where} is not in the Hugging Face cache and cannot be downloaded now ({why} fetch it on "
            f"a connected machine with `hf download {entry.repo_id} {entry.filename}` and copy its Hugging Face "
            "cache here (HF_HOME / HF_HUB_CACHE)), or pass the file's path instead of the name."
        )

    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    if not offline and not _resolves(urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname):
        # the library retries for 23 s whatever the error, a name that does not resolve too
        raise not_here("the Hub's address does not resolve: no network or no DNS here;")
    download = huggingface_hub.hf_hub_download  # imported lazily, and the import sets the library's log level
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # offline, it logs each failed request ("... thrown while requesting HEAD")
    try:
        return Path(download(entry.repo_id, entry.filename))
    except LocalEntryNotFoundError as e:
        raise not_here("HF_HUB_OFFLINE is set, so nothing is downloaded: unset it on a connected machine, or"
                       if offline else "the Hub cannot be reached from here:") from e
    except (OSError, EntryNotFoundError, ValueError) as e:  # HTTP errors, missing repo/file, disk full
        raise CheckpointError(f"{entry.name}: could not fetch {where}: {type(e).__name__}: {e}") from e
    finally:
        hub_log.setLevel(level)


def _resolves(host: str | None) -> bool:
    """Whether `host` has an address (a DNS lookup, no connection); True for no host (nothing to check)."""
    import socket

    try:
        return host is None or bool(socket.getaddrinfo(host, 443))
    except (socket.gaierror, UnicodeError):
        return False


def _convert(entry: RegisteredModel, pth: Path, out: Path) -> None:
    from dap.io import temporary_path
    from dap.models.checkpoint import load_model, save_model

    try:
        model = load_model(pth)  # the strict loader: every key and shape must match
    except CheckpointError as e:  # a damaged download: asking again would only reuse the cached copy
        raise CheckpointError(f"{entry.name}: the cached {pth} cannot be used ({e}). Fetch it again with `hf download "
                              f"{entry.repo_id} {entry.filename} --force-download` (or remove it with `hf cache "
                              "delete`: deleting the snapshot's link alone brings the same file back)") from e
    if model.cfg != entry.config:
        raise CheckpointError(
            f"{pth} holds a network with config {model.cfg}, not the {entry.config} that {entry.name!r} stands "
            "for; the file on the Hub may have changed. Pass its path instead of the name if you trust it."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its final place, then renamed: a reader (or a second process) sees all of it or nothing.
    tmp = temporary_path(out)  # a name remove_temporaries knows, for what a kill leaves
    tmp.mkdir(mode=0o755)  # readable to others, as a shared cache must be
    try:
        save_model(model, tmp, training={"converted_from": f"{entry.source}@{out.name}", "registered_as": entry.name})
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").exists():  # else a concurrent conversion finished first: same result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
