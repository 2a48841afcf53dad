"""The curation pool: one Parquet manifest row per panorama, and the training source over its pseudo-labels.

Layout of a pool folder:
  manifest.parquet        one row per ingested item (accepted or rejected), columns in `COLUMNS`
  images/<id>.jpg         accepted panoramas, decoded and stored as 2:1 JPEG (frames of videos included)
  labels/<stage>/<id>.npz pseudo-labels: depth (float16 metres, 0 = out of range), prob (float16, P(sky or
                          beyond max_depth)), and scalar confidence signals; written atomically, so a file that
                          exists is complete and a resumed run skips it

The manifest is rewritten atomically (temp file + rename) by one process at a time: ingest, the merge after
labeling, scoring and selection. Labeling ranks only write label files; rank 0 merges them afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dap.errors import DatasetLayoutError, UnreadableFileError
from dap.io import atomic_write, utf8_text

MANIFEST = "manifest.parquet"
STAGES = ("stage1", "stage3")  # label stages: the Scene-Invariant and the Realism-Invariant Labeler

# name -> Arrow type; per-stage label columns are added by `stage_columns`.
BASE_COLUMNS: dict[str, pa.DataType] = {
    "id": pa.string(),  # 16 hex digits of sha256(file checksum, frame index)
    "source": pa.string(),  # the source name given at ingest (default: the folder's name)
    "kind": pa.string(),  # image | video_frame | generated
    "path": pa.string(),  # the original file
    "frame_time": pa.float64(),  # seconds into the video (NaN for images)
    "checksum": pa.string(),  # sha256 of the original file
    "image": pa.string(),  # pool-relative path of the stored panorama ('' when rejected)
    "width": pa.int32(),  # original size (0 when undecodable)
    "height": pa.int32(),
    "status": pa.string(),  # ok | rejected
    "reason": pa.string(),  # why rejected ('' when ok)
    "phash": pa.int64(),  # 64-bit perceptual hash (as signed int64)
    "dup_of": pa.string(),  # id of the kept near-duplicate
    "tilt_deg": pa.float64(),  # estimated camera tilt from vertical edges (NaN: too few edges to tell)
    "domain": pa.string(),  # indoor | outdoor | '' (not yet known)
    "domain_from": pa.string(),  # user (a tag file) | labeler (sky fraction of stage 1) | ''
    "disc_score": pa.float64(),  # discriminator's P(real) for the stage-1 label (NaN: not scored)
    "selected": pa.bool_(),  # kept by stage-2 selection
    "stage": pa.string(),  # furthest step reached: rejected | ingested | labelled1 | scored | selected | labelled3
}


LABEL_SIGNALS = ("sky_fraction", "mask_certainty", "tta_absrel")  # scalars of a label file, <stage>_<name> columns


def stage_columns(stage: str) -> dict[str, pa.DataType]:
    return {
        f"{stage}_label": pa.string(),  # pool-relative label file ('' when not labelled)
        f"{stage}_sky_fraction": pa.float64(),  # solid-angle share of the upper hemisphere out of range
        f"{stage}_tta_absrel": pa.float64(),  # disagreement under yaw-roll + flip test-time augmentation
        f"{stage}_mask_certainty": pa.float64(),  # mean |2p - 1| of the range-mask probability
    }


COLUMNS: dict[str, pa.DataType] = {**BASE_COLUMNS, **{k: v for s in STAGES for k, v in stage_columns(s).items()}}
SCHEMA = pa.schema(list(COLUMNS.items()))


def empty_row() -> dict:
    """Defaults for every column: '' for text, NaN for floats, 0 / False otherwise."""
    row = {}
    for name, t in COLUMNS.items():
        row[name] = "" if t == pa.string() else math.nan if pa.types.is_floating(t) else False \
            if t == pa.bool_() else 0
    return row


@contextlib.contextmanager
def pool_job(pool: Path, what: str, device: str) -> Iterator:
    """A step that writes the pool's manifest (`what` names it), as one process or as the ranks of a torchrun job:
    joins the job (`dap.train.setup_distributed`, its `Dist` is yielded), rank 0 holds the pool meanwhile (an ingest
    or another step writing the manifest it read earlier would lose this one's rows), and the process group made
    here is destroyed after."""
    import torch.distributed as dist

    from dap.io import folder_lock
    from dap.train import setup_distributed

    d = setup_distributed(device)
    try:
        with folder_lock(pool, what) if d.main else contextlib.nullcontext():
            yield d
        if d.world > 1:  # every rank done (rank 0 wrote the manifest) before any tears gloo down, as dap train does
            dist.barrier()
    finally:
        if d.initialised_here:
            dist.destroy_process_group()


def manifest_path(pool: str | os.PathLike) -> Path:
    return Path(pool) / MANIFEST


def read_manifest(pool: str | os.PathLike) -> list[dict]:
    """Rows of the pool's manifest ([] for a new pool). Columns missing in an older file get defaults."""
    path = manifest_path(pool)
    if not path.exists():
        return []
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DatasetLayoutError(f"cannot read the curation manifest {path}: {e}. It is only ever replaced "
                                 "atomically, so this file was damaged outside dap; restore it or re-run "
                                 "`dap curate ingest` into a new --pool") from e
    missing = sorted({"id", "status"} - set(table.column_names))
    if missing:  # e.g. a `dap synth` folder (manifest.parquet of shards): rewriting it would lose that dataset
        what = "a `dap synth` dataset" if "shard" in table.column_names else "another kind of manifest"
        raise DatasetLayoutError(f"{pool} is not a curation pool: its {MANIFEST} is {what} (no {', '.join(missing)} "
                                 "column). A pool needs a folder of its own (curate's --pool, or a pseudo source's "
                                 "path; a new one is created)")
    for name in table.column_names:  # a table rewritten by other tools (pandas) may widen a column's type
        if name in COLUMNS and table.schema.field(name).type != COLUMNS[name]:
            try:
                table = table.set_column(table.column_names.index(name), name, table[name].cast(COLUMNS[name]))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DatasetLayoutError(f"the curation manifest {path} has a {name} column of type "
                                         f"{table.schema.field(name).type}, not {COLUMNS[name]}: {e}. Restore the "
                                         "file dap wrote, or re-run `dap curate ingest` into a new --pool") from e
    rows = table.to_pylist()
    defaults = empty_row()
    # a null (pandas writes NaN as one) is the column's default: NaN for a number, "" for a text
    rows = [{**defaults, **{k: v for k, v in r.items() if k in COLUMNS and v is not None}} for r in rows]
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if (first := seen.setdefault(r["id"], i)) != i:  # selected and trained on twice otherwise
            raise DatasetLayoutError(f"the curation manifest {path} lists the id {r['id']} twice (rows {first} and "
                                     f"{i}); delete one of the two rows")
    return rows


def empty_pool_problem(pool: Path) -> str:
    """Why `pool` has no rows, with the step that adds them: no manifest, or one that an ingest which found nothing
    wrote."""
    if not manifest_path(pool).exists():
        return f"{pool} has no {MANIFEST}: run `dap curate ingest SOURCES --pool {pool}` first"
    return (f"{pool} lists no panoramas (its ingests found none): run `dap curate ingest` on a folder of panoramas "
            f"with --pool {pool}")


def row_stage(row: dict) -> str:
    if row["status"] != "ok":
        return "rejected"
    if row["stage3_label"]:
        return "labelled3"
    if row["selected"]:
        return "selected"
    if math.isfinite(row["disc_score"]):
        return "scored"
    return "labelled1" if row["stage1_label"] else "ingested"


def lost_labels(pool: Path, rows: list[dict], stage: str) -> list[dict]:
    """Accepted rows whose manifest names a `stage` label file that is not there (deleted since it was merged)."""
    return [r for r in rows
            if r["status"] == "ok" and r[f"{stage}_label"] and not (pool / r[f"{stage}_label"]).is_file()]


def label_settings_path(pool: Path, stage: str) -> Path:
    """Where `dap curate label` records the model, resolution, TTA and precision a stage's labels were made with."""
    return pool / "labels" / stage / "settings.json"


def check_labels_present(pool: Path, rows: list[dict], stage: str, step: str) -> None:
    """Refuse a step that reads `stage` labels while some the manifest names are gone: it would fail on the first
    one it reads (training: hours in), or leave them out without saying so."""
    if lost := lost_labels(pool, rows, stage):
        again = f" --stage {stage}" if stage != "stage1" else ""
        try:  # how the others were made, which the new ones must match (`dap curate label` refuses other settings)
            made = json.loads(label_settings_path(pool, stage).read_text())
            h, w = made["resolution"]
            again += f" --resolution {h}x{w}" + ("" if made.get("tta", True) else " --no-tta")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        raise DatasetLayoutError(f"{len(lost)} {stage} label file(s) that the manifest of {pool} names are gone (e.g. "
                                 f"{lost[0][f'{stage}_label']}): run `dap curate label --pool {pool} --model <the "
                                 f"model that made the others>{again}` to make them again, then {step}")


def write_manifest(pool: str | os.PathLike, rows: list[dict]) -> Path:
    path = manifest_path(pool)
    rows = [{**r, "stage": row_stage(r)} for r in rows]
    table = pa.Table.from_pylist([{k: _text(r.get(k)) for k in COLUMNS} for r in rows], schema=SCHEMA)
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _text(value):
    # A source file name that is not UTF-8 is stored escaped; the pool keeps its own copy of the image.
    return utf8_text(value) if isinstance(value, str) else value


def save_label(path: Path, depth: np.ndarray, prob: np.ndarray, **scores: float) -> None:
    """One pseudo-label: float16 metres (0 where out of range) and float16 range probability."""
    with atomic_write(path) as tmp:
        np.savez(tmp, depth=depth.astype(np.float16), prob=prob.astype(np.float16),
                 **{k: np.float64(v) for k, v in scores.items()})


def load_label(path: Path) -> dict[str, np.ndarray]:
    """A pseudo-label's arrays; a file that cannot be read (emptied, cut short, not ours) raises a DapError that
    says how to make it again (was EOFError or numpy's pickle advice, from label, score, status and training)."""
    again = "delete it and run `dap curate label` again, which makes the missing ones"
    try:
        with np.load(path, allow_pickle=False) as z:
            label = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UnreadableFileError(f"the pseudo-label {path} cannot be read ({type(e).__name__}: {e}); {again}") from e
    # what save_label writes: a 2:1 depth map and a range probability of its shape (a KeyError or a stretched
    # panorama in training otherwise)
    depth, prob = label.get("depth"), label.get("prob")
    if depth is None or prob is None or depth.ndim != 2 or depth.shape != prob.shape or \
            depth.shape[1] != 2 * depth.shape[0]:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in label.items() if k in ("depth", "prob")) or "no depth or prob"
        raise UnreadableFileError(f"the pseudo-label {path} is not one dap curate label writes (a 2:1 depth and a "
                                  f"range probability of its shape; it holds {shapes}); {again}")
    return label


