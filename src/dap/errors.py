"""Exceptions and warnings users can catch. Every message says what is wrong and what to do about it."""

import contextlib
import math
import numbers
import sys
import warnings
from collections.abc import Iterator


class DapError(Exception):
    """Base class of every error this package raises on purpose."""


class NotPanoramaError(DapError, ValueError):
    """The image is not a 2:1 equirectangular panorama."""


class UnreadableFileError(DapError, OSError):
    """A file is missing, truncated, or not in a format we can decode."""


class NoValidDepthError(DapError, ValueError):
    """A depth map has no valid (finite, positive) pixel."""


class DepthUnitError(DapError, ValueError):
    """A depth file stores integers without saying how many metres one unit is (a 16-bit PNG without its scale)."""


class CheckpointError(DapError, ValueError):
    """A checkpoint is missing, has the wrong keys or shapes, or is in an unknown format."""


class DatasetLayoutError(DapError, FileNotFoundError):
    """A dataset root does not have the on-disk layout its loader expects."""


class RunExistsError(DapError, FileExistsError):
    """An output folder already holds a run (training, curation) that a new run would overwrite."""


class ModelChangedError(RunExistsError):
    """A run's checkpoint holds another model than the config now gives it: `changes`, each "key: old -> new"."""

    def __init__(self, message: str, changes: list[str]):
        super().__init__(message)
        self.changes = changes


class ConfigError(DapError, ValueError):
    """A config file or a command-line value is invalid: unknown key, wrong type, bad YAML, value out of range."""


class DivergedError(DapError, FloatingPointError):
    """Training produced a loss that is not a finite number: `what` says which and where (the message adds what to
    do, in dap train's words)."""

    def __init__(self, message: str, what: str):
        super().__init__(message)
        self.what = what


class PeerFailedError(DapError, RuntimeError):
    """Another process of a torchrun job failed (and printed its own error); this one stops without a traceback."""


class InputWarning(UserWarning):
    """An input that can be processed but whose result is doubtful (NaN pixels, a panorama a few pixels across).
    `dap predict` reports each one with the file it came from."""


class SettingWarning(UserWarning):
    """A setting that runs but gives doubtful results: a calibrated model at a working resolution other than its
    own. Commands say it once themselves and ignore it from the library."""


def warn_input(message: str) -> None:
    """An `InputWarning` pointing at the caller's line: the first frame outside dap and torch (its decorators), however
    deep in the library the input was judged (`dap.predict`, `to_rgb` called directly, a batch)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("dap.", "torch.")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, InputWarning, stacklevel=level)


@contextlib.contextmanager
def collect_input_warnings() -> Iterator[list[str]]:
    """The texts of the `InputWarning`s raised inside, every one of them (not once per code location), for the
    caller to report with what only it knows (the file, how many samples); filled on leaving, also when the body
    raises. Other warnings go on, on leaving, as Python shows them."""
    texts: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            yield texts
    finally:
        for w in caught:
            if issubclass(w.category, InputWarning):
                texts.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def is_whole(value) -> bool:
    """Whether a config's value is a Python int and not a bool (`true` would be 1): the test behind every "is a whole
    number" message of a model config."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value, finite: bool = True) -> bool:
    """Whether a user's value is a real number (int, float or a numpy scalar; not a bool, a string or an array),
    finite unless told: the test behind every "must be a number" message."""
    # numpy's bool is not a numbers.Real; Python's is (bool subclasses int)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and (not finite or math.isfinite(value))
