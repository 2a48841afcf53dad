"""Reading and writing every file format the package uses: images, depth maps, masks, normals, point clouds.

Nothing else in the package decodes or encodes files. Every write is atomic (temp file + ``os.replace``), so a
crash or Ctrl-C never leaves a half-written file under the final name.

Depth conventions: float32 metres along the ray, invalid = 0. On read, NaN, inf, values <= 0 and sentinels
>= ``DEPTH_SENTINEL`` (datasets mark sky with 1e10) all become 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import math
import numbers
import os
import re
import shutil
import struct
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import OpenEXR
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from dap.errors import DapError, DepthUnitError, NoValidDepthError, UnreadableFileError
from dap.geometry import check_erp_shape, solid_angle_weights

PathLike = str | os.PathLike

DEPTH_SENTINEL = 1e9
"""Depth values at or above this are sentinels (e.g. 1e10 for sky), read as invalid (0)."""

SCALE_KEY = "dap:metres_per_unit"
"""PNG text chunk where ``write_depth`` stores the metres per 16-bit unit of a depth PNG."""

_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, RuntimeError, zipfile.BadZipFile, cv2.error)


# --------------------------------------------------------------------------------------------- writing


def temporary_path(path: Path, token: str | None = None) -> Path:
    """Where `atomic_write` writes `path` first: ".<name>.<12 hex>.tmp<suffix>" beside it (`token`: the 12 hex
    characters, a fresh random one by default). Its name is the longest a write of `path` needs."""
    token = uuid.uuid4().hex[:12] if token is None else token
    return path.with_name(f".{path.name}.{token}.tmp{path.suffix}")


def lock_path(folder: PathLike) -> Path:
    """The file `folder_lock` locks for `folder`: in the user's own folder of the system's temporary folder (/tmp is
    shared), named by the folder's real path."""
    import hashlib
    import tempfile

    name = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"dap-locks-{os.getuid()}" / f"{name}.lock"


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str) -> Iterator[None]:
    """Hold `folder` for this process while the block runs; another process asking for it meanwhile gets a
    DapError naming `what` holds it. Two runs writing one output folder at once (two `dap train --out run`, two
    ingests into one pool) would mix or lose each other's files. The lock is a file in the system's temporary
    folder, named by the folder's real path, so nothing is left in the user's folder (and deleted as its holder
    lets go, so nothing piles up there either); it guards one machine.
    Once held, the temporaries killed runs left under the folder are removed (`remove_temporaries`, those older than
    STALE_AFTER_S: a command that takes no lock may be writing a younger one); a refused run touches nothing."""
    import fcntl

    path = lock_path(folder)
    _check_private(path.parent)
    while True:
        try:  # not through a link (a private folder has none; a lock file is never one)
            f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "r+")
        except OSError as e:
            raise DapError(f"cannot open the lock file {path} ({e.strerror}); remove it") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise DapError(f"{folder} is in use by {holder}; wait for it to finish, or choose another folder") from None
        # The holder before us deletes the file as it lets go (so lock files do not pile up): a lock taken on a
        # file no longer at `path` guards nothing, since a third process would create and lock a new one there.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        f.close()
    with f:
        f.seek(0)
        f.truncate()
        f.write(f"{what} (process {os.getpid()})")
        f.flush()
        _HELD_LOCKS.add(f.fileno())
        if os.path.isdir(folder):
            remove_temporaries(folder, older_than_s=STALE_AFTER_S)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(f.fileno())
            path.unlink(missing_ok=True)  # while still held: whoever opens `path` next makes a new file
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_private(folder: Path) -> None:
    """Make the lock folder, or refuse one that another user could write in: its name is predictable in a shared
    temporary folder, and a lock file planted there as a link would have dap empty the file it points at."""
    import stat

    folder.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    why = ("is a symbolic link" if stat.S_ISLNK(st.st_mode) else "is not a folder" if not stat.S_ISDIR(st.st_mode)
           else f"belongs to another user (uid {st.st_uid})" if st.st_uid != os.getuid()
           else "can be written by other users" if st.st_mode & 0o022 else None)
    if why:
        raise DapError(f"the lock folder {folder} {why}, so others could plant files in it that dap would write "
                       "through; remove it, or set TMPDIR to a folder of your own")


# The lock files `folder_lock` holds in this process. A forked child (a DataLoader worker) shares each one's lock
# until every copy of the descriptor is closed, so one left orphaned by a killed run kept the folder "in use" for
# seconds; the child closes its copies at once (without unlocking: that would free the parent's lock too).
_HELD_LOCKS: set[int] = set()


def _forget_held_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_forget_held_locks)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The body must create the file at the yielded path. Parent directories are created. If the body raises,
    the temporary file is removed and any existing file at ``path`` is left untouched. The temporary name
    keeps ``path``'s suffix, so writers that pick a format or append a suffix by extension (``np.save``)
    behave.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh random name instead of mkstemp: mkstemp makes 0600 files, and the final file should get the
    # user's normal permissions. Same directory so os.replace stays a rename on one filesystem.
    tmp = temporary_path(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_write: the body did not create {tmp}; {path} was not written")
        # Flush to disk before the rename so a power loss cannot leave an empty file under the final name.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is not None and Path(e.filename) == tmp:  # name the file asked for, not our temporary
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside `path` to fill; on success it replaces `path` (a folder, or nothing). Killed at
    any point, it leaves the earlier folder or the new one, never a mix and never neither: between the two renames
    the earlier one waits under a backup name (".<name>.<12 hex>.old"), which the next call for `path` puts back if
    `path` is missing; the temporary is one `remove_temporaries` removes. A symbolic link's target is replaced
    (the link was renamed aside, the target left as it was); the folder this process is in cannot be."""
    path = Path(os.path.realpath(path))
    if Path.cwd().is_relative_to(path):
        raise DapError(f"{path} is the folder this command runs in (or holds it), which it would replace; run it "
                       "from another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    backups = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.old")
               if re.fullmatch(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.old", p.name)]
    if backups and not path.exists():  # killed between the renames: the earlier folder is the one there was
        max(backups, key=lambda p: p.stat().st_mtime).rename(path)
    for stale in (p for p in backups if os.path.lexists(p)):  # killed after them
        _remove(stale)
    token = uuid.uuid4().hex[:12]
    tmp, backup = temporary_path(path, token), path.with_name(f".{path.name}.{token}.old")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            path.rename(backup)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(backup)


def _remove(path: Path) -> None:
    """A folder with what it holds, or a file (what stood where `atomic_folder` writes: a user's file, with
    --overwrite)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


STALE_AFTER_S = 60
"""Temporaries younger than this may belong to a run still writing them (one that takes no folder lock)."""

# atomic_write's and atomic_folder's temporaries (".<name>.<12 hex>.tmp[.suffix]"), and the cubemap folders of dap
# predict before 2026-11-28 (".<name>.cube.tmp")
TEMPORARY_NAME = re.compile(r"\..+\.([0-9a-f]{12}\.tmp(\.[^.]*)?|cube\.tmp)")


def remove_temporaries(folder: PathLike, *, older_than_s: float = 0.0) -> int:
    """Remove the hidden temporaries (files and folders) that a killed run left anywhere under `folder`, but not in
    a sub-folder another run holds (`folder_lock`: an evaluation into <folder>/ev fills its panels folder for as long
    as it runs); with `older_than_s`, only those last modified longer ago (younger ones may belong to a run still
    writing). Returns how many were removed."""
    removed = 0
    now = time.time()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not lock_path(Path(root) / d).exists()]
        for name in [*files, *dirs]:
            path = Path(root) / name
            try:
                if not TEMPORARY_NAME.fullmatch(name) or (older_than_s and now - path.lstat().st_mtime <= older_than_s):
                    continue
                if name in dirs:
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
            except OSError:
                pass  # not ours to fight over; the run reports real write problems itself
        dirs[:] = [d for d in dirs if not TEMPORARY_NAME.fullmatch(d)]
    return removed


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 stays as is; floats are taken as [0, 1] (NaN as 0; the over- and undershoot of a resampled or augmented
    image clipped) and rounded. Floats far outside, beyond [-1, 2], are an error: colours in 0-255 held as floats
    would otherwise all come out saturated."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} has dtype {x.dtype}; pass uint8 in [0, 255] or floats in [0, 1]")
    f = np.nan_to_num(x.astype(np.float32), posinf=np.inf, neginf=-np.inf)
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if lo < -1 or hi > 2:
        raise ValueError(f"{what} are floats from {lo:g} to {hi:g}; floats are taken as 0 to 1: divide 0-255 values by "
                         "255, or pass them as uint8")
    return np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)


def _save_pil(path: PathLike, image: Image.Image, **save_kwargs) -> None:
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path}; use a .png or .jpg extension")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        raise ValueError(f"JPEG cannot store a {image.mode} image ({path}); use a .png extension")
    if fmt == "PNG":  # zlib level 1: a 1024x512 depth preview in 85 ms instead of 285 ms (level 6), 18% larger
        save_kwargs.setdefault("compress_level", 1)
    with atomic_write(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)


