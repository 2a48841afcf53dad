"""One-line errors for the experiment scripts: a DapError (a missing data folder, a path that is no model) or an
OSError (a file that is not there) is about the arguments, and a traceback hid the line that says so."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from dap.errors import DapError


def run(main: Callable[[], object]) -> None:
    """Run a script's `main`, its exit status that of `main` (None: 0), an error in the arguments one line."""
    try:
        sys.exit(main())
    except (DapError, OSError) as e:
        what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and not isinstance(e, DapError) \
            and e.filename else str(e)
        sys.exit(f"{Path(sys.argv[0]).name}: error: {' '.join(what.split())}")
