"""`torchrun -m dap.train ...` (or `python -m dap.train ...`): the `dap train` command."""

import sys

if __name__ == "__main__":  # guarded: importing this module (e.g. to list the package) must not run or load the CLI
    from dap.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