def write_rgb(path: PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array or float array in [0, 1] as an 8-bit image; format by extension."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_rgb expects an (H, W, 3) array, got shape {rgb.shape}")
    kwargs = {"quality": 95} if Path(path).suffix.lower() in (".jpg", ".jpeg") else {}
    _save_pil(path, Image.fromarray(_to_uint8(rgb, "rgb"), mode="RGB"), **kwargs)


def write_mask_png(path: PathLike, mask: np.ndarray) -> None:
    """Write an (H, W) boolean mask as an 8-bit PNG: True = 255, False = 0."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"write_mask_png expects an (H, W) mask, got shape {mask.shape}")
    _save_pil(path, Image.fromarray(mask.astype(bool).view(np.uint8) * np.uint8(255), mode="L"))


def write_normals_png(path: PathLike, normals: np.ndarray) -> None:
    """Write (H, W, 3) normals in [-1, 1] as RGB, mapping [-1, 1] -> [0, 255]; zero or non-finite -> black."""
    n = np.asarray(normals, dtype=np.float32)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"write_normals_png expects (H, W, 3) normals, got shape {n.shape}")
    missing = ~np.isfinite(n).all(axis=2) | (n == 0).all(axis=2)
    rgb = _to_uint8((np.nan_to_num(n) + 1.0) * 0.5, "normals")
    rgb[missing] = 0
    _save_pil(path, Image.fromarray(rgb, mode="RGB"))


# ---------------------------------------------------------------------------------------------- images


def _pillow_decodes(suffix: str) -> bool:
    """Whether this install's Pillow opens files of `suffix` (AVIF, HEIF: it depends on the build and plugins)."""
    return Image.registered_extensions().get(suffix) in Image.OPEN


# Image formats people have panoramas in that this package does not decode, and what to do with each
UNSUPPORTED_FORMATS = {
    **dict.fromkeys((s for s in (".heic", ".heif", ".avif") if not _pillow_decodes(s)), "a HEIF/AVIF image, which "
                    "this install does not decode: convert it to JPEG or PNG first"),
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"), "a camera raw file: develop "
                    "and export it as JPEG, PNG or TIFF first"),
    ".insp": "an Insta360 photo, the camera's two unstitched fisheye images: export an equirectangular JPEG from "
             "Insta360 Studio or the app first",
    ".insv": "an Insta360 video, the camera's two unstitched fisheye views: export an equirectangular MP4 from "
             "Insta360 Studio or the app first",
}


def is_url(text: str) -> bool:
    """Whether `text` is written as a URL (scheme://...), which this package never downloads."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", text, flags=re.IGNORECASE) is not None


def unsupported_format(path: PathLike) -> str | None:
    """What a file of a known but unsupported panorama format is and how to convert it (by its suffix); else None."""
    return UNSUPPORTED_FORMATS.get(Path(path).suffix.lower())


# ISO 'ftyp' brands of still images (HEIF, AVIF) -> the suffix such a file has
HEIF_BRANDS = {**dict.fromkeys((b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"), ".heic"),
               **dict.fromkeys((b"avif", b"avis"), ".avif")}


def _heif_suffix(path: PathLike) -> str | None:
    """".heic" or ".avif" for a file whose first bytes are those of a HEIF or AVIF image, whatever its name."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    return HEIF_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None


def _holds_video(path: PathLike) -> bool:
    """Whether a file's first bytes are those of a video container: MP4/MOV/3GP (an ISO box 'ftyp' of a video
    brand; HEIF/AVIF images share the box), AVI, Matroska/WebM, MPEG transport stream (a sync byte every 188 bytes,
    or 192 in a Blu-ray/AVCHD .m2ts)."""
    if not os.path.isfile(path):  # a FIFO would block the open until a writer came
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4 * 192)
    except OSError:
        return False
    if any(len(head) >= 4 * size and all(head[k * size + offset] == 0x47 for k in range(4))
           for size, offset in ((188, 0), (192, 4))):
        return True
    if head[4:8] == b"ftyp":
        return head[8:12] not in HEIF_BRANDS
    return (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:4] == b"\x1a\x45\xdf\xa3"


def listed_as_video(path: PathLike) -> bool:
    """Whether a folder listing or a glob takes `path` for a video: by its suffix, and for .ts and .mts, which are
    TypeScript's too, by its contents (a glob over a source tree took every TypeScript file for a failed video)."""
    suffix = Path(path).suffix.lower()
    return suffix in VIDEO_SUFFIXES and (suffix not in (".ts", ".mts") or _holds_video(path))


def _unreadable(path: Path, reason: object) -> UnreadableFileError:
    known = unsupported_format(path)
    if known:
        return UnreadableFileError(f"cannot read {path}: it is {known}.")
    if os.path.isfile(path) and (suffix := _heif_suffix(path)) and (known := unsupported_format(f"x{suffix}")):
        return UnreadableFileError(f"cannot read {path}: by its contents it is {known}.")
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES and _holds_video(path):
        return UnreadableFileError(f"cannot read {path}: it is a video (by its contents), named as something else; "
                                   f"give it its video extension ({', '.join(VIDEO_SUFFIXES)}) to predict its frames.")
    return UnreadableFileError(
        f"cannot read {path}: {str(reason).rstrip('.')}. Check that the path is right and the file is complete and "
        "in a supported format (re-download or re-export it if it was cut short)."
    )


def missing_file_hint(spec: str) -> str | None:
    """What a path that does not exist most likely is, in words, where it can be told from its text."""
    if is_url(spec):
        return "a URL: files are not downloaded; download it and pass the file"
    if spec == "-":
        return "standard input is not read; save the image to a file and pass its path"
    if spec.startswith("~") and os.path.expanduser(spec) != spec:
        return f"'~' is not expanded (in quotes, or from Python): write {os.path.expanduser(spec)}"
    if spec != spec.strip() and os.path.exists(spec.strip()):
        return f"it has spaces at an end; {spec.strip()!r} exists"
    return None


def dangling_link(path: str | os.PathLike) -> str | None:
    """"a symbolic link to <target>, which does not exist" (or "..., a loop of links") when `path` is one whose
    target cannot be reached; else None."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"a symbolic link to {os.readlink(path)}, which leads back to itself (a loop of links)"
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def _check_file(path: PathLike) -> Path:
    spec, path = os.fspath(path), Path(os.fsdecode(path))  # a bytes path too, as dap.predict takes one
    if not path.exists():
        hint = (missing_file_hint(spec) if isinstance(spec, str) else None) or dangling_link(spec)
        # named as given: Path() would fold the // of a URL
        raise _unreadable(os.fsdecode(spec), f"no such file ({hint})" if hint else "no such file")
    if not path.is_file():
        raise _unreadable(path, "not a regular file")
    if path.stat().st_size == 0:  # decoders say this in their own words, OpenCV's as an assertion
        raise _unreadable(path, "the file is empty (0 bytes)")
    return path


def _is_16bit_colour(img: Image.Image) -> bool:
    """Pillow decodes 16-bit RGB(A)/LA PNG and TIFF to 8 bits; the tile's raw mode tells us before it does."""
    if img.mode not in ("RGB", "RGBA", "LA") or not img.tile:
        return False
    args = img.tile[0][3]  # (codec, extents, offset, args); args starts with the raw mode
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return isinstance(rawmode, str) and ";16" in rawmode


HDR_SUFFIXES = (".hdr", ".exr")
"""High-dynamic-range panoramas (Radiance RGBE, OpenEXR): linear radiance, tone-mapped by `tonemap_hdr` on reading."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif",
                  *(s for s in (".avif", ".heic", ".heif") if _pillow_decodes(s)), *HDR_SUFFIXES)
"""Files `read_rgb` reads as images (and what folder listings of `dap predict` and `dap curate ingest` take)."""

REC709_LUMA = (0.2126, 0.7152, 0.0722)
"""Weights of linear R, G, B in luminance (Rec. 709 / sRGB primaries)."""

EXIF_ORIENTATION = 0x0112  # the EXIF tag saying how to turn the stored pixels upright; values 5-8 turn by 90 degrees

# How each orientation turns stored (H, W, ...) pixels upright (as PIL.ImageOps.exif_transpose turns an image), and
# how to undo that: 6 and 8 undo each other, the others themselves.
_TURN_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a)}
_UNDO_TURN = {**_TURN_UPRIGHT, 6: _TURN_UPRIGHT[8], 8: _TURN_UPRIGHT[6]}

HDR_KEY = 0.18
"""Linear luminance that an HDR panorama's median (over the sphere) is exposed to: photographic middle grey. Tried
against the camera-exposed originals of the 55 real photographs, it gives the bundled model's depth its smallest
typical change (docs/inference.md, "HDR panoramas")."""

HDR_CLIP_SHARE = 0.01
"""Largest share of the sphere that `tonemap_hdr`'s exposure may push past white: cameras protect highlights (46 of
the 55 real photographs have at most 1% of their sphere clipped), so a bright sky or window caps the exposure before
the median reaches `HDR_KEY`, by at most `HDR_PROTECT_STOPS`."""

HDR_PROTECT_STOPS = 3.0
"""How far (in stops, factors of 2) below the median's exposure protecting the highlights may take it: lamps or
windows hundreds of times brighter than a room would otherwise leave the room black, where a camera lets them burn
out (docs/inference.md, "HDR panoramas")."""


def utf8_text(text: str) -> str:
    """`text` as any UTF-8 writer (Parquet, CSV) takes it: a file name that is not UTF-8, which Python holds with
    its bytes as surrogates, gets those bytes escaped (caf\\xe9.jpg); any other text is returned as it is."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_rgb(path: PathLike, *, require_erp: bool = False, at_least: int | None = None) -> np.ndarray:
    """Read an image as float32 (H, W, 3) RGB in [0, 1].

    JPEG, PNG, WebP, TIFF and BMP, 8 or 16 bits per channel; grayscale is repeated to 3 channels, alpha is dropped
    (not composited), EXIF orientation is applied; of an animation or a multi-page file, the first frame
    (`read_rgb_notes` also says so). HDR panoramas (.hdr, .exr with R, G, B or Y channels) are
    tone-mapped to what a camera would have saved (`tonemap_hdr`). ``require_erp`` raises ``NotPanoramaError``
    unless 2:1. Missing, truncated or undecodable files raise ``UnreadableFileError``. ``at_least``: a caller that
    will shrink the image anyway may get a JPEG decoded at 1/2, 1/4 or 1/8 of its size, its shorter side no smaller
    than this (a 16K panorama's full decode peaks at 3 GB).
    """
    return read_rgb_notes(path, require_erp=require_erp, at_least=at_least)[0]


