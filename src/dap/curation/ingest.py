"""Stage 0 of curation: turn folders, globs and 360° videos into a pool of checked, de-duplicated panoramas.

Per item: decode check, 2:1 check (or padding of partial panoramas), a 64-bit perceptual hash for
near-duplicate removal, a camera-tilt estimate from vertical edges, and an indoor/outdoor tag from a user tag
file when one is given (otherwise stage-1 labeling tags it from the labeler's sky fraction). A bad file
becomes a `rejected` row with its reason and never stops the run. Re-running ingest into the same pool adds
only new items (same file checksum and frame = same id) and checks rejected ones again with the run's options.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dap.curation.manifest import empty_row, read_manifest, write_manifest
from dap.errors import DapError, NotPanoramaError
from dap.geometry import check_erp_shape, level_panorama, level_rotation, looks_dual_fisheye, tilt_angle
from dap.io import VIDEO_SUFFIXES, is_image_file

DOMAINS = ("indoor", "outdoor")


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

    def add(self, value: int, item: str) -> None:
        n = len(self.entries)
        self.entries.append((value, item))
        for (mask, shift), bucket in zip(self.pieces, self.buckets, strict=True):
            bucket.setdefault((value >> shift) & mask, []).append(n)

    def find(self, value: int) -> str | None:
        """The earliest added item within `bits` of `value`, or None."""
        candidates = {n for (mask, shift), bucket in zip(self.pieces, self.buckets, strict=True)
                      for n in bucket.get((value >> shift) & mask, ())}
        for n in sorted(candidates):
            if hamming(self.entries[n][0], value) <= self.bits:
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
def expand_sources(sources: list[str]) -> list[Path]:
    """Files from files, folders (recursive) and glob patterns, in a stable order; unknown suffixes and depth EXRs
    are skipped in folders but an explicitly named file is always tried (and rejected with a reason if it is no
    image)."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and (is_image_file(f) or f.suffix.lower() in VIDEO_SUFFIXES)
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(src, recursive=True) if Path(m).is_file())
            if not matches:
                raise DapError(f"{src} is neither a file, a folder nor a glob that matches files")
            files += matches
    seen: set[Path] = set()
    return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


def read_tags(path: str | os.PathLike) -> dict[str, str]:
    """file name -> indoor | outdoor, from a CSV with a file (or path) column and a domain (or scene) column."""
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DapError(f"cannot read the tag file {p}: {e}") from e
    cols = set(rows[0]) if rows else set()
    key = next((c for c in ("file", "path") if c in cols), None)
    val = next((c for c in ("domain", "scene") if c in cols), None)
    if key is None or val is None:
        raise DapError(f"the tag file {p} needs columns file (or path) and domain (or scene); "
                       f"it has {sorted(cols)}")
    tags = {}
    for r in rows:
        d = (r[val] or "").strip().lower()
        if d not in DOMAINS:
            raise DapError(f"{p}: domain {r[val]!r} for {r[key]!r} is not indoor or outdoor")
        tags[Path(r[key]).name] = d
    return tags


def _decoded(path: Path, every_s: float) -> Iterator[tuple[int | None, float, np.ndarray]]:
    from dap.io import read_rgb, sample_video_frames

    if path.suffix.lower() in VIDEO_SUFFIXES:
        yield from sample_video_frames(path, every_s)
    else:
        yield None, math.nan, read_rgb(path)


# ------------------------------------------------------------------------------------------- ingest
def _as_panorama(rgb: np.ndarray, image_file: Path | None, o: IngestOptions) -> tuple[np.ndarray, str | None]:
    """The image as a 2:1 panorama (a partial one padded with `pad_to_erp`, placed by the Photo Sphere XMP of
    `image_file` if it has one), or why the pool rejects it."""
    from dap.inference import looks_blank, pad_rows_to_erp, photo_sphere_top
    from dap.io import read_photo_sphere

    h, w = rgb.shape[:2]
    if o.pad_to_erp and w > 2 * h and w % 2 == 0:
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


def ingest(sources: list[str], pool: str | os.PathLike, options: IngestOptions | None = None,
           progress: bool = True) -> dict[str, int]:
    """Add the panoramas (and sampled video frames) of `sources` to `pool`; returns counts by outcome. One ingest
    into a pool at a time: each writes the manifest it read plus its rows, so a second one would lose the first's."""
    from dap.io import folder_lock

    with folder_lock(pool, "dap curate ingest"):
        return _ingest(sources, pool, options, progress)


def _ingest(sources: list[str], pool: str | os.PathLike, options: IngestOptions | None,
            progress: bool) -> dict[str, int]:
    from tqdm import tqdm

    from dap.io import write_rgb

    o = options or IngestOptions()
    pool = Path(pool)
    tags = read_tags(o.tags) if o.tags else {}
    files = expand_sources(sources)
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

    given = {os.path.abspath(f) for f in files}
    for r in rows:  # a tag file given on a later ingest tags the pool's items from these sources too
        name = Path(r["path"]).name
        if r["status"] == "ok" and name in tags and os.path.abspath(r["path"]) in given:
            r.update(domain=tags[name], domain_from="user")
    hashes = HashIndex(o.dedupe_bits)
    for r in rows:
        if r["status"] == "ok":
            hashes.add(r["phash"], r["id"])
    counts = {"added": 0, "duplicate": 0, "rejected": 0, "already_in_pool": 0}
    last_write = time.monotonic()
    for path in tqdm(files, desc="ingest", unit="file", disable=not progress, dynamic_ncols=True):
        source = o.source or path.parent.name
        try:
            checksum = file_checksum(path)
        except OSError as e:
            rows.append(_rejected(path, source, "", None, f"cannot read the file: {e}"))
            counts["rejected"] += 1
            continue
        frames = _decoded(path, o.every_s)
        frame = None
        while True:
            try:
                frame, t, rgb = next(frames)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - any decode failure is this item's row, never the run's end
                # The file's row (frame None): a video that breaks after some frames keeps those frames' rows.
                row = _rejected(path, source, checksum, None, f"cannot decode: {e}")
                if row["id"] not in known:
                    known.add(row["id"])
                    counts["rejected" if put(row) else "already_in_pool"] += 1
                break
            row = {**empty_row(), "id": item_id(checksum, frame), "source": source, "path": str(path),
                   "checksum": checksum, "frame_time": t, "height": rgb.shape[0], "width": rgb.shape[1],
                   "kind": "generated" if o.generated else "image" if frame is None else "video_frame",
                   "status": "ok"}
            if row["id"] in known:
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
                if path.name in tags:
                    row.update(domain=tags[path.name], domain_from="user")
                put(row)
                counts["added"] += 1
        if time.monotonic() - last_write > 30:  # a killed ingest keeps what it did, minus the last seconds
            write_manifest(pool, rows)
            last_write = time.monotonic()
    write_manifest(pool, rows)
    return counts


def _levelled(rgb: np.ndarray) -> np.ndarray | None:
    """The panorama a level camera would have taken (`dap.geometry.level_rotation`), or None if it cannot tell."""
    rotation = level_rotation(rgb)
    return None if rotation is None else level_panorama(rgb, rotation)


def _rejected(path: Path, source: str, checksum: str, frame: int | None, reason: str) -> dict:
    return {**empty_row(), "id": item_id(checksum or str(path), frame), "source": source, "path": str(path),
            "checksum": checksum, "kind": "video_frame" if frame is not None else "image", "status": "rejected",
            "reason": reason}
