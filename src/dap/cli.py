"""`dap` command line: a thin layer over the Python API.

Each subcommand lives with the module that owns it; that module provides
`add_arguments(parser)` and `run_cli(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module that owns it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dap", description="Depth Any Panoramas: metric depth for 360° panoramas.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
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
