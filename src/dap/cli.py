"""`dap` command line: a thin layer over the Python API.

Each subcommand lives with the module that owns it; that module provides
`add_arguments(parser)` and `run_cli(args) -> int` (the exit code). "module:function" names another
function of the module that adds the arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module that owns it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("dap.inference", "Predict metric depth for panoramas (files, folders, globs, videos)."),
    "models": ("dap.models", "List the named weights (source, size, licence) and the architectures."),
    "convert": ("dap.models:add_convert_arguments", "Convert an official DAP model.pth to our format."),
    "export": ("dap.export", "Export a model to ONNX (fixed or dynamic input size) for onnxruntime and others."),
    "eval": ("dap.evaluation", "Evaluate a checkpoint or saved predictions on a depth benchmark."),
    "synth": ("dap.data.synthetic", "Render procedural 360° panoramas with exact metric depth into tar shards."),
    "train": ("dap.train", "Train or fine-tune DAP from a YAML config (single process or under torchrun)."),
    "curate": ("dap.curation.command", "Data-in-the-loop curation: ingest, pseudo-label, score, select, run."),
}


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for sizes written HEIGHTxWIDTH, e.g. 512x1024."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 512x1024, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dap", description="Depth Any Panoramas: metric depth for 360° panoramas.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target, help_text) in SUBCOMMANDS.items():
        module_name, _, adder = target.partition(":")
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        getattr(module, adder or "add_arguments")(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dap.errors import DapError

    try:
        return int(args._module.run_cli(args) or 0)
    except DapError as e:
        print(f"dap {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
