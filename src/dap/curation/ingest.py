"""Stage 0 of curation: turn folders, globs and 360° videos into a pool of checked, de-duplicated panoramas.

Per item: decode check, 2:1 check (or padding of partial panoramas), a 64-bit perceptual hash for
near-duplicate removal, a camera-tilt estimate from vertical edges, and an indoor/outdoor tag from a user tag
file when one is given (otherwise stage-1 labeling tags it from the labeler's sky fraction). A bad file
becomes a `rejected` row with its reason and never stops the run. Re-running ingest into the same pool adds
only new items (same file checksum and frame = same id) and checks rejected ones again with the run's options.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dap.curation.manifest import empty_row, read_manifest, write_manifest
from dap.errors import DapError, NotPanoramaError
from dap.geometry import check_erp_shape, level_panorama, level_rotation, looks_dual_fisheye, tilt_angle
from dap.io import VIDEO_SUFFIXES, dangling_link, is_image_file, utf8_text

DOMAINS = ("indoor", "outdoor")
POOL_FOLDERS = ("images", "labels", "scores")  # what a pool writes beside its manifest

BROKEN_FILE = ("cannot read the file", "cannot decode")  # how the reasons of `_rejected` rows begin


@dataclass
class IngestOptions:
    source: str | None = None  # source name for every item (default: each input folder's / file's parent name)
    generated: bool = False  # items are generated panoramas (e.g. text-to-panorama output): kind = generated
    every_s: float = 2.0  # seconds between sampled video frames
    pad_to_erp: bool = False  # pad partial panoramas (wider than 2:1) with black rows instead of rejecting
    max_width: int = 2048  # stored panoramas are downscaled to at most this width
    min_width: int = 512  # smaller panoramas are rejected: too little to label or to train on
    dedupe_bits: int = 6  # near-duplicate: perceptual hashes differ in at most this many of 64 bits
    max_tilt_deg: float = 8.0  # reject panoramas whose estimated tilt exceeds this (NaN estimates are kept)
    level: bool = False  # level such panoramas (geometry.level_rotation) instead; rejected only if that fails
    tags: str | None = None  # CSV with columns file (or path) and domain (or scene): indoor | outdoor


# ------------------------------------------------------------------------------------------ signals
def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit DCT hash (the classic pHash): 32x32 grey thumbnail, 8x8 lowest DCT frequencies, each bit = above
    their median. Robust to resizing, JPEG re-encoding and small colour changes; a yaw rotation of the same
    panorama is a different image here (it is a different training sample too)."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    value = int(sum(1 << i for i, b in enumerate(bits) if b))
    return value - (1 << 64) if value >= 1 << 63 else value  # store as int64


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


class HashIndex:
    """Near-duplicate lookup among 64-bit hashes without comparing against every kept one.

    Pigeonhole: two hashes that differ in at most `bits` bits agree exactly on at least one of `bits` + 1
    disjoint pieces of the 64 bits, so only hashes sharing a piece are compared (multi-index hashing). Among
    the matches the earliest added wins, as a linear scan in insertion order would give."""

    def __init__(self, bits: int):
        self.bits = bits
        k = bits + 1 if bits >= 0 else 0
        edges = [round(64 * j / k) for j in range(k + 1)] if k else []
        self.pieces = [((1 << (hi - lo)) - 1, lo) for lo, hi in zip(edges, edges[1:], strict=False)]
        self.buckets: list[dict[int, list[int]]] = [{} for _ in self.pieces]
        self.entries: list[tuple[int, str]] = []
        self.retired: set[str] = set()  # items no longer in the pool (their file changed): never matched

    def add(self, value: int, item: str) -> None:
        self.retired.discard(item)  # back in the pool (the same bytes as a retired row, from another file)
        n = len(self.entries)
        self.entries.append((value, item))
        for (mask, shift), bucket in zip(self.pieces, self.buckets, strict=True):
            bucket.setdefault((value >> shift) & mask, []).append(n)

    def find(self, value: int) -> str | None:
        """The earliest added item within `bits` of `value`, or None."""
        candidates = {n for (mask, shift), bucket in zip(self.pieces, self.buckets, strict=True)
                      for n in bucket.get((value >> shift) & mask, ())}
        for n in sorted(candidates):
            if hamming(self.entries[n][0], value) <= self.bits and self.entries[n][1] not in self.retired:
                return self.entries[n][1]
        return None


def file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def item_id(checksum: str, frame: int | None) -> str:
    return hashlib.sha256(f"{checksum}:{-1 if frame is None else frame}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- inputs
def expand_sources(sources: list[str], pool: str | os.PathLike | None = None) -> list[Path]:
    """Files from files, folders (recursive) and glob patterns, in a stable order. Folders and patterns contribute
    images, videos and panoramas of known formats this install cannot read (each rejected with how to convert it),
    as `dap predict` lists them: not depth EXRs, hidden files nor dap predict's outputs; an explicitly named file
    (or link) is always tried, and rejected with a reason if it is no image. None of them may be the pool's own
    images and labels (a pool inside its source folder, or its images given by name, would ingest its own copies,
    once more on every rerun)."""
    from dap.inference import glob_paths, ours_or_hidden
    from dap.io import listed_as_video, unsupported_format

    own = [os.path.join(os.path.realpath(pool), d) + os.sep for d in POOL_FOLDERS] if pool is not None else []

    def listed(f: Path) -> bool:
        return not os.path.realpath(f).startswith(tuple(own))

    def wanted(f: Path) -> bool:
        return ((is_image_file(f) or listed_as_video(f) or unsupported_format(f) is not None)
                and not ours_or_hidden(f) and listed(f))

    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(f for f in _files_below(p) if wanted(f)
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file() or os.path.islink(p):  # a link to nothing, or a loop: tried, and rejected with its reason
            files += [p] if listed(p) else []
        else:
            matches = [m for m in glob_paths(src) if m.is_file() and wanted(m)]
            if not matches:
                raise DapError(f"{src} is neither a file, a folder nor a glob that matches images or videos")
            files += matches
    seen: set[str] = set()
    return [f for f in files if not ((real := os.path.realpath(f)) in seen or seen.add(real))]


def _files_below(folder: Path) -> list[Path]:
    """The files in `folder` and its sub-folders, linked sub-folders too (rglob skipped them without a word), each
    real folder once (a link back up would loop)."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        # a folder reached as itself and through a link is walked by its own path (rows name it, tags find it),
        # whichever name sorts first or the file system lists first
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(root, d)), d))
        files += [f for f in (Path(root) / n for n in names) if f.is_file()]
    return files


