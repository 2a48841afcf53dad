"""`python -m dap`: the `dap` command."""

import sys

from dap.cli import main

sys.exit(main())
