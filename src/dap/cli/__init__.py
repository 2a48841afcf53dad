"""`dap` command line: a thin layer over the Python API.

One module per command (`dap.cli.predict`, `dap.cli.eval`, ...), each with `add_arguments(parser)` and
`run(args) -> int` (the exit code); this module holds `main`, the argument types, the output checks and the one
error policy. A command's module is imported only when that command runs, so `dap --help` loads no torch.
"""

from __future__ import annotations

import argparse
import errno
import glob
import importlib
import os
import re
import select
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

# name -> (module under dap.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("predict", "Predict metric depth for panoramas (files, folders, globs, videos)."),
    "models": ("models", "List the named weights (source, size, licence) and the architectures."),
    "convert": ("convert", "Convert an official DAP model.pth to our format."),
    "demo": ("demo", "Start the browser demo: upload a panorama, see depth, normals and a 3-D point cloud."),
    "export": ("export", "Export a model to ONNX (fixed or dynamic input size) for onnxruntime and others."),
    "eval": ("eval", "Evaluate a checkpoint or saved predictions on a depth benchmark."),
    "synth": ("synth", "Render procedural 360° panoramas with exact metric depth into tar shards."),
    "train": ("train", "Train or fine-tune DAP from a YAML config (single process or under torchrun)."),
    "curate": ("curate", "Data-in-the-loop curation: ingest, pseudo-label, score, select, run."),
}


