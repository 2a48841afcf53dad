"""`dap models`: the named weights and the architectures."""

from __future__ import annotations

import argparse

import torch

from dap.models import MODEL_CONFIGS, count_parameters, create_model
from dap.models.registry import MODELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`dap models` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    print("Named weights: dap.load_model(NAME), dap predict --model NAME")
    print(f"{'name':<16} {'architecture':<12} {'size':>8}  source")
    for m in MODELS.values():
        print(f"{m.name:<16} {m.config.name:<12} {m.size:>8}  {m.source}")
        print(f"{'':<16} {m.description}; licence: {m.licence}")
    print("\nArchitectures: dap.create_model(NAME) (random weights)")
    print(f"{'model':<10} {'embed':>5} {'blocks':>6} {'backbone':>10} {'depth head':>11} {'range head':>11} "
          f"{'total':>10}")
    for name in MODEL_CONFIGS:
        with torch.device("meta"):  # shapes only: no memory, no random init
            model = create_model(name)
        c = count_parameters(model)
        print(f"{name:<10} {model.cfg.vit.embed_dim:>5} {model.cfg.vit.depth:>6} {c['backbone'] / 1e6:>9.2f}M "
              f"{c['depth_head'] / 1e6:>10.2f}M {c['range_head'] / 1e6:>10.2f}M {c['total'] / 1e6:>9.2f}M")
    return 0