class PseudoLabelDataset(torch.utils.data.Dataset):
    """Training samples from a pool's pseudo-labels of one stage (optionally only the selected rows).

    The range probability becomes supervision for the range head: pixels with prob >= 0.5 are out of range
    (sky, beyond max_depth), the rest carry the label's metres."""

    def __init__(self, pool: str | os.PathLike, stage: str = "stage1", selected_only: bool = False):
        if stage not in STAGES:
            raise ValueError(f"unknown label stage {stage!r}; use one of {', '.join(STAGES)}")
        self.pool = Path(pool)
        rows = read_manifest(self.pool)
        if not rows:
            raise DatasetLayoutError(f"{empty_pool_problem(self.pool)}, and label it")
        self.rows = [r for r in rows if r["status"] == "ok" and r[f"{stage}_label"]
                     and (r["selected"] or not selected_only)]
        check_labels_present(self.pool, self.rows, stage, "train")
        # a lost image is found here, not at a random step hours in
        if lost := [r for r in self.rows if not stored_image(self.pool, r)]:
            raise DatasetLayoutError(lost_images_problem(self.pool, lost, stage))
        self.stage = stage
        if not self.rows:
            what = "selected and labelled" if selected_only else "labelled"
            raise DatasetLayoutError(f"{self.pool} has no {what} rows for {stage}: run the labeling "
                                     f"{'and selection ' if selected_only else ''}first (`dap curate run`)")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        rgb, depth, oor = labelled_arrays(self.pool, self.rows[i], self.stage)
        depth[oor] = 0.0
        return {"rgb": rgb, "depth": depth, "valid": depth > 0, "out_of_range": oor, "name": self.rows[i]["id"]}