@dataclass
class Tags:
    """A tag file's indoor/outdoor tags: by a bare file name (any folder's file of that name), or by a path (that
    file alone; relative paths from the tag file's folder)."""

    by_name: dict[str, str]
    by_path: dict[str, str]  # absolute path -> domain

    def get(self, path: str | os.PathLike) -> str | None:
        return self.by_path.get(os.path.abspath(path), self.by_name.get(Path(path).name))

    def unused(self, paths: set[str]) -> list[str]:
        """The entries that name none of `paths` (absolute)."""
        names = {Path(p).name for p in paths}
        return [k for k in self.by_path if k not in paths] + [k for k in self.by_name if k not in names]


def read_tags(path: str | os.PathLike) -> Tags:
    """The tags of a CSV with a file (or path) column and a domain (or scene) column; UTF-8, with or without the
    byte-order mark spreadsheets write. One file tagged twice differently is an error."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, csv.Error) as e:  # csv: a field over its size limit (no tag file's), a NUL byte
        raise DapError(f"cannot read the tag file {p}: {e}; it should be a CSV of file and domain columns") from e
    except UnicodeDecodeError as e:
        raise DapError(f"the tag file {p} is not UTF-8 text ({e.reason} at byte {e.start}); save it as CSV UTF-8 "
                       "(a spreadsheet's \"Unicode text\" is UTF-16)") from e
    cols = set(header)  # the header's, also without a row (a header-only file "had []")
    key = next((c for c in ("file", "path") if c in cols), None)
    val = next((c for c in ("domain", "scene") if c in cols), None)
    if key is None or val is None:
        raise DapError(f"the tag file {p} needs columns file (or path) and domain (or scene); "
                       f"it has {sorted(cols)}")
    tags = Tags({}, {})
    for line, r in enumerate(rows, start=2):
        d = (r[val] or "").strip().lower()
        name = (r[key] or "").strip()
        if d not in DOMAINS:
            raise DapError(f"{p}, line {line}: domain {r[val]!r} for {name!r} is not indoor or outdoor")
        if not name:
            raise DapError(f"{p}, line {line}: no {key} for the domain {r[val]!r}")
        if os.sep in name or "/" in name:  # a path: that file only (IMG_0001.jpg is in every camera's folder)
            table, name = tags.by_path, os.path.abspath(p.parent / name)
        else:
            table = tags.by_name
        if table.get(name, d) != d:
            raise DapError(f"{p}, line {line}: {name} is tagged both {table[name]} and {d}; keep one")
        table[name] = d
    for path, d in tags.by_path.items():  # by its path and by its bare name, otherwise (the path won, silently)
        if tags.by_name.get(Path(path).name, d) != d:
            raise DapError(f"{p}: {path} is tagged {d} by its path and {tags.by_name[Path(path).name]} by its name "
                           f"{Path(path).name}; keep one")
    return tags


def _decoded(path: Path, every_s: float, max_width: int) -> Iterator[tuple[int | None, float, np.ndarray]]:
    from dap.io import read_rgb, sample_video_frames

    if path.suffix.lower() in VIDEO_SUFFIXES:
        yield from sample_video_frames(path, every_s)
    else:  # stored at most max_width wide: a large JPEG is decoded no larger than a 2:1 one of that width needs
        yield None, math.nan, read_rgb(path, at_least=max_width // 2)


# ------------------------------------------------------------------------------------------- ingest
def _as_panorama(rgb: np.ndarray, image_file: Path | None, o: IngestOptions) -> tuple[np.ndarray, str | None]:
    """The image as a 2:1 panorama (a partial one padded with `pad_to_erp`, placed by the Photo Sphere XMP of
    `image_file` if it has one), or why the pool rejects it."""
    from dap.inference import looks_blank, pad_rows_to_erp, photo_sphere_top
    from dap.io import read_photo_sphere

    h, w = rgb.shape[:2]
    if o.pad_to_erp and w > 2 * h:  # an odd width cannot be padded: pad_rows_to_erp says so
        try:
            top = photo_sphere_top(read_photo_sphere(image_file), h, w) if image_file is not None else None
            rgb, _ = pad_rows_to_erp(rgb, top)
        except DapError as e:  # its XMP says it is not 360 degrees across
            return rgb, str(e)
        h, w = rgb.shape[:2]
    try:
        check_erp_shape(h, w, what="the image")  # its message says what the shape looks like and what to do
    except NotPanoramaError as e:
        return rgb, str(e)
    if w < o.min_width:
        return rgb, (f"too small ({w}x{h}); the pool keeps panoramas at least {o.min_width} pixels wide (lower "
                     "--min-width to keep it)")
    if looks_dual_fisheye(rgb):
        return rgb, ("an unstitched dual-fisheye image (two discs on black), not an equirectangular panorama; "
                     "stitch it with the camera's software first")
    if looks_blank(rgb):
        return rgb, "blank: one flat colour with no detail (a black video frame or a failed export?), nothing to label"
    return rgb, None


OPTION_NAMES = {"max_width": "--max-width", "min_width": "--min-width", "dedupe_bits": "--dedupe-bits",
                "max_tilt_deg": "--max-tilt", "every_s": "--every"}
"""IngestOptions fields -> `dap curate ingest`'s options (a curation config's pool section names them as fields)."""


def options_problem(o: IngestOptions, names: dict[str, str] = OPTION_NAMES) -> str | None:
    """What is wrong with ingest options, named as `names` says (the CLI's options by default), or None."""
    n = names
    if o.min_width < 1 or o.max_width < 2 or o.max_width % 2:
        return (f"{n['max_width']} must be an even number of pixels >= 2 and {n['min_width']} >= 1, got "
                f"{o.max_width} and {o.min_width}")
    if o.max_width < o.min_width:
        return (f"{n['max_width']} {o.max_width} is below {n['min_width']} {o.min_width}: panoramas would be stored "
                "narrower than the pool accepts")
    if not -1 <= o.dedupe_bits <= 64:
        return f"{n['dedupe_bits']} must be 0 to 64 (or -1: off), got {o.dedupe_bits}"
    if not o.max_tilt_deg >= 0:  # NaN too: it would keep every panorama without a word
        return f"{n['max_tilt_deg']} must be >= 0 degrees, got {o.max_tilt_deg}"
    if not 0 < o.every_s < math.inf:
        return f"{n['every_s']} must be a number of seconds > 0, got {o.every_s}"
    return None


def ingest(sources: list[str], pool: str | os.PathLike, options: IngestOptions | None = None,
           progress: bool = True) -> dict[str, int]:
    """Add the panoramas (and sampled video frames) of `sources` to `pool`; returns counts by outcome. One ingest
    into a pool at a time: each writes the manifest it read plus its rows, so a second one would lose the first's."""
    from dap.io import folder_lock

    o = options or IngestOptions()
    if problem := options_problem(o):
        raise DapError(problem)
    with folder_lock(pool, "dap curate ingest"):
        return _ingest(sources, pool, o, progress)


def _ingest(sources: list[str], pool: str | os.PathLike, o: IngestOptions, progress: bool) -> dict[str, int]:
    from tqdm import tqdm

    from dap.io import write_rgb

    pool = Path(pool)
    tags = read_tags(o.tags) if o.tags else Tags({}, {})
    files = expand_sources(sources, pool)
    rows = read_manifest(pool)
    # Rejected items are checked again, with this run's options: the fix a reason names (--pad-to-erp, --max-tilt,
    # --level) then takes effect in the same pool. Accepted ones are kept as they are.
    known = {r["id"] for r in rows if r["status"] != "rejected"}
    at = {r["id"]: i for i, r in enumerate(rows)}  # a row checked again replaces its earlier one in place

    def put(row: dict) -> bool:
        """Store a row; False if it is a rejected row the pool already held with that reason (nothing new)."""
        if row["id"] in at:
            same = rows[at[row["id"]]]["reason"] == row["reason"] and row["status"] == "rejected"
            rows[at[row["id"]]] = row
            return not same
        at[row["id"]] = len(rows)
        rows.append(row)
        return True

    # paths as the manifest stores them (a name that is not UTF-8 escaped), so that rows read back are found
    given = {utf8_text(os.path.abspath(f)) for f in files}
    reselect = 0
    # Rows written before paths were stored absolute name their file relative to a folder no longer known: they
    # are matched to this run's files by nothing (a same-named file elsewhere is another file)
    for r in rows:  # a tag file given on a later ingest tags the pool's items from these sources too
        domain = tags.get(r["path"]) if os.path.isabs(r["path"]) else None
        if r["status"] == "ok" and domain and r["path"] in given:
            reselect += r["selected"] and r["domain"] != domain  # selected among the other domain's rows
            r.update(domain=domain, domain_from="user", selected=r["selected"] and r["domain"] == domain)
    by_path: dict[str, list[dict]] = {}  # accepted rows by their file, to tell when that file has changed since
    broken: dict[str, list[dict]] = {}  # rows of files that could not be read or decoded, by their file
    hashes = HashIndex(o.dedupe_bits)
    for r in rows:
        if r["status"] == "ok":
            hashes.add(r["phash"], r["id"])
            if os.path.isabs(r["path"]):
                by_path.setdefault(r["path"], []).append(r)
        elif r["reason"].startswith(BROKEN_FILE):
            broken.setdefault(r["path"], []).append(r)
    # a file's domain as its user tagged it on an earlier ingest: kept by the row of its edited version, or of the
    # file ingested again to bring back its lost pool image (the labeler's guess overrode it)
    told = {r["path"]: r["domain"] for r in rows if r["domain_from"] == "user" and r["domain"]}
    gone: set[str] = set()  # rows of a file's broken version, which it no longer is

    def save() -> None:
        write_manifest(pool, [r for r in rows if r["id"] not in gone])

    counts = {"added": 0, "duplicate": 0, "rejected": 0, "already_in_pool": 0, "replaced": 0}
    last_write = time.monotonic()
    try:
        for path in tqdm(files, desc="ingest", unit="file", disable=not progress, dynamic_ncols=True):
            source = o.source or path.parent.name
            where = utf8_text(os.path.abspath(path))  # rows name their file absolutely: tags and reruns find it
            try:
                checksum = file_checksum(path)
            except OSError as e:
                link = dangling_link(path)  # a link to nothing or a loop: said so
                why = f"it is {link}" if link else e.strerror or str(e)
                row = _rejected(where, source, "", None, f"cannot read the file: {why}")
                counts["rejected" if put(row) else "already_in_pool"] += 1
                continue
            # rows of this file's earlier content: one the new content nearly repeats was edited into it (below)
            before = [r for r in by_path.pop(where, []) if r["checksum"] != checksum]
            gone.update(r["id"] for r in broken.pop(where, []) if r["checksum"] != checksum)  # fixed since
            frames = _decoded(path, o.every_s, o.max_width)
            frame = None
            while True:
                try:
                    frame, t, rgb = next(frames)
                except StopIteration:
                    break
                except Exception as e:  # noqa: BLE001 - any decode failure is this item's row, never the run's end
                    # The file's row (frame None): a video that breaks after some frames keeps those frames' rows.
                    row = _rejected(where, source, checksum, None, f"cannot decode: {e}")
                    if row["id"] not in known:
                        known.add(row["id"])
                        counts["rejected" if put(row) else "already_in_pool"] += 1
                    break
                row = {**empty_row(), "id": item_id(checksum, frame), "source": source, "path": where,
                       "checksum": checksum, "frame_time": t, "height": rgb.shape[0], "width": rgb.shape[1],
                       "kind": "generated" if o.generated else "image" if frame is None else "video_frame",
                       "status": "ok"}
                if row["id"] in known:
                    first = rows[at[row["id"]]] if row["id"] in at else None
                    if first is not None and first["path"] != where:  # the same bytes as another file of the pool
                        # (of this run or an earlier one, accepted or not): a row of its own says so (status did not)
                        copy = _rejected(where, source, checksum, frame, f"near-duplicate of {row['id']} (the same "
                                         f"bytes as {first['path']})")
                        counts["duplicate" if put({**copy, "dup_of": row["id"]}) else "already_in_pool"] += 1
                    else:
                        counts["already_in_pool"] += 1
                    continue
                known.add(row["id"])
                rgb, shape_problem = _as_panorama(rgb, path if frame is None else None, o)
                h, w = rgb.shape[:2]
                if shape_problem:
                    row.update(status="rejected", reason=shape_problem)
                    counts["rejected" if put(row) else "already_in_pool"] += 1
                    continue
                if w > o.max_width:
                    rgb = cv2.resize(rgb, (o.max_width, o.max_width // 2), interpolation=cv2.INTER_AREA)
                row["phash"] = perceptual_hash(rgb)
                row["tilt_deg"] = tilt_angle(rgb)
                for old in before:
                    if old["status"] == "ok" and hamming(old["phash"], row["phash"]) <= o.dedupe_bits:
                        # the file was edited (brightened, cropped, re-exported): its new version replaces the old
                        # row, whose image and labels are of the old content; a file overwritten by another photo
                        # leaves the old row as it is (the pool keeps its own copy)
                        old.update(status="rejected", image="", selected=False, reason="its file has changed since "
                                   "it was ingested; the edited version has a row of its own")
                        hashes.retired.add(old["id"])
                        known.discard(old["id"])  # another file with the old bytes may bring that content back
                        counts["replaced"] += 1
                dup = hashes.find(row["phash"])
                tilted = row["tilt_deg"] > o.max_tilt_deg  # NaN compares False: unknown tilt is kept
                if tilted and o.level and dup is None:  # stored levelled (tilt_deg stays the tilt it was taken with)
                    levelled = _levelled(rgb)
                    tilted, rgb = levelled is None, rgb if levelled is None else levelled
                if dup is not None:
                    row.update(status="rejected", reason=f"near-duplicate of {dup}", dup_of=dup)
                    counts["duplicate" if put(row) else "already_in_pool"] += 1
                elif tilted:
                    row.update(status="rejected", reason=f"camera tilted by about {row['tilt_deg']:.1f} degrees "
                               f"(limit {o.max_tilt_deg}; raise --max-tilt to keep it"
                               + (", --level could not level it)" if o.level else ", or --level to level it)"))
                    counts["rejected" if put(row) else "already_in_pool"] += 1
                else:
                    row["image"] = f"images/{row['id']}.jpg"
                    write_rgb(pool / row["image"], rgb)
                    hashes.add(row["phash"], row["id"])
                    if domain := tags.get(where) or told.get(where):
                        row.update(domain=domain, domain_from="user")
                    put(row)
                    counts["added"] += 1
            if time.monotonic() - last_write > 30:  # a killed ingest keeps what it did, minus the last seconds
                save()
                last_write = time.monotonic()
    finally:  # done, Ctrl-C or an error: the manifest keeps every row made so far, and a rerun goes on from it
        save()
    _say_tag_notes(tags, given, reselect, o.tags)
    return counts


def _say_tag_notes(tags: Tags, given: set[str], reselect: int, tag_file: str | None) -> None:
    """What the user's tag file did not do as they may think."""
    import sys

    if unused := tags.unused(given):
        print(f"dap curate ingest: note: {len(unused)} entries of {tag_file} name no file of this ingest (the "
              f"first: {unused[0]}); they tag nothing", file=sys.stderr)
    names = Counter(Path(g).name for g in given)
    shared = [n for n in tags.by_name if names[n] > 1]
    if shared:
        print(f"dap curate ingest: note: {tag_file} tags {len(shared)} file name(s) that several files of this "
              f"ingest have (the first: {shared[0]}), all alike; give their paths (a/{shared[0]}) to tell them "
              "apart", file=sys.stderr)
    if reselect:
        print(f"dap curate ingest: note: {reselect} selected rows changed domain with these tags, and are no longer "
              "selected; run `dap curate select` again", file=sys.stderr)


def _levelled(rgb: np.ndarray) -> np.ndarray | None:
    """The panorama a level camera would have taken (`dap.geometry.level_rotation`), or None if it cannot tell."""
    rotation = level_rotation(rgb)
    return None if rotation is None else level_panorama(rgb, rotation)


def _rejected(path: str, source: str, checksum: str, frame: int | None, reason: str) -> dict:
    """The row of a file that cannot be read or decoded: one per file (two empty or equally broken files have one
    checksum, and shared one row whose path changed from run to run)."""
    return {**empty_row(), "id": item_id(f"{checksum}:{path}", frame), "source": source, "path": str(path),
            "checksum": checksum, "kind": "video_frame" if frame is not None else "image", "status": "rejected",
            "reason": reason}