def tonemap_hdr(linear: np.ndarray, key: float = HDR_KEY, clip_share: float | None = HDR_CLIP_SHARE,
                protect_stops: float = HDR_PROTECT_STOPS, *, copy: bool = True) -> np.ndarray:
    """Linear-radiance float (H, W, 3) RGB -> sRGB-encoded float32 in [0, 1], as a camera's automatic exposure
    would save it: scaled so that the median luminance over the sphere becomes `key`, unless that would push more
    than `clip_share` of the sphere past white (a bright sky or window): then that quantile goes to white instead,
    but no more than `protect_stops` below the median's exposure (`clip_share=None`: the median alone). Then
    clipped at white and sRGB-encoded. The networks were trained on, and are used on, such photographs; fed raw
    radiance they would see a dark or burnt-out image. The result does not depend on the file's absolute exposure.
    Non-finite and negative values count as black. `copy=False` works in place on a float32 array (an 8K HDR
    panorama is 400 MB; `read_rgb` does so on its own buffer)."""
    if not (isinstance(key, numbers.Real) and 0 < key < math.inf):  # 0: all black; NaN: all NaN
        raise ValueError(f"tonemap_hdr: key must be a finite number > 0, got {key!r}")
    if not (isinstance(protect_stops, numbers.Real) and protect_stops >= 0):  # inf: no limit
        raise ValueError(f"tonemap_hdr: protect_stops is a number of stops >= 0, got {protect_stops!r}")
    if clip_share is not None and not (isinstance(clip_share, numbers.Real) and 0 <= clip_share < 1):
        raise ValueError(f"tonemap_hdr: clip_share is a share of the sphere in [0, 1) or None, got {clip_share!r}")
    rgb = np.array(linear, dtype=np.float32, copy=True if copy else None)  # None: only if it must
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"tonemap_hdr expects linear RGB of shape (H, W, 3), got shape {rgb.shape}")
    np.nan_to_num(rgb, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.maximum(rgb, 0.0, out=rgb)
    median, highlight = sphere_luminance_quantiles(rgb, (0.5, 1.0 - (clip_share or 0.0)))
    protect = 1.0 / highlight if clip_share and highlight > 0 else None
    if median > 0:
        gain = key / median
        if protect is not None:
            gain = max(min(gain, protect), gain / 2.0**protect_stops)
    else:  # more than half the sphere is black: its highlights alone can set the exposure
        gain = protect
    if gain is not None:  # else all of the sphere is black: nothing to expose by
        rgb *= np.float32(gain)
    np.minimum(rgb, 1.0, out=rgb)
    # The sRGB encoding (IEC 61966-2-1): linear near black, a 1/2.4 power above.
    low = rgb <= 0.0031308
    dark = rgb[low] * np.float32(12.92)
    np.power(rgb, np.float32(1 / 2.4), out=rgb)
    rgb *= np.float32(1.055)
    rgb -= np.float32(0.055)
    rgb[low] = dark
    np.clip(rgb, 0.0, 1.0, out=rgb)  # float rounding of the curve at white
    return rgb


def sphere_luminance_quantiles(linear: np.ndarray, quantiles: Sequence[float]) -> list[float]:
    """Quantiles of the luminance (Rec. 709 weights) of a linear (H, W, 3) RGB panorama over the sphere: each pixel
    weighted by the solid angle it covers (`dap.geometry.solid_angle_weights`), so the stretched poles count no more
    than they cover; over every k-th row and column of panoramas wider than 1024 (a statistic: plenty). 0 when
    empty."""
    h, w = linear.shape[:2]
    step = max(1, w // 1024)
    luminance = linear[::step, ::step] @ np.array(REC709_LUMA, np.float32)
    if not luminance.size:
        return [0.0 for _ in quantiles]
    weights = np.broadcast_to(solid_angle_weights(h, w, dtype=torch.float64).numpy()[::step], luminance.shape)
    order = np.argsort(luminance, axis=None)
    cumulative = np.cumsum(weights.ravel()[order])
    at = np.minimum(np.searchsorted(cumulative, np.asarray(quantiles) * cumulative[-1]), cumulative.size - 1)
    return [float(v) for v in luminance.ravel()[order[at]]]


def _exr_colour_layer(names: set[str]) -> tuple[str, str] | None:
    """Which channels of an EXR hold colour, as (prefix, "RGB") or (prefix, "Y"): the plain R, G, B (or Y) channels,
    else a layer's, as a renderer writes them ("ViewLayer.Combined.R", ...), preferring a layer named Combined or
    beauty; None when there are none (a depth map)."""
    layers = sorted(name[:-1] for name in names if name.endswith(".R") and {name[:-1] + "G", name[:-1] + "B"} <= names)
    for prefix in ("", *sorted(layers, key=lambda p: ("combined" not in p.lower() and "beauty" not in p.lower(), p))):
        if {prefix + c for c in "RGB"} <= names:
            return prefix, "RGB"
    return ("", "Y") if "Y" in names else None


def _read_exr_rgb(path: Path) -> np.ndarray:
    """Linear float32 (H, W, 3) RGB of an OpenEXR file's colour channels (`_exr_colour_layer`)."""
    channels = _exr_channels(path)
    layer = _exr_colour_layer(set(channels))
    if layer is None:
        raise UnreadableFileError(
            f"cannot read {path} as a panorama: its EXR channels are {', '.join(sorted(channels)) or 'none'}, not all "
            "three of R, G and B (or Y for grey); a depth map (such as `dap predict --outputs exr` writes) is no "
            "input. Pass the colour panorama, with R, G and B."
        )
    prefix, kind = layer
    planes = [np.asarray(channels[prefix + c].pixels, dtype=np.float32) for c in kind]
    return np.dstack(planes) if kind == "RGB" else np.repeat(planes[0][..., None], 3, axis=2)


def _exr_channels(path: Path) -> dict:
    """An OpenEXR file's channels by name; a file the library cannot read is a ValueError that says what that
    means (its own words for a cut-short file are "Invalid part index '0': file has 0 parts")."""
    try:
        return OpenEXR.File(str(path), separate_channels=True).channels()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"its OpenEXR data is damaged or cut short (OpenEXR: {str(e).rstrip('.')})") from e


def is_depth_exr(path: PathLike) -> bool:
    """Whether an OpenEXR file holds no colour channels (`_exr_colour_layer`) by its header: a depth map, such as
    `dap predict --outputs exr` writes, not a panorama. False for a file whose header cannot be read, and for what
    is not a regular file (opening a named pipe would wait for a writer for ever)."""
    if not os.path.isfile(path):
        return False
    try:
        names = {c.name for c in OpenEXR.File(str(path), header_only=True).header()["channels"]}
    except _DECODE_ERRORS:
        return False
    return _exr_colour_layer(names) is None


def is_image_file(path: PathLike) -> bool:
    """Whether folder listings take `path` as an image: an IMAGE_SUFFIXES suffix, and not a depth EXR."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_SUFFIXES and not (suffix == ".exr" and is_depth_exr(path))


def _read_hdr(path: Path) -> np.ndarray:
    """Tone-mapped float32 (H, W, 3) RGB of a Radiance .hdr or an OpenEXR panorama."""
    if path.suffix.lower() == ".exr":
        linear = _read_exr_rgb(path)
    else:
        bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        if bgr is None or bgr.dtype != np.float32:
            raise ValueError("OpenCV could not decode it as a Radiance HDR image")
        linear = np.ascontiguousarray(bgr[..., ::-1])
    return tonemap_hdr(linear, copy=False)


@dataclasses.dataclass(frozen=True)
class PhotoSphere:
    """Google's Photo Sphere (GPano) XMP of an image: the full panorama's size and where the image sits in it, in
    the pixels the metadata uses (the image itself may since have been resized)."""

    full_width: int
    full_height: int
    left: int
    top: int
    width: int
    height: int


_GPANO_FIELDS = {"full_width": "FullPanoWidthPixels", "full_height": "FullPanoHeightPixels",
                 "left": "CroppedAreaLeftPixels", "top": "CroppedAreaTopPixels",
                 "width": "CroppedAreaImageWidthPixels", "height": "CroppedAreaImageHeightPixels"}


def read_photo_sphere(source: PathLike | bytes | Image.Image) -> PhotoSphere | None:
    """The Photo Sphere XMP of a JPEG, PNG, WebP or TIFF, by path or opened by Pillow (phones and stitchers write it
    for panoramas, also for ones that do not cover the whole sphere), or None when the image has none, not all six
    numbers, or numbers that cannot describe an image in its panorama (zero or negative sizes, rows outside the
    panorama)."""
    if isinstance(source, Image.Image):
        xmp = _xmp(source)
    else:
        try:
            with Image.open(os.fsdecode(source)) as img:
                xmp = _xmp(img)
        except (*_DECODE_ERRORS, Image.DecompressionBombError):
            return None
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
    values = {}
    for field, name in _GPANO_FIELDS.items():
        # attribute form GPano:Name="1" or element form <GPano:Name>1</GPano:Name>
        m = re.search(rf'GPano:{name}\s*=\s*["\']([^"\']+)["\']|<GPano:{name}>\s*([^<]+?)\s*</GPano:{name}>', text)
        try:
            values[field] = int(float((m.group(1) or m.group(2)) if m else ""))
        except (ValueError, OverflowError):  # missing, not a number, or infinite
            return None
    sphere = PhotoSphere(**values)
    inside = 0 <= sphere.top and sphere.top + sphere.height <= sphere.full_height  # (left may wrap around 360)
    return sphere if min(sphere.full_width, sphere.full_height, sphere.width, sphere.height) > 0 and inside else None


def _xmp(img: Image.Image) -> bytes | str:
    """An opened image's XMP packet ("" if none)."""
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp") or ""
    if not xmp and hasattr(img, "tag_v2"):
        xmp = img.tag_v2.get(700, "")  # TIFF keeps XMP in tag 700
    return xmp


def read_rgb_notes(path: PathLike, *, require_erp: bool = False,
                   at_least: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`read_rgb`'s image, and what the reader should tell its user about the file (none for most): that only the
    first of its frames was read (an animated GIF, WebP or PNG, a multi-page TIFF), that part of it is transparent.
    Returned, not warned: `dap predict` decodes on a thread, where warnings cannot be caught reliably."""
    path = _check_file(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise UnreadableFileError(f"{path} is a video, not an image: predict its frames with `dap predict`, or read "
                                  "them with dap.io.iter_video_frames")
    if path.suffix.lower() == ".npy":
        raise UnreadableFileError(
            f"cannot read {path}: a .npy file holds an array, not an image. Save the panorama as an image file "
            f"({', '.join(IMAGE_SUFFIXES)}), or pass the array itself in Python: dap.predict(numpy.load(path), ...)."
        )
    try:
        if path.suffix.lower() in HDR_SUFFIXES:
            rgb, notes = _read_hdr(path), []
        else:
            rgb, notes = _read_ldr(path, at_least)
    except DapError:
        raise
    except Image.DecompressionBombError as e:
        # Not a broken file: Pillow refuses images over twice Image.MAX_IMAGE_PIXELS (179 MP by default).
        raise UnreadableFileError(
            f"cannot read {path}: {e.args[0].rstrip('.')}. Downscale it first (e.g. to 8192x4096: the official model "
            "sees 1024x512 pixels, the bundled one 512x256); to decode it anyway, raise PIL.Image.MAX_IMAGE_PIXELS in "
            "Python."
        ) from e
    except _DECODE_ERRORS as e:
        raise _unreadable(path, e) from e
    if require_erp:
        check_erp_shape(rgb.shape[0], rgb.shape[1], what=str(path))
    return np.ascontiguousarray(rgb, dtype=np.float32), notes


TRANSPARENT_NOTE_SHARE = 0.01
"""Images with more of their pixels mostly transparent get a note (files) or warning (arrays, PIL images)."""


def transparency_note(image: Image.Image | np.ndarray) -> str | None:
    """What to tell of an image whose alpha (or palette transparency) makes more than TRANSPARENT_NOTE_SHARE of its
    pixels mostly transparent (alpha is dropped: they keep their stored colour), else None. A PIL image, or an
    (H, W, 4) array whose dtype gives alpha's range (uint8 0-255, uint16 0-65535, float 0-1)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 4:
            return None
        half = 128 if image.dtype == np.uint8 else 32768 if image.dtype == np.uint16 else 0.5
        share = float(np.mean(image[..., 3] < half))
    else:
        if not image.has_transparency_data:  # by mode, not band name: Lab's bands are L, A, B
            return None
        if image.mode == "P":  # transparency in the palette
            image = image.convert("RGBA")
        alpha = "a" if "a" in image.getbands() else "A"  # premultiplied ("La", "RGBa"): a lower-case band
        share = float(np.mean(np.asarray(image.getchannel(alpha)) < 128))
    if share <= TRANSPARENT_NOTE_SHARE:
        return None
    return (f"{share:.0%} of it is transparent; those pixels are read as the colour stored under the transparency "
            "(often black), and get depth like any other. Fill them or crop them first")


def _read_ldr(path: Path, at_least: int | None = None) -> tuple[np.ndarray, list[str]]:
    """float32 (H, W, 3) RGB in [0, 1] of an 8- or 16-bit image Pillow can open, turned upright as its EXIF or XMP
    orientation says (except a turn by 90 degrees of a 2:1 image: `_orientation`), and `read_rgb_notes`' notes; a
    JPEG decoded smaller where `at_least` (`read_rgb`) allows."""
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
        rgb = _read_tiff_opencv(path)  # a float RGB TIFF, which Pillow does not decode
        rgb, nonfinite = unit_floats(rgb, f"{path} (a float TIFF)", _FILE_FLOATS_FIX)
        return rgb, [nonfinite_note(nonfinite)] if nonfinite else []
    with img:
        if img.format == "PNG" and SCALE_KEY in img.info:  # as a depth EXR is refused (`_read_exr_rgb`)
            raise UnreadableFileError(
                f"cannot read {path} as a panorama: it is a depth map (its '{SCALE_KEY}' text chunk, which `dap "
                "predict --outputs png16` writes), which is no input. Pass the colour panorama.")
        _check_tiff_integers(img, path)
        deep_colour = _is_16bit_colour(img)
        tag, keep_stored = _orientation(img)
        tiff_tag = img.tag_v2.get(EXIF_ORIENTATION) if isinstance(img, TiffImagePlugin.TiffImageFile) else None
        if tiff_tag in (5, 6, 7, 8) and img.mode not in ("RGB", "RGBA", "CMYK"):
            # Pillow turns single-channel TIFFs of these tags into neither the stored nor the upright pixels
            raise DapError(f"{path} is a grey TIFF whose orientation tag ({tiff_tag}) turns it by 90 degrees, which "
                           "its decoders do not read reliably; save it upright without the tag, or as PNG")
        if at_least and img.format == "JPEG" and min(img.size) >= 2 * at_least:
            img.draft(img.mode, (at_least, at_least))  # the decoder's own scaling: both sides stay >= at_least
        # Full decode now: lazy loading would let a truncated file through until pixels are touched.
        img.load()
        notes = []
        # a JPEG's further MPO images are a preview, an HDR gain map or a stereo view of the one photo: not frames
        try:
            frames = int(getattr(img, "n_frames", 1))
        except TypeError:  # Pillow, for a multi-page TIFF cut short in a later page's header ("Missing dimensions")
            frames = None
        if (frames is None or frames > 1) and img.format != "MPO":
            notes.append(f"the file holds {frames or 'several'} frames (an animation or a multi-page image); only the "
                         "first is predicted. Save the frames as separate images, or a video as .mp4, to predict them "
                         "all")
        if note := transparency_note(img):
            notes.append(note)
        if deep_colour:
            # cv2 keeps 16 bits (IMREAD_COLOR drops alpha). The orientation is applied here, as for 8 bits: cv2
            # would apply EXIF's but not XMP's.
            flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
            bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flags)
            if bgr is None or bgr.dtype != np.uint16:
                raise ValueError("OpenCV could not decode the 16-bit colour image")
            peak = int(bgr.max(initial=0))
            # OpenCV's TIFF decoder follows the file's own orientation tag whatever it is told (not XMP's)
            rgb = _upright(bgr[..., ::-1].astype(np.float32), tag, keep_stored, turned=tiff_tag == tag != 1)
            rgb /= 65535.0
        else:
            peak = grey_extrema(img)[1] if img.mode in SIXTEEN_BIT_GREY_MODES else 0
            rgb = _upright(pil_to_rgb(img), tag, keep_stored, turned=_turned_on_load(img, tag))
            if img.mode == "F":
                rgb, nonfinite = unit_floats(rgb, f"{path} (a 32-bit float grey image)", _FILE_FLOATS_FIX)
                notes += [nonfinite_note(nonfinite)] if nonfinite else []
        if note := low_16_bit_note(peak):
            notes.append(note + ", or save it with 8 bits")
    return rgb, notes


def _orientation(img: Image.Image) -> tuple[int, bool]:
    """The orientation of an image Pillow has opened but not loaded (1-8: EXIF's tag, or XMP's tiff:Orientation,
    which Pillow reads too) and whether to keep the pixels as stored instead: a turn by 90 degrees would make a
    2:1 panorama 1:2, which no 360 camera makes, so such a tag is wrong (some editors and phone galleries add one)."""
    tag = img.getexif().get(EXIF_ORIENTATION, 1)
    tag = tag if tag in _TURN_UPRIGHT else 1  # 0 and other values out of the standard's range: as stored
    width, height = _stored_size(img)
    return tag, tag in (5, 6, 7, 8) and width == 2 * height


def _stored_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as stored: Pillow reports a TIFF tagged 5-8 with its size already turned, so a TIFF's is in
    its tags."""
    if isinstance(img, TiffImagePlugin.TiffImageFile):
        return img.tag_v2.get(256, img.width), img.tag_v2.get(257, img.height)
    return img.size


def image_size(path: PathLike) -> tuple[int, int] | None:
    """(width, height) of the image `read_rgb` gives for `path`, upright as it turns it, from the file's header
    alone; None for a file Pillow does not open (HDR, EXR, a float TIFF) or cannot parse."""
    try:
        with Image.open(path) as img:
            tag, keep_stored = _orientation(img)
            width, height = _stored_size(img)
    except Exception:  # noqa: BLE001 - Pillow's errors for files it does not read have no common type
        return None
    return (height, width) if tag in (5, 6, 7, 8) and not keep_stored else (width, height)


def depth_size(path: PathLike) -> tuple[int, int] | None:
    """(width, height) of the depth map `read_depth` gives for a .npy or .png file, from its header alone; None for
    other formats or a header that cannot be parsed (reading the file says why)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    return None
                shape = read_header(f)[0]
            kept = [n for n in shape if n != 1] if len(shape) > 2 else list(shape)  # as `_as_2d` reads it
            return (kept[1], kept[0]) if len(kept) == 2 else None
        if path.suffix.lower() == ".png":
            with Image.open(path) as img:
                return img.size
    except Exception:  # noqa: BLE001 - numpy's and Pillow's errors for files they do not read
        return None
    return None


def _turned_on_load(img: Image.Image, tag: int) -> bool:
    """Whether loading an image turned its pixels as orientation `tag` says (Pillow does for TIFFs, and then
    drops the tag)."""
    return tag != 1 and img.getexif().get(EXIF_ORIENTATION, 1) != tag


def _upright(pixels: np.ndarray, tag: int, keep_stored: bool, *, turned: bool) -> np.ndarray:
    """Decoded `pixels` as `_orientation` says they should be: upright, or as stored. `turned`: the decoder has
    already applied the orientation."""
    if turned and keep_stored:
        return _UNDO_TURN[tag](pixels)
    if not turned and not keep_stored and tag != 1:
        return _TURN_UPRIGHT[tag](pixels)
    return pixels


def _check_tiff_integers(img: Image.Image, path: Path) -> None:
    """Refuse a TIFF of signed integers: whether their range is 0..32767 or centred on 0 the file does not say, and
    read as 0..65535 they give a dim image (Pillow reports them as plain 32-bit integers)."""
    if not isinstance(img, TiffImagePlugin.TiffImageFile):
        return
    formats = img.tag_v2.get(339, 1)  # SampleFormat: 1 unsigned integer, 2 signed, 3 float; one per channel
    if 2 in (formats if isinstance(formats, tuple) else (formats,)):
        raise _signed_pixels(path)


def _signed_pixels(path: Path) -> DapError:
    return DapError(f"{path} holds signed integer pixels, whose range the file does not state; save it with 8 or 16 "
                    "bits per channel (unsigned), or as float 0..1")


def low_16_bit_note(peak: int) -> str | None:
    """What to tell of 16-bit pixels that reach only `peak` (8- or 12-bit values kept in 16 bits read as an almost
    black image), or None: the note's fix ends in a comma so that the caller can add its own."""
    if 0 < peak <= 4095:
        return (f"its 16-bit pixels reach only {peak} of 65535, so it reads as almost black; if it holds 8-bit "
                "(0-255) or 12-bit (0-4095) values, scale them to 0-65535")
    return None


def pil_to_upright_rgb(img: Image.Image) -> np.ndarray:
    """`pil_to_rgb` of a PIL image turned upright as `read_rgb` turns a file: by its EXIF or XMP orientation, except
    a turn by 90 degrees of a 2:1 image. An image Pillow has already loaded and turned (a TIFF) is as it is."""
    tag, keep_stored = _orientation(img)
    img.load()
    return np.ascontiguousarray(_upright(pil_to_rgb(img), tag, keep_stored, turned=_turned_on_load(img, tag)))


def _read_tiff_opencv(path: Path) -> np.ndarray:
    """float32 (H, W, 3) RGB of a TIFF that Pillow cannot open (32-bit float colour) but OpenCV can, turned upright
    by `_orientation`'s rule: integers scaled to 0..1, floats as stored (`unit_floats` checks them)."""
    # From memory: cv2.imread of a file fails on TIFFs tagged 5-8 (an OpenCV bug), cv2.imdecode does not. Both
    # turn the pixels as the TIFF tag says whatever the flags (not as XMP says).
    a = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError("neither Pillow nor OpenCV decodes this TIFF")
    tiff_tag, xmp_tag, width, height, photometric = _tiff_tags(path)
    tag = tiff_tag if tiff_tag in _TURN_UPRIGHT else xmp_tag if xmp_tag in _TURN_UPRIGHT else 1
    a = a[..., None] if a.ndim == 2 else a[..., 2::-1] if a.shape[2] >= 3 else a[..., :1]  # BGR(A) -> RGB
    a = _upright(a, tag, tag in (5, 6, 7, 8) and width == 2 * height, turned=tiff_tag == tag != 1)
    if np.issubdtype(a.dtype, np.signedinteger):
        raise _signed_pixels(path)
    rgb = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        rgb /= np.float32(np.iinfo(a.dtype).max)
    if photometric == 0 and a.dtype == np.uint16 and a.shape[2] == 1:  # 16-bit "min is white", as pil_to_rgb reads it
        rgb = 1.0 - rgb  # (big-endian ones come here: Pillow has no mode for them)
    return np.ascontiguousarray(np.broadcast_to(rgb, (*rgb.shape[:2], 3)))


def _tiff_tags(path: Path) -> tuple[int, int, int, int, int | None]:
    """(orientation tag, XMP's tiff:Orientation, stored width, stored height, photometric interpretation) of a TIFF's
    first image, read from its header alone (0, or None for the last, for what it lacks): for TIFFs Pillow cannot
    open."""
    with open(path, "rb") as f:
        header = f.read(16)
        try:
            tags = TiffImagePlugin.ImageFileDirectory_v2(header if header[2:3] == b"\x2b" else header[:8])  # BigTIFF
            f.seek(tags.next)
            tags.load(f)
        except (SyntaxError, ValueError, OSError, struct.error):  # tags OpenCV read past: the pixels as it turned them
            return 0, 0, 0, 0, None
    xmp = tags.get(700, b"")
    found = re.search(rb'tiff:Orientation(?:="|>)([0-9])', xmp if isinstance(xmp, bytes) else xmp.encode())
    return (tags.get(274, 0), int(found.group(1)) if found else 0, tags.get(256, 0), tags.get(257, 0),
            tags.get(TIFF_PHOTOMETRIC))


FLOAT_SLACK = 1e-3
"""How far float pixels may stray outside 0..1 and still be read (clipped): float arithmetic's rounding."""


def unit_floats(a: np.ndarray, what: str, fix: str) -> tuple[np.ndarray, int]:
    """Float pixels that must lie in 0..1 (0-255 values or linear radiance, clipped, would give a white or black
    image): non-finite ones set to 0, values within FLOAT_SLACK of the range clipped, anything further out a
    DapError naming `what` and the `fix`. Returns float32 pixels and how many were NaN or infinite, for the caller to
    say so."""
    a = np.asarray(a, dtype=np.float32)
    finite = np.isfinite(a)
    nonfinite = a.size - int(np.count_nonzero(finite))
    if nonfinite and a.ndim == 3:  # pixels, not channels
        nonfinite = int(np.count_nonzero(~finite.all(axis=-1)))
    if nonfinite:
        a = np.where(finite, a, np.float32(0))
    del finite
    lo, hi = float(a.min()), float(a.max())
    if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
        raise DapError(f"{what}: float pixels must be in [0, 1], got {lo:.7g}..{hi:.7g}; {fix}")
    if lo < 0 or hi > 1:
        a = np.clip(a, 0, 1)
    return a, nonfinite


def nonfinite_note(count: int) -> str:
    return f"{count} of its pixels are NaN or infinite; they are set to 0 (black)"


_FILE_FLOATS_FIX = "save it as an 8- or 16-bit image, or as EXR/HDR if it holds linear radiance"


SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": Pillow's 32-bit integers, which it may report
"""PIL modes `pil_to_rgb` reads as 16-bit grey (0-65535)."""


def grey_extrema(img: Image.Image) -> tuple[int, int]:
    """(lowest, highest) value of a 16-bit grey PIL image: Pillow's own pass without a copy where it has one; it
    has none for big-endian 16-bit ('I;16B', a Motorola-order TIFF), read through numpy then."""
    try:
        lo, hi = img.getextrema()
    except ValueError:
        a = np.asarray(img)
        lo, hi = a.min(initial=0), a.max(initial=0)
    return int(lo), int(hi)


TIFF_PHOTOMETRIC = 262  # the TIFF tag of how pixel values map to colours (0: grey, 0 is white)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """float32 (H, W, 3) RGB in [0, 1] of a PIL image: 16-bit grayscale ('I;16', or 'I', which Pillow may report
    for it; values outside 0..65535 are refused) over 65535; float ('F') as it is (for `unit_floats` to check);
    any other mode through Pillow's RGB conversion (alpha dropped, palettes and CMYK resolved) over 255."""
    if img.mode in SIXTEEN_BIT_GREY_MODES:
        lo, hi = grey_extrema(img)
        if lo < 0 or hi > 65535:
            raise DapError(f"a grey image of mode {img.mode} with values {lo}..{hi} is not 16-bit: save it with 8 "
                           "or 16 bits per channel, or as float 0..1")
        gray = np.asarray(img, dtype=np.float32)
        gray /= 65535.0
        if isinstance(img, TiffImagePlugin.TiffImageFile) and img.tag_v2.get(TIFF_PHOTOMETRIC) == 0:
            gray = 1.0 - gray  # "min is white": Pillow inverts 8-bit grey so itself, not 16-bit
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        return np.repeat(np.asarray(img, dtype=np.float32)[..., None], 3, axis=2)
    if img.mode == "La":  # grey with premultiplied alpha, which Pillow converts to RGB only by way of LA
        img = img.convert("LA")
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    rgb /= 255.0  # in place: a 16K panorama is 1.6 GB as float32
    return rgb