def labelled_arrays(pool: Path, row: dict, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb float32 resized to the label's size, depth metres, out-of-range bool) of one labelled row."""
    import cv2

    from dap.io import read_rgb

    z = load_label(pool / row[f"{stage}_label"])
    depth, prob = z["depth"].astype(np.float32), z["prob"].astype(np.float32)
    try:
        rgb = read_rgb(pool / row["image"])
    except UnreadableFileError:  # the pool's own copy: there is nothing to download again
        state = "missing" if not (pool / row["image"]).exists() else "damaged"
        raise UnreadableFileError(f"the pool's stored copy of {row['path']}, {pool / row['image']}, is {state}. Run "
                       f"`dap curate label --pool {pool} --model <the stage's labeler>` (it rejects such rows), then "
                       f"`dap curate ingest {row['path']} --pool {pool}` to store it again, and rerun") from None
    if rgb.shape[:2] != depth.shape:
        rgb = cv2.resize(rgb, depth.shape[::-1], interpolation=cv2.INTER_AREA)
    return rgb, depth, prob >= 0.5


def lost_images_problem(pool: Path, lost: list[dict], stage: str) -> str:
    """What to say of labelled rows whose stored image is gone, and the way back: `label` rejects them (ingest does
    not take back an accepted row), then `ingest` restores them from their files."""
    return (f"{len(lost)} stored image(s) of {pool} that the manifest names are gone (e.g. {lost[0]['image']}, of "
            f"{lost[0]['path']}): `dap curate label --pool {pool} --model <the labeler> --stage {stage}` rejects "
            f"them, then `dap curate ingest <their folder> --pool {pool}` brings them back")


def stored_image(pool: Path, row: dict) -> bool:
    """Whether an accepted row's panorama is still in the pool (deleted or emptied since, it can be neither labelled
    nor trained on)."""
    image = pool / row["image"]
    return image.is_file() and image.stat().st_size > 0
