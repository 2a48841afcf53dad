"""`dap train`: train or fine-tune DAP from a YAML config, in one process or under torchrun (see dap.train).

Under torchrun: `torchrun --nproc-per-node N -m dap.cli train --config ... --out ...` (`-m dap.train` too).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dap.cli import folder_name, positive_float, positive_int
from dap.train import SourceConfig, load_config, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config (YAML), e.g. configs/tiny_cpu.yaml")
    parser.add_argument("--out", default=None, type=folder_name, help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in <out>/checkpoints (starts fresh if there is none, "
                             "unless <out> holds a trained model: then it is refused)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr_head=1e-4 --set data.batch_size=8")
    parser.add_argument("--stop-at", type=positive_int, default=None, metavar="STEP",
                        help="checkpoint and stop after this step (continue later with --resume)")
    parser.add_argument("--time-limit", type=positive_float, default=None, metavar="MINUTES",
                        help="checkpoint and stop after this many minutes (continue later with --resume)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.data.sources == [SourceConfig()] and int(os.environ.get("RANK", 0)) == 0:
        print(f"dap train: note: {args.config} gives no data.sources: training on the default, "
              f"{cfg.data.sources[0].size} analytic boxy rooms (kind rooms); configs/ has real recipes",
              file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = train(cfg, out, resume=args.resume, stop_at=args.stop_at, time_limit_min=args.time_limit)
    if int(os.environ.get("RANK", 0)) == 0:
        where = f"model in {out / 'final'}" if result.finished else f"checkpoint in {out / 'checkpoints'}"
        print(f"dap train: {'finished' if result.finished else 'stopped'} at step {result.step}; {where}")
    return 0
