"""Sharded synthetic datasets: WebDataset-style tar shards + a Parquet manifest, and a torch Dataset over them.

Layout of DIR:
  synth_config.json          settings and renderer version the shards were written with (a rerun must match)
  shard-000000.tar ...       per sample, in this order: <key>.depth.npy (float32 metres, 0 = sky),
                             <key>.instance.png (uint16), <key>.json (seed, kind, style, scene, stats),
                             <key>.mask.png (uint8 bits: 1 = sky, 2 = out of range: sky or > 100 m),
                             <key>.rgb.png (8-bit RGB)
  manifest.parquet           one row per sample: key, shard, seed, kind, style, layout, height, width,
                             scene (JSON), depth_min, depth_median, depth_max, sky_fraction, range_fraction

Bytes are a function of the settings only: tar headers carry no time or owner, PNGs no timestamps, JSON is
key-sorted. A shard appears under its final name only when complete (atomic rename), so a rerun keeps every
existing shard and redoes the one that was interrupted.

Members are encoded/decoded here, in memory, rather than through `dap.io` (which works on file paths).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from dap.data.synthetic import RENDERER_VERSION, depth_stats, get_style, kind_for_seed, make_scene, render
from dap.errors import DapError, DatasetLayoutError, UnreadableFileError
from dap.geometry import check_erp_shape
from dap.io import atomic_write, folder_lock

MANIFEST = "manifest.parquet"
CONFIG = "synth_config.json"
FORMAT_VERSION = 1
SKY_BIT, RANGE_BIT = 1, 2
SAMPLE_KEYS = ("rgb", "depth", "valid", "range_mask", "sky_mask", "key", "kind", "style")
"""Keys of a `ShardDataset` sample: rgb float32 (3, H, W) in [0, 1]; depth float32 (1, H, W) metres, 0 = sky;
valid bool (1, H, W) = depth > 0 and within 100 m; range_mask / sky_mask bool (1, H, W); key, kind, style str."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # fast; PIL writes no timestamp chunk
    return buf.getvalue()


def encode_sample(key: str, out: dict[str, np.ndarray], meta: dict) -> dict[str, bytes]:
    """Tar members of one rendered sample, name -> bytes (names sorted = member order)."""
    mask = out["sky_mask"].astype(np.uint8) * SKY_BIT | out["range_mask"].astype(np.uint8) * RANGE_BIT
    depth = io.BytesIO()
    np.save(depth, out["depth"].astype(np.float32))
    files = {
        f"{key}.rgb.png": _png((out["rgb"] * 255 + 0.5).astype(np.uint8)),
        f"{key}.depth.npy": depth.getvalue(),
        f"{key}.mask.png": _png(mask),
        f"{key}.instance.png": _png(out["instance"].astype(np.uint16)),
        f"{key}.json": json.dumps(meta, sort_keys=True).encode(),
    }
    return dict(sorted(files.items()))


def write_tar(path: Path, members: Iterator[tuple[str, bytes]]) -> None:
    """Write a tar with fixed headers (mtime 0, uid/gid 0, no user names) so equal content gives equal bytes."""
    with atomic_write(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data), 0, 0o644, 0, 0, "", "")
            tar.addfile(info, io.BytesIO(data))


def render_sample(index: int, cfg: dict, device: str | None = None) -> dict[str, bytes]:
    """Render and encode sample `index` of a dataset with settings `cfg` (see `write_dataset`) on `device`."""
    seed = cfg["seed"] + index
    kind = kind_for_seed(seed, cfg["kind"])
    scene = make_scene(seed, kind)
    h, w = cfg["resolution"]
    out = render(scene, h, w, cfg["style"], cfg["supersample"], device=device)
    key = f"{index:08d}"
    meta = dict(key=key, seed=seed, kind=kind, style=cfg["style"], layout=scene.layout, height=h, width=w,
                supersample=cfg["supersample"], scene=scene.to_dict(), **depth_stats(out))
    return encode_sample(key, out, meta)


def _write_shard(job: tuple[str, int, dict, str | None], on_sample: Callable[[], None] | None = None) -> int:
    root, shard, cfg, device = job
    first, last = shard * cfg["shard_size"], min((shard + 1) * cfg["shard_size"], cfg["count"])

    def members():
        for i in range(first, last):
            yield from render_sample(i, cfg, device).items()
            if on_sample is not None:
                on_sample()

    write_tar(Path(root) / shard_name(shard), members())
    return last - first