# ----------------------------------------------------------------------------------------------- depth


def _valid_depth(depth: np.ndarray) -> np.ndarray:
    """Where a depth map holds a measurement: finite, > 0 and below DEPTH_SENTINEL."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0) & (depth < DEPTH_SENTINEL)


def _clean_depth(depth: np.ndarray) -> np.ndarray:
    """float32 C-ordered copy with every invalid value (NaN, inf, <= 0, >= DEPTH_SENTINEL) set to 0."""
    # C order: OpenEXR's binding writes an array's buffer in C order whatever its strides (a transposed view
    # would come out scrambled)
    d = np.array(depth, dtype=np.float32, order="C")
    d[~_valid_depth(d)] = 0.0
    return d


def _as_2d(a: np.ndarray, path: Path) -> np.ndarray:
    """The (H, W) depth map of a file's array: (1, H, W), (H, W, 1) or (1, 1, H, W) (a network's output saved as it
    came) too. Another shape or type is the file's content, not a broken file: said so, with the fix."""
    if a.ndim > 2 and len(kept := [n for n in a.shape if n != 1]) == 2:
        a = a.reshape(kept)
    if a.ndim != 2 or a.size == 0:  # empty: its aspect ratio "holds" (0 x W = 0 x H), and resampling it fails
        raise UnreadableFileError(f"{path} holds an array of shape {a.shape}, not an (H, W) depth map: save the "
                                  "depth alone, as a 2-D array in metres")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UnreadableFileError(f"{path} holds an array of {a.dtype}, not numbers: save the depth as a float array "
                                  "in metres")
    return a


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # else numpy takes it for a pickle and suggests allow_pickle, the wrong advice here
        raise ValueError("it is not a NumPy .npy file (no NumPy header); save depth maps with numpy.save")
    return np.load(path, allow_pickle=False)


