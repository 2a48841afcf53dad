"""`dap convert`: an official DAP model.pth to our format (model.safetensors + config.json)."""

from __future__ import annotations

import argparse

from dap.models import count_parameters, load_model, save_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official model.pth (with or without the `module.` prefix)")
    parser.add_argument("out", help="output directory for model.safetensors + config.json")


def run(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint)
    out = save_model(model, args.out, training={"converted_from": str(args.checkpoint)})
    print(f"wrote {out}/model.safetensors and config.json ({model.cfg.name}, "
          f"{count_parameters(model)['total'] / 1e6:.1f}M parameters)")
    return 0