def _worker_init(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the parent stops the pool and cleans up, each worker printing its
    # own KeyboardInterrupt traceback would bury its one line. (Not SIGTERM: the pool stops its workers with it.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the parent's pid as it gave it: one killed while this worker was still importing torch is gone already
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="dap-synth-parent").start()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker once `parent` has gone (killed with SIGKILL, nothing stops the pool): orphans went on
    rendering into a folder no run held and printed tracebacks on the terminal. Its shard in progress is left as a
    temporary, which the next run removes."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def write_dataset(out: str | os.PathLike, count: int, *, kind: str = "mixed", style: str = "clean",
                  resolution: tuple[int, int] = (512, 1024), workers: int = 1, shard_size: int = 64,
                  seed: int = 0, supersample: int = 1, progress: bool = True, device: str | None = None) -> Path:
    """Render `count` panoramas (sample i from seed + i) into tar shards under `out`; returns the manifest path.

    `device` (torch device for the ray casting, default CPU) is not part of the dataset's settings: a folder
    started on one device can be resumed on another (the float rounding of the two may differ slightly).
    Rerunning with the same settings resumes: complete shards are kept, missing or interrupted ones redone.
    """
    if count < 1 or shard_size < 1 or workers < 1 or supersample < 1:
        raise ValueError("count, shard_size, workers and supersample must all be >= 1")
    kind_for_seed(seed, kind)  # validates kind
    texture_dirs = get_style(style).texture_dirs  # validates the style too
    check_erp_shape(*resolution, "resolution")
    if seed + count > 2**63:  # the manifest stores seeds as int64: the last one failed there, after every render
        raise DapError(f"seeds {seed} to {seed + count - 1} pass the largest the manifest stores (2^63 - 1); choose a "
                       "smaller --seed")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    with folder_lock(root, "dap synth"):  # a second run into it would delete this one's shard in progress
        _check_not_foreign(root)
        cfg = dict(version=FORMAT_VERSION, renderer=RENDERER_VERSION, count=count, kind=kind, style=style,
                   resolution=list(resolution), shard_size=shard_size, seed=seed, supersample=supersample)
        if texture_dirs:  # the photos behind the textures, not only their folders: one changed changes the samples
            cfg["textures"] = _texture_fingerprint(texture_dirs)
        cfg_path = root / CONFIG
        if not cfg_path.exists() and (theirs := sorted(root.glob("shard-*.tar"))):
            # shards that no run of ours recorded (WebDataset's names are ours too): replaced or mixed in otherwise
            raise DapError(f"{root} holds {len(theirs)} shard file(s) ({theirs[0].name}, ...) but no {CONFIG}: not a "
                           "`dap synth` dataset, or one whose settings file was deleted, so its shards cannot be told "
                           "apart from new ones. Choose a new --out folder")
        # The settings bind the folder only once a shard exists: a run stopped before its first shard (rejected,
        # interrupted) must not block the corrected rerun.
        if cfg_path.exists() and any(root.glob("shard-*.tar")):
            try:
                old = json.loads(cfg_path.read_text())
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                raise DapError(f"cannot read {cfg_path} ({e}); the shards beside it cannot be resumed safely. Choose a "
                               "new --out folder, or delete the folder to render it again.") from e
            if old.get("renderer") != cfg["renderer"]:  # no option chooses it: "the same settings" cannot resume
                raise DapError(f"{root} holds a dataset written by renderer version {old.get('renderer')!r}; this dap "
                               f"renders version {cfg['renderer']!r}, so it cannot add to it. Choose a new --out "
                               "folder (or finish it with the dap version that began it).")
            if old != cfg:
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in cfg.items() if old.get(k) != v)
                raise DapError(f"{root} holds a dataset written with other settings ({diff}). Rerun with the same "
                               "settings to resume it, or choose a new --out folder.")
        else:
            with atomic_write(cfg_path) as tmp:
                tmp.write_text(json.dumps(cfg, sort_keys=True, indent=1))
        _remove_partial_shards(root)  # left by a killed run: those shards are redone

        n_shards = -(-count // shard_size)
        # Shards are written whole (atomic_write), but a copy or a disk can still cut one short: only a shard that reads
        # back with all its samples' members is kept, the rest are rendered again
        existing = {p.name for p in root.glob("shard-*.tar")}  # one listing: a stat per shard took minutes for 10^7
        todo = [s for s in range(n_shards)
                if shard_name(s) not in existing or not _shard_complete(root / shard_name(s), s, shard_size, count)]
        done = count - sum(min((s + 1) * shard_size, count) - s * shard_size for s in todo)
        from tqdm import tqdm

        with tqdm(total=count, initial=done, unit="pano", desc="dap synth", disable=not progress) as bar:
            jobs = [(str(root), s, cfg, device) for s in todo]
            if workers == 1 or len(jobs) <= 1:
                for job in jobs:
                    _write_shard(job, lambda: bar.update(1))
            else:
                processes = min(workers, len(jobs))  # each one imports torch: none without a shard to render
                threads = max(1, (os.cpu_count() or 1) // processes)
                # spawn: forking a process that already ran torch ops can deadlock its thread pool
                try:
                    with mp.get_context("spawn").Pool(processes, _worker_init, (threads, os.getpid())) as pool:
                        for n in pool.imap_unordered(_write_shard, jobs):
                            bar.update(n)
                except BaseException:  # interrupted, or a worker failed: the pool is stopped, and its workers'
                    _remove_partial_shards(root)  # shards in progress are left half-written
                    raise
        ours = [shard_name(s) for s in range(n_shards)]
        if others := sorted(existing - set(ours)):  # a copy, or a larger earlier run's: not this dataset's panoramas
            print(f"dap synth: note: {len(others)} other shard file(s) in {root} ({others[0]}, ...) are not this "
                  f"dataset's {n_shards} shards and are left out of its manifest", file=sys.stderr)
        return write_manifest(root, ours)


def _texture_fingerprint(dirs: tuple[str, ...]) -> str:
    """SHA-256 (16 hex digits) of the texture bank `load_texture_tiles` cuts from `dirs`."""
    import hashlib

    from dap.data.synthetic import load_texture_tiles

    return hashlib.sha256(load_texture_tiles(dirs).tobytes()).hexdigest()[:16]


def _remove_partial_shards(root: Path) -> None:
    """Remove the temporaries of shards being written (`atomic_write`'s), which only a run that holds the folder
    may do: they are then all its own, or a killed run's."""
    for partial in root.glob(".shard-*.tmp.tar"):
        partial.unlink(missing_ok=True)


def _check_not_foreign(root: Path) -> None:
    """Refuse a folder whose manifest.parquet is not a `dap synth` manifest (a curation pool's, say): writing the
    dataset's manifest over it would lose every row of it."""
    path = root / MANIFEST
    if not path.exists():
        return
    try:
        names = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 - pyarrow raises several types
        if (root / CONFIG).is_file():  # ours, damaged since (cut short by a copy or a disk): rebuilt from the shards
            return
        names = []
    if "shard" not in names:
        what = "a curation pool's" if {"id", "status"} <= set(names) else "one `dap synth` did not write"
        raise DapError(f"{root} holds a {MANIFEST}, {what}, which `dap synth` would replace. Choose a new --out "
                       "folder for the dataset")


SAMPLE_MEMBERS = ("depth.npy", "instance.png", "json", "mask.png", "rgb.png")  # `encode_sample`'s files per key


def _shard_complete(path: Path, shard: int, shard_size: int, count: int) -> bool:
    """Whether shard `shard` exists and holds every member of its samples (and nothing else)."""
    if not path.is_file():
        return False
    want = {f"{i:08d}.{m}" for i in range(shard * shard_size, min((shard + 1) * shard_size, count))
            for m in SAMPLE_MEMBERS}
    try:
        with tarfile.open(path) as tar:
            return {m.name for m in tar.getmembers() if m.isfile()} == want
    except (tarfile.TarError, OSError):
        return False


def iter_shard(path: str | os.PathLike) -> Iterator[tarfile.TarInfo]:
    try:
        with tarfile.open(path) as tar:
            yield from tar.getmembers()
    except (tarfile.TarError, OSError) as e:
        raise UnreadableFileError(f"cannot read shard {path}: {e}. Delete it and rerun `dap synth` with the "
                                  "same settings to rewrite it.") from e


def write_manifest(root: str | os.PathLike, shards: list[str] | None = None) -> Path:
    """(Re)build manifest.parquet from the JSON members of the shards under `root`: those named in `shards`, or
    every shard-*.tar."""
    root = Path(root)
    rows = []
    for shard in [root / name for name in shards] if shards is not None else sorted(root.glob("shard-*.tar")):
        try:
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(m).read())
                        meta["scene"] = json.dumps(meta["scene"], sort_keys=True)
                        meta["shard"] = shard.name
                        rows.append(meta)
        except (tarfile.TarError, OSError, ValueError, KeyError) as e:
            raise UnreadableFileError(f"cannot read shard {shard}: {e}. Delete it and rerun `dap synth` with the "
                                      "same settings to rewrite it.") from e
    if not rows:
        raise DatasetLayoutError(f"no shard-*.tar files in {root}; write a dataset with `dap synth --out {root}`")
    table = pa.Table.from_pylist(rows)
    path = root / MANIFEST
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(root_or_manifest: str | os.PathLike) -> tuple[Path, pa.Table]:
    """(dataset folder, manifest table) from a folder or the manifest file itself."""
    p = Path(root_or_manifest)
    manifest = p / MANIFEST if p.is_dir() else p
    if not manifest.is_file():
        if p.is_dir() and any(p.glob("shard-*.tar")):  # `dap synth` stopped after its shards, before the manifest
            raise DatasetLayoutError(f"{p} holds shards but no {MANIFEST}: `dap synth` was stopped before writing "
                                     "it; rerun the same `dap synth` command to finish (it keeps the shards)")
        raise DatasetLayoutError(f"{manifest} does not exist; pass a folder written by `dap synth` "
                                 "(it holds manifest.parquet and shard-*.tar) or the manifest file itself")
    try:
        return manifest.parent, pq.read_table(manifest)
    except (OSError, pa.ArrowException) as e:
        raise UnreadableFileError(f"cannot read the manifest {manifest}: {e}. Rebuild it from the shards with "
                                  "`dap synth` and the same settings (it rewrites the manifest).") from e


class ShardDataset(torch.utils.data.Dataset):
    """Map-style dataset over `dap synth` shards; samples are dicts with `SAMPLE_KEYS`.

    The tar member offsets are indexed once, so reading a sample is two seeks; file handles are opened
    lazily per process (safe with DataLoader workers). `transform(sample) -> sample` runs last.
    """

    split = "all"  # a `dap synth` dataset is one set: every panorama of it is read

    def __init__(self, root_or_manifest: str | os.PathLike, transform: Callable[[dict], dict] | None = None):
        self.root, table = read_manifest(root_or_manifest)
        where = Path(root_or_manifest)
        columns = ["key", "shard", "kind", "style"]
        if lacking := [c for c in columns if c not in table.column_names]:
            raise DatasetLayoutError(f"the manifest of {where} lacks the column(s) {', '.join(lacking)}, which dap "
                                     "synth writes; rebuild it with `dap synth` and the same settings")
        self.rows = table.select(columns).to_pylist()
        if not self.rows:
            raise DatasetLayoutError(f"the manifest of {where} lists no panoramas; render some with `dap synth`")
        seen: set[str] = set()
        if twice := next((r["key"] for r in self.rows if r["key"] in seen or seen.add(r["key"])), None):
            raise DatasetLayoutError(f"the manifest of {where} lists the panorama {twice} twice (it would be read, "
                                     "trained on and scored twice); rebuild it with `dap synth` and the same settings")
        self.transform = transform
        self._index: dict[str, dict[str, tuple[int, int]]] = {}
        for shard in sorted({r["shard"] for r in self.rows}):
            path = self.root / shard
            if not path.is_file():
                raise DatasetLayoutError(f"the manifest lists {path} but it is missing; rerun `dap synth` with "
                                         "the same settings to rewrite it")
            self._index[shard] = {m.name: (m.offset_data, m.size) for m in iter_shard(path)}
        # a shard cut short between members still opens: its lost samples are named now, not when first drawn
        lost = [(r["key"], r["shard"]) for r in self.rows
                if any(f"{r['key']}.{part}" not in self._index[r["shard"]] for part in SAMPLE_MEMBERS)]
        if lost:
            key, shard = lost[0]
            raise UnreadableFileError(f"{self.root / shard} lacks sample {key}'s files ({len(lost)} sample(s) of the "
                                      "manifest in all): the shard is cut short or does not match the manifest; "
                                      "delete it and rerun `dap synth` with the same settings")
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, shard: str, name: str) -> bytes:
        if self._pid != os.getpid():  # forked into a DataLoader worker: do not share file offsets
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.root / shard, "rb")  # noqa: SIM115 - kept open for reuse
        try:
            offset, size = self._index[shard][name]
        except KeyError:
            raise UnreadableFileError(f"{self.root / shard} has no member {name}; the shard does not match the "
                                      "manifest. Rebuild it with `dap synth` using the same settings.") from None
        f.seek(offset)
        return f.read(size)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        key, shard = row["key"], row["shard"]
        try:
            rgb = np.asarray(Image.open(io.BytesIO(self._read(shard, f"{key}.rgb.png"))).convert("RGB"))
            depth = np.load(io.BytesIO(self._read(shard, f"{key}.depth.npy")), allow_pickle=False)
            mask = np.asarray(Image.open(io.BytesIO(self._read(shard, f"{key}.mask.png"))))
        except (OSError, ValueError, EOFError, SyntaxError) as e:  # what Pillow and numpy raise for damaged bytes
            if isinstance(e, UnreadableFileError):
                raise
            raise UnreadableFileError(f"cannot decode sample {key} in {self.root / shard} ({e}); the shard is "
                                      "damaged: delete it and rerun `dap synth` with the same settings") from e
        depth = torch.from_numpy(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32))[None]
        range_mask = torch.from_numpy(mask & RANGE_BIT > 0)[None]
        sample = dict(rgb=torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).contiguous(),
                      depth=depth, valid=(depth > 0) & ~range_mask, range_mask=range_mask,
                      sky_mask=torch.from_numpy(mask & SKY_BIT > 0)[None], key=key, kind=row["kind"],
                      style=row["style"])
        return self.transform(sample) if self.transform is not None else sample

    def __del__(self):
        for f in getattr(self, "_files", {}).values():
            f.close()