def write_npy(path: PathLike, array: np.ndarray) -> None:
    """Store `array` as `path` (.npy) as it is, NaN and inf kept (`write_depth` makes them 0); all or nothing."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy would append ".npy" to ".NPY"
        np.save(f, np.asarray(array))


def read_npy(path: PathLike) -> np.ndarray:
    """A .npy file's array as stored, NaN and inf kept (`read_depth` makes them 0); a missing or broken file raises
    UnreadableFileError naming it."""
    path = Path(path)
    try:
        return _read_npy(path)
    except _DECODE_ERRORS as e:
        raise _unreadable(path, e) from e


def _read_depth_npz(path: Path, key: str | None) -> np.ndarray:
    # np.load reads what it finds: a .npy as an array (no archive), anything else as a pickle, which it refuses with
    # advice to allow pickles
    if not zipfile.is_zipfile(path):
        raise ValueError("it is not a .npz archive (the zip of arrays numpy.savez writes)")
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if key is None:  # numpy.savez(path, depth=d) or numpy.savez(path, d) (stored as arr_0, as Deep360 is)
            key = next((k for k in ("depth", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
        if key not in keys:
            raise DapError(
                f"{path} has no array {key!r}; it holds {keys}" if key is not None else
                f"cannot pick the depth array in {path}: it holds {keys}. Store the depth under 'depth' "
                "(numpy.savez(path, depth=d)), or in Python pass key=<name> to read_depth."
            )
        return z[key]


EXR_CHANNEL_PRIORITY = ("Z", "Y", "R")
"""EXR channel read as depth when there are several and no ``key``: the first of these that exists, else the one
channel of a layer named ``<layer>.Z`` (a renderer's multi-layer file: "ViewLayer.Depth.Z")."""


def _read_depth_exr(path: Path, key: str | None) -> np.ndarray:
    channels = _exr_channels(path)
    names = list(channels)
    if key is None:
        layered = [c for c in names if c.endswith(".Z")]
        if len(names) == 1:
            key = names[0]
        else:
            key = next((c for c in EXR_CHANNEL_PRIORITY if c in channels), layered[0] if len(layered) == 1 else None)
    if key not in channels:
        raise DapError(
            f"cannot pick the depth channel in {path}: it has channels {names}. Pass key=<channel name> "
            f"(without a key we take the only channel, else the first of {list(EXR_CHANNEL_PRIORITY)}, else the one "
            "channel named <layer>.Z)."
        )
    return channels[key].pixels


def _read_depth_png(path: Path, scale: float | None) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # also reads text chunks that sit after the image data
        if img.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            raise UnreadableFileError(
                f"{path} is a {img.mode} image, not a single-channel 16-bit depth PNG. Colourised depth or "
                "8-bit images cannot be read as metric depth; pass the raw 16-bit depth file."
            )
        raw = np.asarray(img).astype(np.int64)
        stored = img.info.get(SCALE_KEY)
    if scale is None:
        if stored is None:
            raise DepthUnitError(
                f"{path} is a 16-bit depth PNG without a '{SCALE_KEY}' text chunk, so its unit is unknown. "
                "Pass scale=<metres per unit>, e.g. 1/512 for Stanford2D3D, 1/4000 for Matterport3D, "
                "1/1000 for Structured3D."
            )
        scale = float(stored)
    elif stored is not None and not math.isclose(float(stored), scale, rel_tol=1e-6):
        # a dataset's fixed unit (or a manifest's) against the unit the file itself says: one of them is wrong
        raise DepthUnitError(
            f"{path} says its unit is {float(stored):g} m (its '{SCALE_KEY}' text chunk), but it is being read at "
            f"{scale:g} m per unit. Rewrite the file in the unit its dataset uses, or read it without a scale (a "
            "manifest row without metres_per_unit) to use the file's own."
        )
    if not scale > 0:
        raise ValueError(f"scale must be a positive number of metres per unit, got {scale}")
    depth = raw.astype(np.float64) * scale
    depth[(raw <= 0) | (raw >= 65535)] = 0.0  # 0 = no data; 65535 = saturated / no return
    return depth


def read_depth(
    path: PathLike, *, scale: float | None = None, key: str | None = None, require_valid: bool = False
) -> np.ndarray:
    """Read a metric depth map as float32 (H, W) metres, invalid pixels = 0.

    Formats by extension:
      - ``.npy``: a 2-D array; (1, H, W), (H, W, 1) and (1, 1, H, W) too. Another shape, or an array of no
        numbers, raises ``UnreadableFileError`` naming it.
      - ``.npz``: the array named ``key``, else ``'depth'``, else the only array.
      - ``.exr``: channel ``key``, else the only channel, else the first of ``EXR_CHANNEL_PRIORITY``
        (Z, Y, R).
      - ``.png``: 16-bit, depth = value * ``scale`` (metres per unit); ``scale`` defaults to the value that
        ``write_depth`` stored in the ``dap:metres_per_unit`` text chunk; a ``scale`` that disagrees with a stored one
        raises ``DepthUnitError``. 0 and 65535 are invalid.
    ``scale`` given for the other formats: their values are in units of that many metres (0.001: millimetres); by
    default they hold metres. ``key`` is for ``.npz`` and ``.exr`` only.
    NaN, inf, <= 0 and >= ``DEPTH_SENTINEL`` (after scaling) become 0. ``require_valid`` raises
    ``NoValidDepthError`` if no pixel is valid. Missing or broken files raise ``UnreadableFileError``.
    """
    if scale is not None and not (isinstance(scale, numbers.Real) and 0 < scale < math.inf):
        raise ValueError(f"scale is a positive number of metres per unit, got {scale!r}")  # the call's, not the file's
    scale = None if scale is None else float(scale)
    path = _check_file(path)
    suffix = path.suffix.lower()
    readers = {
        ".npy": lambda: _read_npy(path),
        ".npz": lambda: _read_depth_npz(path, key),
        ".exr": lambda: _read_depth_exr(path, key),
        ".png": lambda: _read_depth_png(path, scale),
    }
    if suffix not in readers:
        raise _unreadable(path, f"unknown depth format '{suffix}' (supported: {', '.join(readers)})")
    if key is not None and suffix in (".npy", ".png"):  # the call's mistake: not ignored
        raise ValueError(f"key={key!r} names an array of a .npz or a channel of an .exr; {path} is a {suffix} file")
    try:
        depth = _as_2d(readers[suffix](), path)
    except DapError:
        raise
    except _DECODE_ERRORS as e:
        raise _unreadable(path, e) from e
    if scale is not None and suffix != ".png":  # the PNG reader applied it
        depth = depth.astype(np.float32) * np.float32(scale)
    depth = _clean_depth(depth)
    if require_valid and not (depth > 0).any():
        raise NoValidDepthError(
            f"{path} has no valid depth pixel (all are 0, NaN, inf, negative or >= {DEPTH_SENTINEL:g}). "
            "Check the file or the scale, or drop this sample."
        )
    return depth


def write_depth(path: PathLike, depth: np.ndarray, *, scale: float | None = None, warn: bool = True) -> int:
    """Write an (H, W) metric depth map; invalid values (NaN, inf, <= 0, sentinels) are stored as 0.

    ``.npy``; ``.npz`` (key ``'depth'``); ``.exr`` (float32, lossless ZIP, single channel ``'Z'``);
    ``.png`` (uint16 = round(depth / scale), needs ``scale`` in metres per unit, which is stored in the file).
    PNG values that do not fit are clipped to 65534 units, with a warning unless ``warn`` is False; tiny valid
    depths are kept at 1 unit so that they do not turn into 'invalid'. Returns how many values were clipped (0 but
    for a PNG), for a caller that says so itself (a thread, where warnings cannot be caught reliably).
    """
    path = Path(os.fsdecode(path))
    d = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth)  # a tensor that needs grad too
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"write_depth expects a non-empty (H, W) depth map, got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"write_depth expects real numbers of metres, got dtype {d.dtype}")
    d = _clean_depth(d)
    suffix = path.suffix.lower()
    if suffix == ".png":
        if scale is None or not (isinstance(scale, numbers.Real) and 0 < scale < math.inf):
            raise ValueError(
                f"writing {path} as a 16-bit PNG needs scale=<metres per unit> > 0 (got {scale!r}); e.g. "
                "scale=1/1000 stores millimetres (max 65.5 m). Use .exr or .npy to keep full float precision."
            )
        scale = float(scale)  # a Fraction or Decimal: numpy's rounding wants a float
        valid = d > 0
        units = np.round(d.astype(np.float64) / scale)
        too_far = valid & (units > 65534)
        if warn and too_far.any():
            warnings.warn(
                f"{int(too_far.sum())} depth values up to {float(d.max()):.3g} m do not fit a 16-bit PNG at "
                f"scale {scale} m/unit and were clipped to {65534 * scale:.3g} m; use a larger scale or .exr",
                stacklevel=2,
            )
        units = np.where(valid, np.clip(units, 1, 65534), 0).astype(np.uint16)
        info = PngImagePlugin.PngInfo()
        info.add_text(SCALE_KEY, repr(float(scale)))
        with atomic_write(path) as tmp:
            Image.fromarray(units).save(tmp, format="PNG", pnginfo=info)
        return int(too_far.sum())
    if suffix == ".npy":
        write_npy(path, d)
        return 0
    with atomic_write(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to a name ending in ".NPZ"
                np.savez_compressed(f, depth=d)
        elif suffix == ".exr":
            header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
            OpenEXR.File(header, {"Z": d}).write(str(tmp))  # `d` is C-ordered (`_clean_depth`)
        else:
            raise ValueError(f"unknown depth format '{suffix}' for {path}; use .npy, .npz, .exr or .png")
    return 0


# ---------------------------------------------------------------------------------------------- colour


def preview_range(depth: np.ndarray) -> tuple[float, float]:
    """Colour range for a depth preview: the 1st to 99th percentile of the valid pixels, so that a few outliers (a
    lamp predicted 7 m away in a 3 m room) do not squeeze the rest of the image into one colour; pixels beyond
    it saturate and the legend shows the range. (0, 1) without valid pixels."""
    d = np.asarray(depth, dtype=np.float32)
    values = d[_valid_depth(d)]  # without `_clean_depth`'s copy of the whole map
    if not values.size:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1.0, 99.0], overwrite_input=True)  # `values` is ours: no third copy
    return float(lo), float(hi)