def _size(text: str, multiple: int = 1, panorama: bool = False) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 512x1024, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive, e.g. 512x1024")
    if panorama and w != 2 * h:
        up = -(-h // multiple) * multiple  # the suggestion must pass the next check too
        raise argparse.ArgumentTypeError(f"size {text!r} is not 2:1 (HEIGHTxWIDTH); use e.g. {up}x{2 * up}")
    if h % multiple or w % multiple:
        up = -(-h // multiple) * multiple
        raise argparse.ArgumentTypeError(f"size {text!r} must be multiples of {multiple} (the ViT patch); use e.g. "
                                         f"{up}x{up * 2 if panorama else -(-w // multiple) * multiple}")
    return h, w


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for sizes written HEIGHTxWIDTH, e.g. 512x1024 (both positive)."""
    return _size(text)


def parse_panorama_size(text: str) -> tuple[int, int]:
    """argparse type for a panorama size HEIGHTxWIDTH: positive and 2:1."""
    return _size(text, panorama=True)


def parse_network_size(text: str) -> tuple[int, int]:
    """argparse type for a network input size HEIGHTxWIDTH: 2:1 and multiples of 16."""
    return _size(text, multiple=16, panorama=True)


def _number(cast, text: str, what: str, ok) -> int | float:
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value != value or not ok(value):  # NaN fails every range
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, "an integer >= 1", lambda v: v >= 1)


def nonnegative_int(text: str) -> int:
    return _number(int, text, "an integer >= 0", lambda v: v >= 0)


def port_number(text: str) -> int:
    return _number(int, text, "a port number from 1 to 65535", lambda v: 1 <= v <= 65535)


def package_source(text: str) -> str:
    """Another checkout's `src/` folder, for the benchmarks' --against: it must hold the dap package, or importing
    "dap" from it would silently find this one and time it as "before"."""
    if not (Path(text) / "dap" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text} holds no dap package (dap/__init__.py); pass the src/ folder of "
                                         "another checkout, e.g. after `git archive <commit> src | tar -x -C DIR`: "
                                         "DIR/src")
    return text


def comma_list(parse):
    """An argparse type: comma-separated values, each checked by `parse` (an argparse type)."""
    def parse_all(text: str) -> list:
        values = [parse(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return values
    return parse_all


def positive_float(text: str) -> float:
    return _number(float, text, "a number > 0", lambda v: 0 < v < float("inf"))


def camera_height(text: str) -> float:
    """Metres from the floor to the lens: positive, below `dap.inference.MAX_CAMERA_HEIGHT`."""
    from dap.inference import MAX_CAMERA_HEIGHT

    return _number(float, text, f"a number of metres > 0 and below {MAX_CAMERA_HEIGHT:g}",
                   lambda v: 0 < v < MAX_CAMERA_HEIGHT)


def share(text: str) -> float:
    return _number(float, text, "a share from 0 to 1", lambda v: 0 <= v <= 1)


def smoothing_weight(text: str) -> float:
    """A moving average's weight on the past, from 0 (off) to below 1 (1 would never let a new value in)."""
    return _number(float, text, "a number from 0 up to (not including) 1", lambda v: 0 <= v < 1)


def folder_name(text: str) -> str:
    """An output folder or file as given, refused when empty: `--out "$DIR"` with DIR unset wrote into the current
    folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); give a folder, or . for this one")
    return text


def folder_path(text: str) -> Path:
    return Path(folder_name(text))


def file_path(text: str) -> Path:
    """An output file as given, refused when empty (`--out "$FILE"` with FILE unset)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); give a file name")
    return Path(text)


def parse_device(text: str) -> str:
    """A torch device that exists on this machine: cpu, cuda, cuda:N, mps (`dap.inference.select_device`'s rule)."""
    from dap.errors import DapError
    from dap.inference import select_device

    try:
        select_device(text)
    except DapError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _dash_file_hint(args: list[str]) -> str:
    """For arguments argparse took as unknown options that are files (-pano.jpg): how to pass them."""
    files = [a for a in args if a.startswith("-") and a != "-" and os.path.isfile(a)]
    if not files or "--" in args:
        return ""
    return f"; {files[0]} is a file, read as an option because of its leading '-': write it as ./{files[0]}"


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (the usage is one --help away), exit code 2 as argparse has it."""

    _args: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._args = list(sys.argv[1:] if args is None else args)  # for error(): the files among them
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{_dash_file_hint(self._args)}; see {self.prog} --help\n")


class _Commands(argparse._SubParsersAction):
    """Subcommands whose arguments are added once the command is chosen: only its module gets imported."""

    def __call__(self, parser, namespace, values, option_string=None):
        command = self._name_parser_map.get(values[0])
        if command is not None and command.get_default("_module") is None:
            module = importlib.import_module(f"dap.cli.{COMMANDS[values[0]][0]}")
            module.add_arguments(command)
            command.set_defaults(_module=module)
        super().__call__(parser, namespace, values, option_string)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says its default, or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        if isinstance(action.default, tuple) and len(action.default) == 2:  # a size, written as it is typed
            return f"{text} (default: {action.default[0]}x{action.default[1]})"
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dap", description="Depth Any Panoramas: metric depth for 360° panoramas.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
    return parser


# Where each command writes: (option, "dir" | "file"). Checked before the command runs; folders a command owns
# are cleaned of the temporaries a killed run left (see dap.io.atomic_write for their names).
OUTPUTS: dict[str, tuple[str, str]] = {
    "predict": ("out", "dir"), "eval": ("out", "dir"), "synth": ("out", "dir"), "train": ("out", "dir"),
    "convert": ("out", "dir"), "export": ("out", "file"),
}


def check_output(path: Path, kind: str, option: str = "--out") -> None:
    """Refuse an output path the command could not write, before any work: a file where a folder is needed (or
    the reverse), or a folder without write permission."""
    from dap.errors import ConfigError

    path = Path(path)
    what = f"cannot write to the output {'folder' if kind == 'dir' else 'file'} {path}"
    try:
        if path.is_symlink() and not path.exists():  # mkdir would say "File exists"
            raise ConfigError(f"{what}: it is a symbolic link to {os.readlink(path)}, which does not exist; create "
                              f"that folder or choose another {option}")
        if kind == "dir" and path.exists() and not path.is_dir():
            raise ConfigError(f"{what}: it is a file; choose a folder for {option}")
        if kind == "file" and path.is_dir():
            raise ConfigError(f"{what}: it is a folder; give a file name, e.g. {path / 'model.onnx'}")
        # the folder that will hold the output: a file is replaced by a rename in its folder
        existing = path if kind == "dir" else path.parent
        while not existing.exists():
            existing = existing.parent
    except OSError as e:
        raise ConfigError(f"{what}: {e.strerror or e}; choose another {option}") from None
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: no write permission in {existing}; choose another {option}")


def _prepare_outputs(args: argparse.Namespace) -> None:
    option, kind = OUTPUTS.get(args.command, (None, None))
    if option is None:
        return
    value = getattr(args, option, None)
    path = Path(value) if value else Path("runs")  # dap train's default is runs/<config name>
    check_output(path, kind, "OUT" if args.command == "convert" else "--" + option)  # convert: a positional
    # The output folders of predict, eval, synth and train are cleaned of killed runs' temporaries by the run that
    # holds them (`dap.io.folder_lock`); an ONNX file and a converted model are written beside their place.
    if args.command in ("export", "convert") and path.parent.is_dir():
        from dap.io import STALE_AFTER_S, TEMPORARY_NAME

        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
            if TEMPORARY_NAME.fullmatch(tmp.name) and time.time() - tmp.lstat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _os_error(e: OSError, args: argparse.Namespace) -> str:
    where = e.filename or getattr(args, "out", None)
    if e.filename and (temporary := re.fullmatch(r"\.(.+)\.[0-9a-f]{12}\.tmp(\.[^.]*)?", Path(e.filename).name)):
        where = Path(e.filename).with_name(temporary[1])  # atomic_write's temporary: name the file being written
    at = f", {where}" if where else ""
    # the option naming the folder written to: --pool (curate ingest, label, score, select, status), --work, --out
    option = next((f"--{name}" for name in ("out", "pool", "work") if getattr(args, name, None)), "")
    option = "output folder" if getattr(args, "command", None) == "convert" else option  # its `out` is positional
    other = f" or choose another {option}" if option else ""
    limit = _file_size_limit()
    if e.errno == errno.EFBIG:
        return (f"a file would pass this process's file size limit{f' ({limit} bytes)' if limit else ''}{at}; raise it "
                f"(ulimit -f unlimited){other}")
    if limit and re.search(r"\d+ requested and \d+ written", str(e)):
        return (f"a file was cut short{at}: this process's file size limit ({limit} bytes, ulimit -f) or a full "
                f"disk; raise the limit (ulimit -f unlimited) or free some space{other}")
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or re.search(r"\d+ requested and \d+ written", str(e)):
        # (the second: numpy's words for a short write, with no error number; with no file size limit, a full disk)
        return f"no space left on device{at}; free some space{other}"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{(e.strerror or 'permission denied').lower()}{at}; check the permissions{other}"
    return f"{(e.strerror or str(e)).lower()}{at}; check the path and that the disk is healthy"


def _file_size_limit() -> int | None:
    """This process's largest file in bytes (`ulimit -f`), None when unlimited or unknown (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it), as opposed to a broken pipe
    somewhere else (a worker process, a socket), which is a real error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (captured stdout)
        return False


def _quiet_decoders() -> None:
    """Keep the decoders' own messages out of a command's output, where each bad file already gets one line of
    ours: FFmpeg's log (e.g. "moov atom not found" for a cut-short .mp4, read by OpenCV when it opens its first
    video), Pillow's "Corrupt EXIF data" and its "decompression bomb" warning above 89 MP (a 16K panorama is
    134 MP; past 179 MP Pillow refuses and dap.io says what to do). Process-wide, so set here for the command's
    own process, not in the library; before any thread starts (warning filters are shared). A user's
    OPENCV_FFMPEG_LOGLEVEL wins."""
    import warnings

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # its decoders' "[ERROR] ... can't read header" lines
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    warnings.filterwarnings("ignore", message="Corrupt EXIF data")  # Pillow's, of a file that still reads


def _printable_file_names() -> None:
    """A file name that is not UTF-8 reaches Python with its bytes as surrogates; printed to a strict UTF-8 stdout
    (a desktop's en_US.UTF-8 locale) it would end the run. Escape them, as Python already does on stderr."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", None) == "strict":
            stream.reconfigure(errors="backslashreplace")


def _without_worker_traceback(text: str) -> str:
    """The message of an error raised in a DataLoader worker, which torch re-raises here with the worker's whole
    traceback in front of it ("Caught X in DataLoader worker process 0. Original Traceback ...: X: message")."""
    if "Original Traceback (most recent call last):" not in text:
        return text
    raised = list(re.finditer(r"^[\w.]+(Error|Exception): ", text, re.MULTILINE))  # the traceback's last line
    return text[raised[-1].end():] if raised else text


def _lost_a_peer(e: RuntimeError) -> bool:
    """Whether a torchrun process's error is a collective cut off by another process that failed (which prints
    its own error): gloo's and NCCL's words for a peer that went away."""
    peers = ("connection closed by peer", "connection reset by peer", "broken pipe", "nccl communicator was aborted")
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and any(p in str(e).lower() for p in peers)


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that what a command writes is cleaned up as after Ctrl-C
    (temporary files removed by `dap.io.atomic_write`, threads stopped) instead of the process dying mid-write."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run a command. Exit codes: 0 done, 1 some inputs failed or a write failed (disk full, I/O error), 2 bad
    arguments or input (one line: what, which file, how to fix), 130 interrupted, 141 (quietly) stdout closed by
    its reader. Other exceptions are bugs and keep their traceback."""
    try:
        args, extra = build_parser().parse_known_args(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command started: nothing to clean up, nothing to report
        return 130
    name = " ".join(["dap", args.command, *filter(None, [getattr(args, "curate_command", None)])])
    if extra:  # reported here, where the command (and curate's step) is known, rather than by the top-level parser
        print(f"{name}: error: unrecognized arguments: {' '.join(extra)}{_dash_file_hint(extra)}; see {name} --help",
              file=sys.stderr)
        sys.exit(2)
    from dap.errors import DapError, SettingWarning

    _quiet_decoders()
    _printable_file_names()
    main_thread = threading.current_thread() is threading.main_thread()
    # `timeout`, `kill`, docker stop: clean up as after Ctrl-C; the caller's handler is put back afterwards
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        _prepare_outputs(args)
        with warnings.catch_warnings():  # each command says it once itself, as a note, not once per input
            warnings.simplefilter("ignore", SettingWarning)
            code = int(args._module.run(args) or 0)
        sys.stdout.flush()  # output still buffered for a closed pipe fails here, under the policy below
        return code
    except DapError as e:
        from dap.errors import ConfigError

        if isinstance(e, ConfigError) and int(os.environ.get("RANK", 0)) > 0:
            return 2  # every torchrun process reads the same config: rank 0 says it, once
        print(f"{name}: error: {' '.join(_without_worker_traceback(str(e)).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except RuntimeError as e:
        if not _lost_a_peer(e):
            raise
        print(f"{name}: stopped: another process of this run failed (its error is printed above)", file=sys.stderr)
        return 1
    except OSError as e:
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            # The reader went away (`dap models | head`): stop quietly, as command-line tools do, with the
            # status of a process ended by SIGPIPE. stdout goes to devnull so Python's exit flush stays quiet too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        print(f"{name}: error: {_os_error(e, args)}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
