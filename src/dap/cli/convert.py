"""`dap convert`: an official DAP model.pth to our format (model.safetensors + config.json)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dap.cli import folder_name
from dap.errors import DapError
from dap.models import count_parameters, load_model, save_model
from dap.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official model.pth (with or without the `module.` prefix)")
    parser.add_argument("out", type=folder_name,
                        help="output directory for model.safetensors + config.json (new or empty, or one that holds "
                             "only an earlier conversion of `dap convert`, which is replaced)")


def _model_config(folder: Path) -> dict | None:
    """The config of a folder that holds nothing but a model in our format (its two files, the config saying so: a
    Hugging Face model folder has the same two names); None for any other folder."""
    if not folder.is_dir() or {p.name for p in folder.iterdir()} - {CONFIG_FILE, WEIGHTS_FILE}:
        return None
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("format") == "dap" else None


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    empty = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty:
        config = _model_config(out)
        if config is None:
            raise DapError(f"{out} exists and is not a model folder of ours ({CONFIG_FILE} saying \"format\": "
                           f"\"dap\", and {WEIGHTS_FILE}): choose a new output folder (a conversion stopped before "
                           f"writing its {CONFIG_FILE} leaves {WEIGHTS_FILE} alone in an empty one: delete it)")
        if os.path.exists(args.checkpoint) and os.path.samefile(args.checkpoint, out):
            raise DapError(f"{out} is the model to convert; write the conversion to another folder")
        made = config.get("training")
        if not (isinstance(made, dict) and "converted_from" in made):  # a trained model: not ours to replace
            raise DapError(f"{out} is a model that `dap convert` did not write (a trained or downloaded one), and a "
                           "conversion replaces only an earlier conversion: choose a new output folder")
    model = load_model(args.checkpoint)
    from dap.io import atomic_folder

    training = {"converted_from": str(args.checkpoint)}
    if empty:  # nothing to keep: written in place ('.', a link to a folder), the config last
        save_model(model, out, training=training)
    else:  # an interrupted conversion leaves the earlier folder or the new one, never new weights beside an old config
        with atomic_folder(out) as tmp:
            save_model(model, tmp, training=training)
    print(f"wrote {out}/{WEIGHTS_FILE} and {CONFIG_FILE} ({model.cfg.name}, "
          f"{count_parameters(model)['total'] / 1e6:.1f}M parameters)")
    return 0