def _apply_cmap(t: np.ndarray, cmap: str) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB with an OpenCV colormap (``'gray'`` for plain grayscale)."""
    u8 = np.round(np.clip(t, 0.0, 1.0) * 255.0).astype(np.uint8)
    if cmap == "gray":
        return np.repeat(u8[..., None], 3, axis=-1)
    code = getattr(cv2, f"COLORMAP_{cmap.upper()}", None)
    if code is None:
        raise ValueError(f"unknown colormap '{cmap}'; use e.g. 'turbo', 'viridis', 'inferno' or 'gray'")
    return cv2.applyColorMap(u8, code)[..., ::-1].copy()


def _unit_depth(
    depth: np.ndarray, min_depth: float | None, max_depth: float | None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Depth mapped to [0, 1] over its colour range (unclipped; invalid pixels at any value), the valid pixels, and
    the range: `min_depth`/`max_depth`, each defaulting to the min/max of the valid pixels ((0, 1) without any)."""
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"expected an (H, W) depth map, got shape {d.shape}")
    clean = _clean_depth(d)
    valid = clean > 0
    values = clean[valid] if min_depth is None or max_depth is None else None
    lo = float(min_depth) if min_depth is not None else (float(values.min()) if values.size else 0.0)
    hi = float(max_depth) if max_depth is not None else (float(values.max()) if values.size else 1.0)
    if min_depth is not None and max_depth is not None and not lo <= hi:  # also NaN; lo == hi is one colour
        raise ValueError(f"the colour range min_depth {min_depth!r} to max_depth {max_depth!r} is not increasing")
    if hi > lo:  # in place on our own copy (the same float32 values as (clean - lo) / (hi - lo))
        clean -= lo
        clean /= hi - lo
        return clean, valid, lo, hi
    return np.zeros_like(d), valid, lo, hi


def colorize_depth(
    depth: np.ndarray, *, min_depth: float | None = None, max_depth: float | None = None, cmap: str = "turbo"
) -> np.ndarray:
    """Colour an (H, W) depth map as uint8 (H, W, 3) RGB; near = start of ``cmap``, invalid pixels black.

    The range defaults to the min and max of the valid pixels.
    """
    t, valid, _, _ = _unit_depth(depth, min_depth, max_depth)
    rgb = _apply_cmap(t, cmap)
    rgb[~valid] = 0
    return rgb


# A depth preview's palette: the colormap at this many levels, then black (invalid pixels, the legend's background)
# and white (its labels). An 8-bit colormap has 256 colours anyway, and a palette PNG stores one byte a pixel: a
# 1024x512 preview encodes about 15x faster than as RGB and is a fraction of the size.
_PREVIEW_LEVELS = 254
_BLACK, _WHITE = _PREVIEW_LEVELS, _PREVIEW_LEVELS + 1


def write_depth_color(
    path: PathLike,
    depth: np.ndarray,
    *,
    min_depth: float | None = None,
    max_depth: float | None = None,
    legend: bool = True,
) -> None:
    """Write a colourised depth PNG (turbo, near = blue, invalid pixels black; an 8-bit palette image); with
    ``legend`` a colour bar labelled with the range in metres is added below the image."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"write_depth_color writes PNG; give {path} a .png extension")
    t, valid, lo, hi = _unit_depth(depth, min_depth, max_depth)
    np.clip(t, 0.0, 1.0, out=t)  # t is _unit_depth's own array: scaled to palette indices in place
    t *= _PREVIEW_LEVELS - 1
    np.round(t, out=t)
    h, w = t.shape
    strip_h = max(24, h // 12) if legend else 0
    pixels = np.full((h + strip_h, w), _BLACK, np.uint8)
    pixels[:h] = t
    pixels[:h][~valid] = _BLACK
    if legend:
        font = ImageFont.load_default(size=max(10, int(strip_h * 0.55)))
        left, right = f"{lo:.2f} m", f"{hi:.2f} m"
        pad = max(2, strip_h // 6)
        x0 = int(font.getlength(left)) + 2 * pad
        x1 = w - int(font.getlength(right)) - 2 * pad
        if x1 > x0:
            pixels[h + pad : h + strip_h - pad, x0:x1] = np.round(np.linspace(0, _PREVIEW_LEVELS - 1, x1 - x0))
    canvas = Image.fromarray(pixels)  # an "L" image; its palette makes it "P" with the same bytes
    colors = _apply_cmap(np.linspace(0.0, 1.0, _PREVIEW_LEVELS, dtype=np.float32)[None, :], "turbo")[0]
    canvas.putpalette(np.concatenate([colors, [[0, 0, 0], [255, 255, 255]]]).astype(np.uint8).tobytes())
    if legend:
        draw = ImageDraw.Draw(canvas)
        # Place labels from their bounding boxes: bitmap fallback fonts do not support anchors.
        for text, x_left in ((left, pad), (right, x1 + pad)):
            bx0, by0, _, by1 = draw.textbbox((0, 0), text, font=font)
            y = h + (strip_h - (by1 - by0)) // 2 - by0
            draw.text((x_left - bx0, y), text, fill=_WHITE, font=font)
    _save_pil(path, canvas)


# ---------------------------------------------------------------------------------------- point clouds


def _points_colors(points: np.ndarray, colors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(points, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {p.shape}")
    bad = int((~np.isfinite(p).all(axis=1)).sum())
    if bad:  # a NaN in a GLB's bounds is not JSON: browsers' viewers refuse the whole file
        raise ValueError(f"{bad} of {len(p)} points are NaN or infinite; drop them first (keep = "
                         "np.isfinite(points).all(axis=1))")
    if colors is None:
        return p, None
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[0] != len(p) or c.shape[1] not in (3, 4):
        raise ValueError(f"colors must be (N, 3) for {len(p)} points, got shape {c.shape}")
    return p, _to_uint8(c[:, :3], "colors")


def write_ply(
    path: PathLike, points: np.ndarray, colors: np.ndarray | None = None, normals: np.ndarray | None = None
) -> None:
    """Write a binary little-endian PLY point cloud: float32 x y z [, nx ny nz] [, uchar red green blue].

    Colors are uint8 or floats in [0, 1]. Written with numpy: trimesh does not export point-cloud normals.
    """
    p, c = _points_colors(points, colors)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        n = np.asarray(normals, dtype=np.float32)
        if n.shape != p.shape:
            raise ValueError(f"normals must have the shape of points {p.shape}, got {n.shape}")
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if c is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(p), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = p.T
    if normals is not None:
        vertex["nx"], vertex["ny"], vertex["nz"] = n.T
    if c is not None:
        vertex["red"], vertex["green"], vertex["blue"] = c.T
    ply_types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(p)}"]
    header += [f"property {ply_types[t]} {name}" for name, t in fields]
    header.append("end_header\n")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write("\n".join(header).encode("ascii"))
            f.write(vertex.tobytes())


def _unlit(tree: dict) -> None:
    """Mark a glTF tree's materials unlit: points have no normals, so lit viewers shade them all alike."""
    for material in tree.get("materials", []):
        material.setdefault("extensions", {})["KHR_materials_unlit"] = {}
    tree.setdefault("extensionsUsed", []).append("KHR_materials_unlit")


def write_glb(path: PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Write a point cloud as a binary glTF (.glb) scene, viewable in browsers and Blender.

    Points are in the camera frame of dap.geometry (x right, y down, z forward); glTF is y-up with the camera
    looking along -z, so y and z are negated on the way out (else viewers show the scene upside down)."""
    if Path(path).suffix.lower() != ".glb":  # a .gltf is JSON: binary glTF there is unreadable to viewers
        raise ValueError(f"write_glb writes binary glTF; give {path} a .glb extension")
    p, c = _points_colors(points, colors)
    if not len(p):
        raise ValueError(f"no points to write to {Path(path).name}: glTF has no empty point cloud (PLY has)")
    # Imported here: a fifth of a second on every start of dap otherwise, and its import swallows a Ctrl-C (it
    # catches BaseException around its optional modules), leaving a half-imported numpy behind
    import trimesh

    p = p * np.array([1, -1, -1], np.float32)
    rgba = None if c is None else np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], axis=1)
    cloud = trimesh.PointCloud(p, colors=rgba)
    data = trimesh.Scene(cloud).export(file_type="glb", tree_postprocessor=_unlit)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------------------------------------- video

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".3gp", ".ts", ".mts", ".m2ts")


def _open_video(path: PathLike) -> tuple[Path, cv2.VideoCapture, int, float]:
    """(path, opened capture, number of frames the container states it shows, its frame rate; each 0 if it states
    none)."""
    p = _check_file(path)
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise _unreadable(p, "OpenCV cannot open it as a video")
    # OpenCV turns frames by the file's rotation tag. A turn by 90 degrees of 2:1 frames (its reported size is the
    # turned one) is a wrong tag, as for images (`_orientation`): no 360 camera makes 1:2 video, so read as stored
    if cap.get(cv2.CAP_PROP_ORIENTATION_META) in (90, 270) and \
            cap.get(cv2.CAP_PROP_FRAME_HEIGHT) == 2 * cap.get(cv2.CAP_PROP_FRAME_WIDTH):
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    count = int(count) if count and math.isfinite(count) and count > 0 else 0
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else 0.0
    if count and fps and (shown := _edited_seconds(p)) is not None:
        # a trim without re-encoding (QuickTime, iOS, ffmpeg -c copy) keeps every sample, which the count counts,
        # and an edit list that shows fewer: those are the frames a decoder gives
        count = min(count, math.ceil(shown * fps - 1e-3))
    return p, cap, count, fps


def _edited_seconds(path: Path) -> float | None:
    """The seconds an MP4/MOV's video track shows by its edit list (`elst`), or None where it has none (or the
    file is no ISO media file)."""
    import struct

    def boxes(f, start: int, end: int):
        """(type, payload start, payload end) of the boxes in [start, end)."""
        at = start
        while at + 8 <= end:
            f.seek(at)
            size, kind = struct.unpack(">I4s", f.read(8))
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", f.read(8))[0], 16
            elif size == 0:
                size = end - at
            if size < head:
                return
            yield kind, at + head, min(at + size, end)
            at += size

    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            moov = next(((a, b) for kind, a, b in boxes(f, 0, end) if kind == b"moov"), None)
            if moov is None:
                return None
            inside = {kind: (a, b) for kind, a, b in boxes(f, *moov) if kind != b"trak"}
            if b"mvhd" not in inside:
                return None
            f.seek(inside[b"mvhd"][0])
            version = f.read(1)[0]
            f.seek(inside[b"mvhd"][0] + (20 if version == 1 else 12))
            timescale = struct.unpack(">I", f.read(4))[0]
            for kind, a, b in list(boxes(f, *moov)):
                if kind != b"trak":
                    continue
                parts = {k: (x, y) for k, x, y in boxes(f, a, b)}
                media = {k: (x, y) for k, x, y in boxes(f, *parts[b"mdia"])} if b"mdia" in parts else {}
                if b"hdlr" not in media or b"edts" not in parts:
                    continue
                f.seek(media[b"hdlr"][0] + 8)
                if f.read(4) != b"vide":
                    continue
                elst = next(((x, y) for k, x, y in boxes(f, *parts[b"edts"]) if k == b"elst"), None)
                if elst is None or not timescale:
                    return None
                f.seek(elst[0])
                version, entries = struct.unpack(">B3xI", f.read(8))
                layout = ">Qq4x" if version == 1 else ">Ii4x"
                shown = 0
                for _ in range(entries):
                    duration, media_time = struct.unpack(layout, f.read(struct.calcsize(layout)))
                    shown += duration if media_time != -1 else 0  # -1: an empty edit (a pause), no frames
                return shown / timescale if shown else None
    except (OSError, struct.error, IndexError):
        return None
    return None


def _check_video_end(p: Path, index: int, count: int) -> None:
    """A read that fails before the stated frame count is a broken file, not the end of the video."""
    if index < count:
        raise _unreadable(p, f"frame {index} of {count} cannot be decoded (the video is cut short or corrupt)")


def iter_video_frames(path: PathLike) -> Iterator[np.ndarray]:
    """Frames of a video file in order, each float32 (H, W, 3) RGB in [0, 1]. A frame that cannot be decoded
    before the frame count the file states raises UnreadableFileError (after the frames before it)."""
    p, cap, count, _ = _open_video(path)
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                _check_video_end(p, index, count)
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
            index += 1
    finally:
        cap.release()


def sample_video_frames(path: PathLike, every_s: float) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in seconds, float32 RGB frame) every `every_s` seconds of a video, first frame
    included: the first frame at or after each multiple of `every_s`, by the frames' own timestamps (a variable
    frame rate, as phones record, or 2.5 fps with every second: a fixed step of frames missed the times). Frames
    in between are skipped with grab() (no colour conversion), so sparse sampling is cheap. Broken frames raise
    UnreadableFileError as in `iter_video_frames`."""
    if every_s <= 0:
        raise ValueError(f"every_s must be > 0 seconds, got {every_s}")
    p, cap, count, fps = _open_video(path)
    try:
        if not fps:
            raise _unreadable(p, "the video does not state its frame rate")
        index, last, due = 0, -math.inf, 0.0
        while cap.grab():
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
            if not (math.isfinite(t) and (t > last or index == 0)):
                t = index / fps  # a stream without timestamps
            last = t
            if t >= due - 1e-3:  # a millisecond for the timestamps' rounding
                ok, frame = cap.retrieve()
                if not ok:
                    raise _unreadable(p, f"frame {index} cannot be decoded")
                yield index, t, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
                due = (math.floor((t + 1e-3) / every_s) + 1) * every_s
            index += 1
        _check_video_end(p, index, count)
    finally:
        cap.release()
