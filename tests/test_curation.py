"""dap.curation: ingest (dedupe, bad files, videos, tilt, tags), labeling (resume after kill, 2 ranks = 1 rank),
the discriminator (separates GT from degraded depth), top-k selection, pseudo-labels training the range head,
and the whole pipeline from a config. Tiny models, tiny panoramas."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import dual_fisheye, photo_sphere_xmp
from dap.cli import main
from dap.curation import discriminator as D
from dap.curation.ingest import IngestOptions, hamming, ingest, perceptual_hash
from dap.curation.label import LabelOptions, label_pool
from dap.curation.manifest import PseudoLabelDataset, empty_row, load_label, read_manifest, save_label, write_manifest
from dap.curation.selection import keep_count, select_top_k
from dap.errors import DapError, DatasetLayoutError
from dap.geometry import tilt_angle
from dap.io import read_rgb, write_depth, write_rgb

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src/dap/assets/sample_indoor.jpg"
SMALL = 16  # IngestOptions.min_width for these tests' small panoramas (the pool keeps >= 512 wide by default)


pytestmark = pytest.mark.usefixtures("one_thread")


def _render(seed: int, kind: str, h: int = 64) -> dict:
    from dap.data.synthetic import make_scene, render

    return render(make_scene(seed, kind), h, 2 * h, "clean")


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        vw.write(cv2.cvtColor((f * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    vw.release()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from dap.models import create_model, save_model

    torch.manual_seed(0)
    return save_model(create_model("dap_tiny").eval(), tmp_path_factory.mktemp("model") / "tiny")


def _pool_of_renders(root: Path, n: int, h: int = 64) -> Path:
    src = root / "src"
    for i in range(n):
        write_rgb(src / f"pano_{i:02d}.png", _render(100 + i, "indoor" if i % 2 else "outdoor", h)["rgb"])
    pool = root / "pool"
    ingest([str(src)], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    return pool


def _pool_of_noise(root: Path, n: int) -> Path:
    """n distinct 32x64 panoramas (smooth noise: cheap, and far apart for the perceptual hash)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        write_rgb(root / "src" / f"pano_{i:02d}.png", cv2.resize(rng.random((4, 8, 3), np.float32), (64, 32)))
    ingest([str(root / "src")], root / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    return root / "pool"


# ------------------------------------------------------------------------------------------------- ingest
def test_ingest_dedupes_records_bad_files_and_samples_videos(tmp_path):
    src = tmp_path / "in"
    a, b = _render(1, "indoor")["rgb"], _render(2, "outdoor")["rgb"]
    write_rgb(src / "a.png", a)
    write_rgb(src / "a_copy.jpg", cv2.resize(a, (256, 128)))  # re-encoded, resized: a near-duplicate
    write_rgb(src / "b.png", b)
    write_rgb(src / "wide.png", _render(3, "indoor")["rgb"][16:48])  # 4:1, a partial panorama
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("ignored: not an image suffix")
    # 3 s at 4 fps: scene a for 2 s, then scene b; sampling every 1 s gives frames 0, 4, 8 = a, a, b
    _write_video(src / "walk.avi", [a] * 8 + [b] * 4, fps=4)
    (tmp_path / "tags.csv").write_text("file,scene\na.png,indoor\nb.png,outdoor\n")

    pool = tmp_path / "pool"
    counts = ingest([str(src)], pool, IngestOptions(min_width=SMALL, every_s=1.0, tags=str(tmp_path / "tags.csv")),
                    progress=False)
    rows = read_manifest(pool)
    by_path = {}
    for r in rows:
        by_path.setdefault(Path(r["path"]).name, []).append(r)
    assert counts == {"added": 2, "duplicate": 4, "rejected": 2, "already_in_pool": 0, "replaced": 0}
    assert [r["status"] for r in by_path["a.png"]] == ["ok"] and by_path["a.png"][0]["domain"] == "indoor"
    assert by_path["a.png"][0]["domain_from"] == "user" and (pool / by_path["a.png"][0]["image"]).is_file()
    assert by_path["a_copy.jpg"][0]["dup_of"] == by_path["a.png"][0]["id"]
    assert "cannot decode" in by_path["broken.jpg"][0]["reason"]
    assert by_path["wide.png"][0]["reason"].startswith("the image is 128x32 (width x height) but an equirectangular")
    assert "a partial panorama covering +-45 degrees of latitude: use --pad-to-erp" in by_path["wide.png"][0]["reason"]
    video = by_path["walk.avi"]
    assert [r["frame_time"] for r in video] == [0.0, 1.0, 2.0] and {r["kind"] for r in video} == {"video_frame"}
    assert all(r["status"] == "rejected" and r["dup_of"] for r in video)  # a, a, b were all seen already
    assert "notes.txt" not in by_path

    # a rerun adds nothing; --pad-to-erp, the fix the reason names, accepts the partial panorama into the same pool
    again = ingest([str(src)], pool, IngestOptions(min_width=SMALL, every_s=1.0), progress=False)
    assert again == {"added": 0, "duplicate": 0, "rejected": 0, "already_in_pool": 8, "replaced": 0}
    again = ingest([str(src)], pool, IngestOptions(min_width=SMALL, every_s=1.0, pad_to_erp=True), progress=False)
    assert again == {"added": 1, "duplicate": 0, "rejected": 0, "already_in_pool": 7, "replaced": 0}
    after = read_manifest(pool)
    assert [r["id"] for r in after] == [r["id"] for r in rows]  # in place, no second row
    (wide,) = [r for r in after if Path(r["path"]).name == "wide.png"]
    assert wide["status"] == "ok" and wide["reason"] == "" and (pool / wide["image"]).is_file()
    # a tag file given on a later ingest tags the items already in the pool (it was silently ignored)
    untagged = tmp_path / "pool3"
    ingest([str(src / "a.png")], untagged, IngestOptions(min_width=SMALL), progress=False)
    assert read_manifest(untagged)[0]["domain"] == ""
    ingest([str(src / "a.png")], untagged, IngestOptions(min_width=SMALL, tags=str(tmp_path / "tags.csv")),
           progress=False)
    assert [(r["domain"], r["domain_from"]) for r in read_manifest(untagged)] == [("indoor", "user")]
    ingest([str(src / "wide.png")], tmp_path / "pool2", IngestOptions(min_width=SMALL, pad_to_erp=True),
           progress=False)
    (row,) = read_manifest(tmp_path / "pool2")
    assert row["status"] == "ok" and read_rgb(tmp_path / "pool2" / row["image"]).shape == (64, 128, 3)


def test_a_folder_reached_through_a_link_too_is_ingested_by_its_own_path(tmp_path, monkeypatch):
    """The first path os.walk went into won: a file under a linked folder was recorded by the link's path, so a tag by
    its real path missed it, and which one won depended on the file system's listing order."""
    from dap.curation.ingest import expand_sources

    write_rgb(tmp_path / "in" / "z_real" / "a.png", _render(55, "indoor", 32)["rgb"])
    (tmp_path / "in" / "a_link").symlink_to("z_real")
    listing = os.scandir

    class ByName:  # a file system that lists by name: the link first
        def __init__(self, path="."):
            with listing(path) as entries:
                self.entries = iter(sorted(entries, key=lambda e: e.name))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

    monkeypatch.setattr(os, "scandir", ByName)
    assert expand_sources([str(tmp_path / "in")]) == [tmp_path / "in" / "z_real" / "a.png"]


def test_a_tag_file_that_is_no_csv_is_said_so(tmp_path):
    """A field over the csv module's limit (a binary file given as --tags) was a _csv.Error traceback."""
    from dap.curation.ingest import read_tags

    (tmp_path / "tags.csv").write_text("file,domain\n" + "x" * 200_000 + ",indoor\n")
    with pytest.raises(DapError, match="cannot read the tag file .*tags.csv: field larger than field limit"):
        read_tags(tmp_path / "tags.csv")


def test_ingest_lists_sources_as_dap_predict_does(tmp_path):
    """A '**' pattern over two link loops ran for ever; the pool's own images named as files (a shell's expansion of
    pool/images/*.jpg) were ingested again; dap predict's outputs in a folder (x.normals.png) were accepted as
    panoramas; a pattern's other files (code, notes) became "cannot decode" rows; one dangling link among the files
    given stopped the whole ingest."""
    src = tmp_path / "in"
    write_rgb(src / "a.png", _render(51, "indoor", 32)["rgb"])
    write_rgb(src / "a.normals.png", _render(52, "indoor", 32)["rgb"])  # as dap predict --outputs normals writes it
    (src / "notes.py").write_text("print('not a panorama')")
    pool = tmp_path / "pool"
    opts = IngestOptions(min_width=SMALL, max_tilt_deg=90)
    assert ingest([str(src / "*")], pool, opts, progress=False)["added"] == 1
    assert [Path(r["path"]).name for r in read_manifest(pool)] == ["a.png"]
    images = sorted(str(p) for p in (pool / "images").iterdir())
    counts = ingest(images, pool, opts, progress=False)
    assert not any(counts.values()) and len(read_manifest(pool)) == 1
    write_rgb(src / "b.png", _render(53, "outdoor", 32)["rgb"])
    (src / "gone.png").symlink_to(src / "nowhere.png")
    assert ingest([str(src / "b.png"), str(src / "gone.png")], pool, opts, progress=False)["added"] == 1
    (gone,) = [r for r in read_manifest(pool) if Path(r["path"]).name == "gone.png"]
    assert gone["status"] == "rejected" and gone["reason"] == "cannot read the file: it is a symbolic link to " \
        f"{src / 'nowhere.png'}, which does not exist"
    loops = tmp_path / "loops"
    write_rgb(loops / "c.png", _render(54, "indoor", 32)["rgb"])
    (loops / "x").symlink_to(".")
    (loops / "y").symlink_to(".")
    with pytest.raises(DapError, match="over and over through symbolic links"):
        ingest([str(loops / "**" / "*.png")], pool, opts, progress=False)


def test_ingest_tags_by_path_or_name_and_says_what_they_did_not_do(tmp_path, capsys):
    for i, cam in enumerate(("indoorcam", "outdoorcam")):  # every camera names its files IMG_0001.jpg
        write_rgb(tmp_path / "in" / cam / "IMG_0001.png", _render(20 + i, "indoor", 32)["rgb"])
    tags = tmp_path / "tags.csv"  # Excel's CSV UTF-8 starts with a byte-order mark
    tags.write_text("\ufeffpath,domain\nin/indoorcam/IMG_0001.png,indoor\nin/outdoorcam/IMG_0001.png,outdoor\n"
                    "in/gone.png,indoor\n")
    pool = tmp_path / "pool"
    ingest([str(tmp_path / "in")], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90, tags=str(tags)),
           progress=False)
    assert {Path(r["path"]).parent.name: r["domain"] for r in read_manifest(pool)} == {"indoorcam": "indoor",
                                                                                       "outdoorcam": "outdoor"}
    assert all(Path(r["path"]).is_absolute() for r in read_manifest(pool))  # found by tags from any folder
    assert "1 entries of" in capsys.readouterr().err  # in/gone.png tags nothing
    tags.write_text("file,domain\nIMG_0001.png,outdoor\n")  # a bare name tags every file of that name
    ingest([str(tmp_path / "in")], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90, tags=str(tags)),
           progress=False)
    assert {r["domain"] for r in read_manifest(pool)} == {"outdoor"}
    assert "tags 1 file name(s) that several files of this ingest have" in capsys.readouterr().err
    for text, problem in [("file,domain\na.png,indoor\na.png,outdoor\n", "line 3: a.png is tagged both indoor and"),
                          ("file,domain\na.png,kitchen\n", "line 2: domain 'kitchen' for 'a.png' is not indoor"),
                          ("file,domain\nin/a.png,indoor\na.png,outdoor\n",  # the path won, silently
                           r"in/a.png is tagged indoor by its path and outdoor by its name a.png; keep one")]:
        tags.write_text(text)
        with pytest.raises(DapError, match=problem):
            ingest([str(tmp_path / "in")], pool, IngestOptions(min_width=SMALL, tags=str(tags)), progress=False)
    tags.write_text("file,domain\na.png,indoor\n", encoding="utf-16")  # a spreadsheet's "Unicode text"
    with pytest.raises(DapError, match="is not UTF-8 text .*save it as CSV UTF-8"):
        ingest([str(tmp_path / "in")], pool, IngestOptions(min_width=SMALL, tags=str(tags)), progress=False)


def test_ingest_replaces_an_edited_file_and_skips_its_own_pool(tmp_path):
    src = tmp_path / "in"
    a = _render(30, "indoor", 32)["rgb"]
    write_rgb(src / "a.png", a)
    b = _render(31, "outdoor", 32)["rgb"]
    write_rgb(src / "b.png", b)
    write_rgb(src / "b_again.png", b)  # byte for byte the same file: a duplicate, not "already in the pool"
    opts = IngestOptions(min_width=SMALL, max_tilt_deg=90)
    pool = src / "pool"  # inside its source folder: its own images must not be ingested back
    assert ingest([str(src)], pool, opts, progress=False) == {"added": 2, "duplicate": 1, "rejected": 0,
                                                              "already_in_pool": 0, "replaced": 0}
    # the copy has a row, so that `dap curate status` counts the duplicate the ingest reported
    (copy,) = [r for r in read_manifest(pool) if Path(r["path"]).name == "b_again.png"]
    assert copy["status"] == "rejected" and copy["reason"].startswith("near-duplicate of") and copy["dup_of"]
    assert "the same bytes as" in copy["reason"] and copy["reason"].endswith("b.png)")
    assert ingest([str(src)], pool, opts, progress=False)["added"] == 0
    # a copy found by a later ingest, or of a rejected file, had no row ("already_in_pool"): it has one too
    write_rgb(tmp_path / "later" / "b_copy.png", b)
    wide = np.zeros((16, 64, 3), np.float32)  # 4:1, rejected
    write_rgb(tmp_path / "later" / "wide.png", wide)
    write_rgb(tmp_path / "later" / "wide_copy.png", wide)
    counts = ingest([str(tmp_path / "later")], pool, opts, progress=False)
    assert counts["duplicate"] == 2 and counts["already_in_pool"] == 0
    names = {Path(r["path"]).name: r for r in read_manifest(pool)}
    assert names["b_copy.png"]["reason"].endswith("b.png)") and names["wide_copy.png"]["reason"].endswith("wide.png)")
    assert ingest([str(tmp_path / "later")], pool, opts, progress=False)["duplicate"] == 0  # a rerun: nothing new
    write_rgb(src / "a.png", np.clip(a * 1.1, 0, 1))  # brightened: a near-duplicate of its own old version
    assert ingest([str(src)], pool, opts, progress=False)["replaced"] == 1
    rows = [r for r in read_manifest(pool) if Path(r["path"]).name == "a.png"]
    assert [r["status"] for r in rows] == ["rejected", "ok"] and "its file has changed" in rows[0]["reason"]
    assert rows[0]["image"] == "" and (pool / rows[1]["image"]).is_file()
    # overwritten by another photo (a camera's counter reset): the pool keeps its copy of the first as it was
    write_rgb(src / "b.png", _render(32, "indoor", 32)["rgb"])
    assert ingest([str(src)], pool, opts, progress=False)["replaced"] == 0
    assert [r["status"] for r in read_manifest(pool) if Path(r["path"]).name == "b.png"] == ["ok", "ok"]
    # a re-encoded copy of b_again.png's content (b.png's first) is still its near-duplicate
    write_rgb(src / "b_jpeg.jpg", b)
    assert ingest([str(src)], pool, opts, progress=False)["duplicate"] == 1
    # a folder to ingest inside the pool is read: only the pool's own images and labels are left out
    write_rgb(pool / "incoming" / "c.png", _render(33, "outdoor", 32)["rgb"])
    assert ingest([str(pool / "incoming")], pool, opts, progress=False)["added"] == 1
    # a file that cannot be read is one row however often it is ingested (a new row every rerun before)
    (src / "mem.png").symlink_to("/proc/self/mem")
    for _ in range(2):
        ingest([str(src)], pool, opts, progress=False)
    assert sum(Path(r["path"]).name == "mem.png" for r in read_manifest(pool)) == 1
    # two empty files have one checksum: each is its own rejected row, and a rerun rejects nothing anew
    for name in ("e1.jpg", "e2.jpg"):
        (tmp_path / "empty" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "empty" / name).write_bytes(b"")
    assert ingest([str(tmp_path / "empty")], tmp_path / "pool_e", opts, progress=False)["rejected"] == 2
    assert ingest([str(tmp_path / "empty")], tmp_path / "pool_e", opts, progress=False)["rejected"] == 0
    for bad, problem in [(dict(max_width=101), "--max-width must be an even number"),
                         (dict(max_width=100, min_width=512), "--max-width 100 is below --min-width 512"),
                         (dict(max_tilt_deg=math.nan), "--max-tilt must be >= 0 degrees, got nan"),
                         (dict(dedupe_bits=-7), "--dedupe-bits must be 0 to 64")]:
        with pytest.raises(DapError, match=problem):
            ingest([str(src)], pool, IngestOptions(**bad), progress=False)


def test_rows_of_an_older_pool_with_relative_paths_are_left_alone(tmp_path, monkeypatch):
    """Pools written before paths were stored absolute hold paths relative to a folder no longer known: a
    same-named file in today's folder is another file, never an edit of theirs, nor tagged through them."""
    for cam, seed in (("cam1", 40), ("cam2", 41)):
        write_rgb(tmp_path / cam / "IMG_0001.png", _render(seed, "indoor", 32)["rgb"])
    pool = tmp_path / "pool"
    ingest([str(tmp_path / "cam1")], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    rows = read_manifest(pool)
    write_manifest(pool, [{**r, "path": "IMG_0001.png"} for r in rows])  # as the old code stored it, from cam1/
    monkeypatch.chdir(tmp_path / "cam2")
    (tmp_path / "tags.csv").write_text("file,domain\nIMG_0001.png,outdoor\n")
    counts = ingest(["."], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90, tags=str(tmp_path / "tags.csv")),
                    progress=False)
    assert counts["replaced"] == 0 and counts["added"] == 1
    old = read_manifest(pool)[0]
    assert old["status"] == "ok" and old["domain"] == "" and (pool / old["image"]).is_file()


def test_ingest_takes_hdr_panoramas_tone_mapped_and_rejects_a_depth_exr(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    linear = (_render(3, "indoor")["rgb"] ** 2.2 * 60).astype(np.float32)  # linear radiance, any exposure
    cv2.imwrite(str(src / "room.hdr"), linear[..., ::-1].copy())
    write_depth(src / "room_depth.exr", _render(3, "indoor")["depth"])
    # the folder's depth EXR is no input; named explicitly, it is a rejected row that says what it is
    counts = ingest([str(src), str(src / "room_depth.exr")], tmp_path / "pool",
                    IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    assert counts == {"added": 1, "duplicate": 0, "rejected": 1, "already_in_pool": 0, "replaced": 0}
    rows = {Path(r["path"]).name: r for r in read_manifest(tmp_path / "pool")}
    reason = rows["room_depth.exr"]["reason"]
    assert "not all three of R, G and B" in reason and "depth map" in reason
    assert ingest([str(src)], tmp_path / "pool2", IngestOptions(min_width=SMALL, max_tilt_deg=90),
                  progress=False) == {"added": 1, "duplicate": 0, "rejected": 0, "already_in_pool": 0, "replaced": 0}
    stored = read_rgb(tmp_path / "pool" / rows["room.hdr"]["image"])
    assert np.abs(stored - read_rgb(src / "room.hdr")).mean() < 0.06  # the pool stores a JPEG of it
    assert np.abs(stored - np.minimum(linear, 1.0)).mean() > 0.2  # not the radiance clipped at white


def test_ingest_rejects_an_unstitched_dual_fisheye_image(tmp_path):
    src = tmp_path / "in"
    write_rgb(src / "raw.jpg", dual_fisheye(_render(4, "indoor")["rgb"]))
    write_rgb(src / "pano.jpg", _render(4, "indoor")["rgb"])
    counts = ingest([str(src)], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    assert counts == {"added": 1, "duplicate": 0, "rejected": 1, "already_in_pool": 0, "replaced": 0}
    reasons = {Path(r["path"]).name: r["reason"] for r in read_manifest(tmp_path / "pool")}
    assert reasons["raw.jpg"].startswith("an unstitched dual-fisheye image") and reasons["pano.jpg"] == ""


def test_ingest_rejects_blank_images_and_black_video_frames(tmp_path):
    src = tmp_path / "in"
    room = _render(4, "indoor")["rgb"]
    write_rgb(src / "black.png", np.zeros_like(room))
    noisy_grey = 0.5 + np.random.default_rng(0).normal(0, 0.002, room.shape)  # sensor noise is not detail
    write_rgb(src / "grey.png", noisy_grey.astype(np.float32))
    write_rgb(src / "dark_room.png", room * 0.1)  # a dark photograph is not blank
    # a video that fades in from black: its first frame (t = 0) is rejected, the street (t = 1 s) kept
    street = _render(5, "outdoor")["rgb"]
    _write_video(src / "fade.avi", [np.zeros_like(street)] * 2 + [street] * 2, fps=2)
    counts = ingest([str(src)], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90, every_s=1.0),
                    progress=False)
    rows = {(Path(r["path"]).name, 0.0 if np.isnan(r["frame_time"]) else r["frame_time"]): r
            for r in read_manifest(tmp_path / "pool")}
    for blank in [("black.png", 0.0), ("grey.png", 0.0), ("fade.avi", 0.0)]:
        assert rows[blank]["reason"].startswith("blank: one flat colour"), blank
    assert rows["dark_room.png", 0.0]["status"] == "ok" and rows["fade.avi", 1.0]["status"] == "ok"
    assert counts == {"added": 2, "duplicate": 0, "rejected": 3, "already_in_pool": 0, "replaced": 0}


def test_ingest_pads_a_partial_photo_sphere_where_its_xmp_puts_it(tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    full = _render(5, "indoor")["rgb"]  # 64x128
    part = (full[:48] * 255).astype(np.uint8)  # the upper 48 rows: the camera missed the nadir
    Image.fromarray(part).save(src / "sphere.jpg", xmp=photo_sphere_xmp(128, 64, 0, 0, 128, 48), quality=95)
    counts = ingest([str(src)], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90, pad_to_erp=True),
                    progress=False)
    assert counts["added"] == 1
    (row,) = read_manifest(tmp_path / "pool")
    stored = read_rgb(tmp_path / "pool" / row["image"])
    # black below (JPEG rings for a row or two at the edge), none above: not split around the horizon
    assert stored.shape == (64, 128, 3) and stored[50:].max() < 0.05 and stored[:8].mean() > 0.1
    assert np.abs(stored[:48] - full[:48]).mean() < 0.06
    # an image whose XMP says it spans half the circle is rejected with that reason, not padded into a panorama
    Image.fromarray(part).save(src / "half.jpg", xmp=photo_sphere_xmp(256, 128, 64, 0, 128, 48), quality=95)
    ingest([str(src / "half.jpg")], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90,
                                                                      pad_to_erp=True), progress=False)
    reasons = {Path(r["path"]).name: r["reason"] for r in read_manifest(tmp_path / "pool")}
    assert "spans 180 of 360 degrees across" in reasons["half.jpg"]


def test_panoramas_too_small_to_label_are_rejected_with_the_option_to_keep_them(tmp_path):
    src = tmp_path / "in"
    dot = np.random.default_rng(0).random((2, 4, 3)).astype(np.float32)
    write_rgb(src / "dot.png", dot)  # no rows near the horizon: tilt unknown
    write_rgb(src / "thumb.png", _render(1, "indoor", 64)["rgb"])  # 128x64
    write_rgb(src / "ok.png", _render(2, "indoor", 256)["rgb"])  # 512x256
    assert np.isnan(tilt_angle(dot))
    counts = ingest([str(src)], tmp_path / "pool", IngestOptions(max_tilt_deg=90), progress=False)
    assert counts == {"added": 1, "duplicate": 0, "rejected": 2, "already_in_pool": 0, "replaced": 0}
    reasons = {Path(r["path"]).name: r["reason"] for r in read_manifest(tmp_path / "pool")}
    assert reasons["dot.png"].startswith("too small (4x2)") and "--min-width" in reasons["dot.png"]
    assert reasons["thumb.png"].startswith("too small (128x64)") and reasons["ok.png"] == ""
    counts = ingest([str(src)], tmp_path / "pool2", IngestOptions(max_tilt_deg=90, min_width=4), progress=False)
    assert counts["added"] == 3


def test_perceptual_hash_is_robust_to_reencoding_but_not_to_other_scenes():
    a, b = _render(1, "indoor", 128)["rgb"], _render(2, "indoor", 128)["rgb"]
    small = cv2.resize(a, (128, 64), interpolation=cv2.INTER_AREA)
    assert hamming(perceptual_hash(a), perceptual_hash(small)) <= 6
    assert hamming(perceptual_hash(a), perceptual_hash(np.clip(a * 1.1, 0, 1))) <= 6
    assert hamming(perceptual_hash(a), perceptual_hash(b)) > 6


def test_hash_index_finds_what_a_linear_scan_finds():
    import random

    from dap.curation.ingest import HashIndex

    rng = random.Random(0)
    for bits in (-1, 0, 6, 10):
        index, kept = HashIndex(bits), []
        for _ in range(1500):
            value = rng.getrandbits(64)
            if kept and rng.random() < 0.5:  # a near copy of a kept hash, 0-12 bits flipped
                value = kept[rng.randrange(len(kept))][0] % (1 << 64)
                for b in rng.sample(range(64), rng.randint(0, 12)):
                    value ^= 1 << b
            value -= (1 << 64) if value >= 1 << 63 else 0  # int64, as stored
            expected = next((i for h, i in kept if hamming(h, value) <= bits), None)
            assert index.find(value) == expected
            if expected is None:
                kept.append((value, str(len(kept))))
                index.add(value, kept[-1][1])


def test_tilt_estimate_follows_a_known_rotation():
    from dap.geometry import rotate_erp

    rgb = read_rgb(SAMPLE)
    assert tilt_angle(rgb) < 1.5
    for pitch, roll in ((6.0, 0.0), (0.0, 10.0), (8.0, 8.0)):
        tilted = np.asarray(rotate_erp(rgb, pitch=pitch, roll=roll, yaw=30.0))
        assert tilt_angle(tilted) == pytest.approx(np.hypot(pitch, roll), abs=1.5)
    assert np.isnan(tilt_angle(np.full((64, 128, 3), 0.5, np.float32)))  # no edges: cannot tell


def test_ingest_rejects_a_tilted_panorama_with_its_reason(tmp_path):
    from dap.geometry import rotate_erp

    write_rgb(tmp_path / "in/tilted.jpg", np.asarray(rotate_erp(read_rgb(SAMPLE), pitch=15.0)))
    ingest([str(tmp_path / "in")], tmp_path / "pool", IngestOptions(min_width=SMALL), progress=False)
    (row,) = read_manifest(tmp_path / "pool")
    assert row["status"] == "rejected" and "tilted by about 1" in row["reason"] and "--max-tilt" in row["reason"]
    assert "or --level to level it" in row["reason"]
    # with level, it is kept, stored as a level camera would have taken it; a flat image still cannot be levelled
    write_rgb(tmp_path / "in2/tilted.jpg", np.asarray(rotate_erp(read_rgb(SAMPLE), pitch=15.0)))
    ingest([str(tmp_path / "in2")], tmp_path / "pool2", IngestOptions(min_width=SMALL, level=True), progress=False)
    (row,) = read_manifest(tmp_path / "pool2")
    assert row["status"] == "ok" and row["tilt_deg"] > 14
    assert tilt_angle(read_rgb(tmp_path / "pool2" / row["image"])) < 1.5


def test_missing_source_and_bad_tag_file_are_clear_errors(tmp_path):
    with pytest.raises(DapError, match="neither a file, a folder nor a glob"):
        ingest([str(tmp_path / "nope")], tmp_path / "pool", progress=False)
    (tmp_path / "tags.csv").write_text("name,kind\nx,indoor\n")
    write_rgb(tmp_path / "a.png", np.zeros((8, 16, 3), np.float32))
    with pytest.raises(DapError, match="needs columns file"):
        ingest([str(tmp_path / "a.png")], tmp_path / "pool", IngestOptions(tags=str(tmp_path / "tags.csv")),
               progress=False)
    # a tag file with its header and no row yet tags nothing (it was "needs columns ...; it has []")
    from dap.curation.ingest import read_tags

    (tmp_path / "tags.csv").write_text("path,domain\n")
    tags = read_tags(tmp_path / "tags.csv")
    assert (tags.by_path, tags.by_name) == ({}, {})


# ----------------------------------------------------------------------------------------------- labeling
def test_labels_store_depth_and_range_probability_and_tag_domains(tmp_path, tiny_checkpoint):
    pool = _pool_of_renders(tmp_path, 4)
    res = label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), batch_size=3),
                     progress=False)
    assert res == {"labelled_now": 4, "labelled": 4, "unlabelled": 0}
    rows = read_manifest(pool)
    z = load_label(pool / rows[0]["stage1_label"])
    assert z["depth"].dtype == np.float16 and z["depth"].shape == (32, 64) and z["prob"].shape == (32, 64)
    assert np.all(z["depth"][z["prob"] >= 0.5] == 0)  # out of range carries no metres
    for r in rows:
        assert 0 <= r["stage1_sky_fraction"] <= 1 and 0 <= r["stage1_mask_certainty"] <= 1
        assert np.isfinite(r["stage1_tta_absrel"]) and r["stage1_tta_absrel"] >= 0
        assert r["domain"] == ("outdoor" if r["stage1_sky_fraction"] >= 0.05 else "indoor")
        assert r["domain_from"] == "labeler"
    # a second call labels nothing new
    again = label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64)), progress=False)
    assert again["labelled_now"] == 0 and again["labelled"] == 4


def test_tta_signal_is_zero_for_a_model_that_is_equivariant():
    from dap.curation.label import label_batch

    class Constant(torch.nn.Module):  # depth = 3 m everywhere: rolls and flips change nothing
        cfg = type("C", (), {"vit": type("V", (), {"patch_size": 16})()})()

        def forward(self, x):
            b, _, h, w = x.shape
            return {"depth": torch.full((b, 1, h, w), 3.0), "out_of_range_prob": torch.zeros(b, 1, h, w)}

    res = label_batch(Constant(), torch.zeros(2, 3, 32, 64), tta=True, seam_pad=0)
    assert res["tta_absrel"].tolist() == [0.0, 0.0] and res["sky_fraction"].tolist() == [0.0, 0.0]
    assert res["mask_certainty"].tolist() == pytest.approx([1.0, 1.0])


def _label_cmd(pool: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dap.cli", "curate", "label", "--pool", str(pool), "--model", str(model),
            "--resolution", "32x64", "--batch-size", "1", "--workers", "0", *extra]


def _labels(pool: Path) -> dict[str, dict]:
    return {r["id"]: load_label(pool / r["stage1_label"]) for r in read_manifest(pool) if r["stage1_label"]}


def test_killed_labeling_resumes_to_the_same_manifest(tmp_path, tiny_checkpoint):

    ref_pool = _pool_of_noise(tmp_path / "ref", 12)
    pool = tmp_path / "killed"
    shutil.copytree(ref_pool, pool)
    label_pool(ref_pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), batch_size=1),
               progress=False)  # the uninterrupted reference, in this process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_label_cmd(pool, tiny_checkpoint), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    labels = pool / "labels/stage1"
    deadline = time.monotonic() + 600  # generous: a loaded machine can take minutes to start the process
    def complete() -> int:  # hidden names are atomic_write's temporaries
        return sum(not f.name.startswith(".") for f in labels.glob("*.npz"))

    while time.monotonic() < deadline and complete() < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = complete()
    assert 3 <= partial < 12, "the kill must land mid-run"
    assert not any(r["stage1_label"] for r in read_manifest(pool))  # merged only at the end

    out = subprocess.run(_label_cmd(pool, tiny_checkpoint), capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"labelled_now {12 - partial}" in out.stdout  # nothing redone
    assert not list(labels.glob(".*"))  # no temporary left behind
    rows = read_manifest(pool)
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12 and all(r["stage1_label"] for r in rows)
    ours, ref = _labels(pool), _labels(ref_pool)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert np.array_equal(ours[k]["depth"], ref[k]["depth"]) and np.array_equal(ours[k]["prob"], ref[k]["prob"])


def test_two_rank_labeling_equals_one_rank(tmp_path, tiny_checkpoint):

    from dap.curation.label import rank_rows

    one = _pool_of_renders(tmp_path / "one", 6)  # real scenes: the domain tags differ between them
    two = tmp_path / "two"
    shutil.copytree(one, two)
    rows = read_manifest(two)
    parts = [rank_rows(rows, r, 2) for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == list(range(6))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    label_pool(one, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), batch_size=1), progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dap.cli", *_label_cmd(two, tiny_checkpoint)[3:]]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _labels(one), _labels(two)
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        assert np.array_equal(a[k]["depth"], b[k]["depth"]) and np.array_equal(a[k]["prob"], b[k]["prob"])
    assert [r["domain"] for r in read_manifest(one)] == [r["domain"] for r in read_manifest(two)]


def test_labels_do_not_depend_on_the_bf16_timing_of_the_process(tmp_path, tiny_checkpoint, monkeypatch):
    """On a CPU, "auto" is bf16 where a matmul timed in each process says it is faster: the two ranks of one
    labelling, or two sittings of it, made labels in bf16 and in fp32 (the 1- vs 2-rank test failed under load)."""
    import json

    from dap import inference

    one = _pool_of_renders(tmp_path / "one", 2)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    for pool, speedup in ((one, 4.0), (two, 0.5)):  # "auto" would be bf16, then fp32
        monkeypatch.setattr(inference, "cpu_bf16_speedup", lambda s=speedup: s)
        label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), batch_size=1),
                   progress=False)
    a, b = _labels(one), _labels(two)
    assert a.keys() == b.keys() and len(a) == 2
    for k in a:
        assert np.array_equal(a[k]["depth"], b[k]["depth"]) and np.array_equal(a[k]["prob"], b[k]["prob"])
    assert json.loads((one / "labels" / "stage1" / "settings.json").read_text())["precision"] == "fp32"


def test_two_rank_scoring_equals_one_rank(tmp_path, tiny_checkpoint):

    from dap.curation.selection import score_pool

    one = _pool_of_noise(tmp_path / "one", 5)
    label_pool(one, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), tta=False), progress=False)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    torch.manual_seed(0)
    disc = D.DepthDiscriminator(D.DiscriminatorConfig(height=32, width=64, channels=4)).eval()
    D.save_discriminator(disc, tmp_path / "disc")
    assert score_pool(one, disc, progress=False) == 5
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dap.cli", "curate", "score", "--pool", str(two), "--discriminator", str(tmp_path / "disc")]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a = {r["id"]: r["disc_score"] for r in read_manifest(one)}
    b = {r["id"]: r["disc_score"] for r in read_manifest(two)}
    assert a.keys() == b.keys() and all(np.isfinite(v) for v in a.values())
    assert all(abs(a[k] - b[k]) < 1e-6 for k in a)
    assert sorted(f.name for f in (two / "scores").iterdir()) == ["stage1-rank0-of-2.json", "stage1-rank1-of-2.json"]
    # one rank fails (a label file damaged): the manifest is left as it was, never merged with the earlier run's part
    # file of that rank, and the other rank says why it stopped in one line, without a traceback
    from dap.curation.label import rank_rows

    rows = read_manifest(two)
    (two / rows[rank_rows(rows, 1, 2)[0]]["stage1_label"]).write_bytes(b"damaged")  # gone: every rank refuses
    before = (two / "manifest.parquet").read_bytes()
    torch.manual_seed(1)
    D.save_discriminator(D.DepthDiscriminator(D.DiscriminatorConfig(height=32, width=64, channels=4)).eval(),
                         tmp_path / "disc1")
    cmd[cmd.index(str(tmp_path / "disc"))] = str(tmp_path / "disc1")
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode != 0 and (two / "manifest.parquet").read_bytes() == before
    assert "another process of this run failed (its error is printed above)" in out.stderr, out.stderr[-3000:]
    assert "[rank0]: Traceback" not in out.stderr


def test_a_pool_image_deleted_since_ingest_is_rejected_by_labelling_and_restored_by_ingest(tmp_path, tiny_checkpoint,
                                                                                           capsys):
    pool = _pool_of_noise(tmp_path, 3)
    rows = read_manifest(pool)
    (pool / rows[0]["image"]).unlink()
    (pool / rows[1]["image"]).write_bytes(b"")
    # labelling stopped at the first one ("cannot read ...: no such file"), and re-ingesting restored nothing
    res = label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), tta=False),
                     progress=False)
    assert res["labelled_now"] == 1 and "2 rows of" in capsys.readouterr().err
    after = read_manifest(pool)
    assert [r["status"] for r in after] == ["rejected", "rejected", "ok"]
    assert f"ingest {rows[0]['path']} again to restore it" in after[0]["reason"]
    ingest([str(tmp_path / "src")], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    assert [r["status"] for r in read_manifest(pool)] == ["ok", "ok", "ok"]
    assert all((pool / r["image"]).stat().st_size > 0 for r in read_manifest(pool))
    # one cut short: it stopped the labelling of the whole pool (the others' labels never merged), and ingest
    # answered "already in the pool"
    image = pool / rows[0]["image"]
    image.write_bytes(image.read_bytes()[:200])
    res = label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), tta=False),
                     progress=False)
    assert res["labelled_now"] == 1 and "1 rows of" in capsys.readouterr().err  # row 2 was labelled before
    after = read_manifest(pool)
    assert [r["status"] for r in after] == ["rejected", "ok", "ok"] and "cannot be read" in after[0]["reason"]
    assert [bool(r["stage1_label"]) for r in after] == [False, True, True]
    ingest([str(tmp_path / "src")], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    assert label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), tta=False),
                      progress=False)["labelled_now"] == 1
    assert [bool(r["stage1_label"]) for r in read_manifest(pool)] == [True, True, True]


def test_every_step_that_writes_the_manifest_holds_the_pool(tmp_path, tiny_checkpoint):
    """An ingest writes the manifest it read when it started: a labelling that finished meanwhile lost every
    label (and two labellings at once mixed resolutions under one settings file). Each step holds the pool."""
    from dap.curation.selection import score_pool, select_pool
    from dap.io import folder_lock

    pool = _pool_of_noise(tmp_path / "pool", 3)
    label_pool(pool, str(tiny_checkpoint), "stage1", LabelOptions(resolution=(32, 64), tta=False), progress=False)
    disc = D.DepthDiscriminator(D.DiscriminatorConfig(height=32, width=64, channels=4)).eval()
    before = (pool / "manifest.parquet").read_bytes()
    with folder_lock(pool, "dap curate ingest"):
        for step in (lambda: label_pool(pool, str(tiny_checkpoint), "stage3", LabelOptions(resolution=(32, 64)),
                                        progress=False),
                     lambda: score_pool(pool, disc, progress=False),
                     lambda: select_pool(pool, {"indoor": 1, "outdoor": 1}, score="tta")):
            with pytest.raises(DapError, match=r"pool is in use by dap curate ingest \(process \d+\); wait for it"):
                step()
    assert (pool / "manifest.parquet").read_bytes() == before and not (pool / "labels" / "stage3").exists()
    assert score_pool(pool, disc, progress=False) == 3  # held no longer



# ------------------------------------------------------------------------------------------ discriminator
def test_discriminator_separates_ground_truth_from_degraded_depth():
    from dap.train import RoomsDataset, resize_sample, to_training_sample

    ds = RoomsDataset(48, 32, 64, seed=3)
    s = [resize_sample(to_training_sample(ds[i]), 32, 64) for i in range(48)]
    rgb = torch.stack([x["rgb"] for x in s])
    depth = torch.stack([x["depth"] for x in s])
    oor = torch.stack([x["out_of_range"] for x in s])
    g = torch.Generator().manual_seed(0)
    # what a weak labeler does: blurred structure (detail lost below 1/8 of the size) and a wrong scale
    blurred = F.interpolate(F.interpolate(depth, size=(4, 8), mode="area"), size=(32, 64), mode="bilinear")
    degraded = blurred * torch.exp(0.2 * torch.randn(len(s), 1, 1, 1, generator=g))
    cfg = D.DiscriminatorConfig(height=32, width=64, channels=8)
    real, fake = D.discriminator_input(rgb, depth, oor, cfg), D.discriminator_input(rgb, degraded, oor, cfg)
    model, metrics = D.train_discriminator(real, fake, cfg, D.DiscriminatorTraining(steps=100, batch_size=8),
                                           progress=False)
    assert metrics["held_out_pairs"] == 12 and metrics["held_out_auc"] > 0.9
    assert model(real[:2]).shape == (2, 1, 4, 8)  # patch logits (stride 8)


def test_auc_is_the_ranking_probability():
    assert D.auc([3, 4], [1, 2]) == 1.0 and D.auc([1], [2]) == 0.0 and D.auc([1, 3], [2, 2]) == 0.5


def test_discriminator_round_trips_and_rejects_a_bad_folder(tmp_path):
    from dap.errors import CheckpointError

    torch.manual_seed(0)
    model = D.DepthDiscriminator(D.DiscriminatorConfig(height=32, width=64, channels=4)).eval()
    D.save_discriminator(model, tmp_path / "disc", {"held_out_auc": 0.9})
    x = torch.rand(2, 5, 32, 64)
    assert torch.equal(D.load_discriminator(tmp_path / "disc").score(x), model.score(x))
    with pytest.raises(CheckpointError, match="not a discriminator folder"):
        D.load_discriminator(tmp_path)
    # a depth model's folder has the same two files (was KeyError: 'config')
    from dap.models import create_model, save_model

    save_model(create_model("dap_tiny"), tmp_path / "model")
    with pytest.raises(CheckpointError, match="model is a depth model .dap's format., not a discriminator; `dap"):
        D.load_discriminator(tmp_path / "model")


# ---------------------------------------------------------------------------------------------- selection
def _scored_rows(n_in: int, n_out: int) -> list[dict]:
    rows = []
    for i in range(n_in + n_out):
        rows.append({**empty_row(), "id": f"{i:016x}", "status": "ok", "stage1_label": f"labels/stage1/{i}.npz",
                     "domain": "indoor" if i < n_in else "outdoor", "disc_score": (i * 37 % 11) / 10,
                     "stage1_tta_absrel": (i * 13 % 7) / 10})
    rows.append({**empty_row(), "id": "f" * 16, "status": "rejected", "domain": "indoor", "disc_score": 9.0})
    return rows


def test_top_k_per_domain_keeps_exactly_k_of_each():
    rows = _scored_rows(10, 20)
    assert select_top_k(rows, {"indoor": 3, "outdoor": 5}) == {"indoor": 3, "outdoor": 5}
    chosen = [r for r in rows if r["selected"]]
    assert sum(r["domain"] == "indoor" for r in chosen) == 3 and sum(r["domain"] == "outdoor" for r in chosen) == 5
    for d in ("indoor", "outdoor"):  # the kept ones are the best of their domain
        kept = [r["disc_score"] for r in rows if r["domain"] == d and r["selected"] and r["status"] == "ok"]
        left = [r["disc_score"] for r in rows if r["domain"] == d and not r["selected"] and r["status"] == "ok"]
        assert min(kept) >= max(left)
    assert select_top_k(rows, {"indoor": 0.5, "outdoor": 0.25}) == {"indoor": 5, "outdoor": 5}
    assert select_top_k(rows, {"indoor": 100}) == {"indoor": 10}  # capped; outdoor not named: none kept
    assert not any(r["selected"] for r in rows if r["domain"] == "outdoor")
    by_tta = select_top_k(rows, {"indoor": 2}, score="tta")
    kept = sorted(r["stage1_tta_absrel"] for r in rows if r["selected"])
    assert by_tta == {"indoor": 2} and kept == sorted(r["stage1_tta_absrel"] for r in rows[:10])[:2]
    assert keep_count(1000, 0.3) == 300 and keep_count(10, 1) == 1
    # disc_tta ranks the rows with both scores: one without a discriminator score had a finite sum of ranks
    rows[0]["disc_score"] = math.nan
    assert select_top_k(rows, {"indoor": 100}, score="disc_tta") == {"indoor": 9}
    assert not rows[0]["selected"]


def test_selecting_a_domain_the_pool_lacks_or_an_absent_score_keeps_the_selection(tmp_path, capsys):
    rows = _scored_rows(4, 4)
    select_top_k(rows, {"indoor": 2})
    write_manifest(tmp_path, rows)
    assert main(["curate", "select", "--pool", str(tmp_path), "--score", "disc", "--keep", "indor=0.5,outdoor=1"]) == 2
    assert "--keep names the domain 'indor'; the domains are indoor, outdoor" in capsys.readouterr().err
    for r in rows:
        r["stage1_tta_absrel"] = math.nan  # labelled with --no-tta
    write_manifest(tmp_path, rows)
    assert main(["curate", "select", "--pool", str(tmp_path), "--score", "tta", "--keep", "indoor=1"]) == 2
    assert "has no test-time-augmentation scores" in capsys.readouterr().err
    assert sum(r["selected"] for r in read_manifest(tmp_path)) == 2  # the earlier selection stands


def test_status_counts_rejections_by_kind():
    from dap.curation.report import pool_summary

    reasons = ["the image is 1000x512 (width x height) but an equirectangular panorama must be exactly 2:1 (e.g. "
               "1024x512). It is within 3% of that", "the image is 900x512 (width x height) but an equirectangular "
               "panorama must be exactly 2:1 (e.g. 1024x512). Crop", "near-duplicate of 0a", "near-duplicate of 0b",
               "camera tilted by about 12.5 degrees (limit 8.0; raise --max-tilt to keep it)",
               # was: "its copy in the pool, images/NecNcNbNdeN.jpg, is missing or empty", one kind per id
               "its copy in the pool, images/3ec4c8b2de1.jpg, is missing or empty (deleted since it was ingested?)",
               "its copy in the pool, images/77aa.jpg, is missing or empty (deleted since it was ingested?)",
               "too small: 300 pixels wide, limit 512", "too small: 280 pixels wide, limit 512"]
    rows = [{**empty_row(), "status": "rejected", "reason": r} for r in reasons]
    assert pool_summary(rows)["rejected"] == {"not a 2:1 panorama": 2, "near-duplicate": 2,
                                              "camera tilted beyond --max-tilt": 1, "its stored image is gone": 2,
                                              "too small": 2}


def test_an_interrupted_ingest_keeps_the_rows_it_made(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, raised the same way) within the first 30 s saved no rows: a rerun redid everything, and
    the images already written sat in the pool unlisted."""
    import importlib

    ingest_module = importlib.import_module("dap.curation.ingest")  # dap.curation.ingest is also the function
    rng = np.random.default_rng(0)
    for i in range(3):
        write_rgb(tmp_path / "src" / f"pano_{i}.png", cv2.resize(rng.random((4, 8, 3), np.float32), (64, 32)))
    calls = []
    real = ingest_module.perceptual_hash

    def interrupted_on_the_third(rgb):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rgb)

    monkeypatch.setattr(ingest_module, "perceptual_hash", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        ingest([str(tmp_path / "src")], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90),
               progress=False)
    rows = read_manifest(tmp_path / "pool")
    assert [Path(r["path"]).name for r in rows] == ["pano_0.png", "pano_1.png"]
    assert all((tmp_path / "pool" / r["image"]).is_file() for r in rows)
    monkeypatch.setattr(ingest_module, "perceptual_hash", real)
    counts = ingest([str(tmp_path / "src")], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90),
                    progress=False)
    assert counts["added"] == 1 and counts["already_in_pool"] == 2


def test_ingesting_a_folder_without_images_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["curate", "ingest", str(tmp_path / "empty"), "--pool", str(tmp_path / "pool")]) == 0
    assert f"note: no images or videos found in {tmp_path / 'empty'}" in capsys.readouterr().err
    # the pool's own copies are never ingested: said so (it read as if the folder were empty)
    write_rgb(tmp_path / "in" / "a.png", _render(43, "indoor", 32)["rgb"])
    pool = tmp_path / "pool"
    assert main(["curate", "ingest", str(tmp_path / "in"), "--pool", str(pool), "--min-width", str(SMALL)]) == 0
    capsys.readouterr()
    assert main(["curate", "ingest", str(pool / "images"), "--pool", str(pool)]) == 0
    assert "(the pool's own images and labels are its copies, never ingested again)" in capsys.readouterr().err


def test_a_linked_folder_inside_a_source_is_ingested_and_a_link_loop_ends(tmp_path):
    """rglob skipped a symbolically linked sub-folder without a word (linked files were followed)."""
    write_rgb(tmp_path / "elsewhere" / "a.png", _render(44, "indoor", 32)["rgb"])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "up").symlink_to(tmp_path / "in")  # a loop back up
    opts = IngestOptions(min_width=SMALL, max_tilt_deg=90)
    assert ingest([str(tmp_path / "in")], tmp_path / "pool", opts, progress=False)["added"] == 1


def test_a_synth_dataset_is_not_taken_for_a_pool(tmp_path, capsys):
    from dap.data.shards import write_dataset

    write_dataset(tmp_path / "synth", 1, resolution=(32, 64), progress=False)
    before = (tmp_path / "synth" / "manifest.parquet").read_bytes()
    write_rgb(tmp_path / "src" / "p.png", np.random.default_rng(0).random((64, 128, 3)))
    assert main(["curate", "ingest", str(tmp_path / "src"), "--pool", str(tmp_path / "synth")]) == 2
    assert "is not a curation pool: its manifest.parquet is a `dap synth` dataset" in capsys.readouterr().err
    assert (tmp_path / "synth" / "manifest.parquet").read_bytes() == before
    # nor the other way round: `dap synth --out <pool>` replaced the pool's manifest, every row of it
    assert main(["curate", "ingest", str(tmp_path / "src"), "--pool", str(tmp_path / "pool")]) == 0
    pool = (tmp_path / "pool" / "manifest.parquet").read_bytes()
    assert main(["synth", "--count", "1", "--resolution", "32x64", "--out", str(tmp_path / "pool")]) == 2
    assert "holds a manifest.parquet, a curation pool's, which `dap synth` would replace" in capsys.readouterr().err
    assert (tmp_path / "pool" / "manifest.parquet").read_bytes() == pool and not list((tmp_path / "pool").glob("sh*"))


# ------------------------------------------------------------------------------------------ pseudo-labels
def test_pseudo_labels_with_a_range_mask_train_the_range_head(tmp_path):
    from dap import train as T

    pool = tmp_path / "pool"
    rows = []
    for i in range(4):
        rid = f"{i:016x}"
        write_rgb(pool / f"images/{rid}.jpg", _render(200 + i, "outdoor", 32)["rgb"])
        depth = np.full((32, 64), 4.0, np.float32)
        prob = np.zeros((32, 64), np.float32)
        prob[:12] = 1.0  # the upper rows are sky
        save_label(pool / f"labels/stage3/{rid}.npz", depth, prob, sky_fraction=0.75, mask_certainty=1.0,
                   tta_absrel=0.0)
        rows.append({**empty_row(), "id": rid, "status": "ok", "image": f"images/{rid}.jpg",
                     "stage3_label": f"labels/stage3/{rid}.npz", "domain": "outdoor"})
    write_manifest(pool, rows)
    sample = PseudoLabelDataset(pool, "stage3")[0]
    assert sample["out_of_range"][:12].all() and not sample["valid"][:12].any() and sample["valid"][12:].all()
    cfg = T.load_config(None, [
        "data.height=32", "data.width=64", "data.batch_size=2", "run.log_every=1", "run.val_every=0",
        "run.ckpt_every=0", "run.progress=false", "run.device=cpu", "optim.lr_head=2e-3", "optim.lr_backbone=2e-4",
        "run.steps=25", "data.augment=false", f"data.sources=[{{kind: pseudo, path: '{pool}', label_stage: stage3}}]"])
    history = T.train(cfg, tmp_path / "run").history
    mask = [h["loss/mask"] for h in history]
    assert np.mean(mask[-5:]) < 0.6 * np.mean(mask[:5])


def test_pseudo_dataset_errors_name_the_next_step(tmp_path):
    from dap.errors import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="has no manifest.parquet: run `dap curate ingest"):
        PseudoLabelDataset(tmp_path)
    # an ingest that found nothing wrote a manifest without rows (label said "holds no curation manifest")
    write_manifest(tmp_path, [])
    with pytest.raises(DatasetLayoutError, match=r"lists no panoramas \(its ingests found none\): run `dap curate "
                                                 "ingest` on a folder of panoramas"):
        PseudoLabelDataset(tmp_path)
    with pytest.raises(DapError, match=r"lists no panoramas \(its ingests found none\)"):
        label_pool(tmp_path, "dap-tiny-synth", "stage1", progress=False)
    write_manifest(tmp_path, [{**empty_row(), "id": "0" * 16, "status": "ok"}])
    with pytest.raises(DatasetLayoutError, match="selected and labelled"):
        PseudoLabelDataset(tmp_path, "stage1", selected_only=True)


# ----------------------------------------------------------------------------------------------- pipeline
def _tiny_curate_config(tmp_path: Path, pool_src: Path) -> Path:
    stage = {"data.height": 32, "data.width": 64, "data.batch_size": 2, "data.val": [], "run.val_every": 0,
             "run.ckpt_every": 1, "run.steps": 2, "run.log_every": 1, "run.device": "cpu", "model.name": "dap_tiny"}
    cfg = {
        "pool": {"inputs": [{"path": str(pool_src), "source": "renders"}], "max_tilt_deg": 90, "min_width": SMALL},
        "labeled": [{"kind": "rooms", "size": 8}],
        "label": {"resolution": [32, 64], "batch_size": 2, "num_workers": 0},
        "discriminator": {"data": [{"kind": "rooms", "size": 8, "seed": 77}], "samples": 8, "height": 32,
                          "width": 64, "channels": 4, "steps": 5, "batch_size": 4},
        "select": {"score": "disc", "keep": {"indoor": 0.5, "outdoor": 0.5}},
        "stage1": {"set": stage}, "stage2": {"set": stage}, "final": {"set": stage},
    }
    path = tmp_path / "curate.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_a_run_resumed_with_its_config_moved_refuses_the_other_data_its_relative_paths_name(tmp_path, capsys):
    """Relative paths were recorded as written: the same config copied elsewhere resumed a run on other data."""
    for folder in ("a/renders", "x/renders"):
        for i in range(2):
            write_rgb(tmp_path / folder / f"p{i}.png", _render(300 + i, "indoor", 32)["rgb"])
    config = json.loads(_tiny_curate_config(tmp_path, tmp_path / "unused").read_text())
    config["pool"]["inputs"][0]["path"] = "../renders"
    for folder in ("a/cfg", "x/cfg"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "curate.yaml").write_text(json.dumps(config))
    work = tmp_path / "work"
    assert main(["curate", "run", "--config", str(tmp_path / "a/cfg/curate.yaml"), "--work", str(work),
                 "--stop-after", "ingest"]) == 0
    out = capsys.readouterr()  # stderr is no terminal here: the step's line, no progress bar (was drawn into logs)
    assert "dap curate: ingest done: {" in out.out and "%|" not in out.err, out.err
    assert main(["curate", "run", "--config", str(tmp_path / "x/cfg/curate.yaml"), "--work", str(work),
                 "--stop-after", "ingest"]) == 2
    err = capsys.readouterr().err
    assert "holds steps done with another curation config (pool.inputs:" in err and "x/cfg/../renders" in err


def test_pipeline_runs_all_stages_and_a_rerun_resumes(tmp_path, capsys):

    src = tmp_path / "renders"
    for i in range(6):
        write_rgb(src / f"p{i}.png", _render(300 + i, "indoor" if i % 2 else "outdoor", 32)["rgb"])
    config, work = _tiny_curate_config(tmp_path, src), tmp_path / "work"
    assert main(["curate", "run", "--config", str(config), "--work", str(work), "--stop-after", "select"]) == 0
    state = json.loads((work / "state.json").read_text())
    assert list(state["done"]) == ["ingest", "stage1", "label1", "disc", "select"]
    assert 0 <= state["done"]["disc"]["held_out_auc"] <= 1
    rows = read_manifest(work / "pool")
    assert all(np.isfinite(r["disc_score"]) for r in rows) and any(r["selected"] for r in rows)
    assert {r["stage"] for r in rows} == {"scored", "selected"}
    from dap.io import folder_lock

    before = (work / "state.json").read_bytes()
    with folder_lock(work, "dap curate run (process 12345)"):  # a second run refused: it held no lock of its own
        capsys.readouterr()
        assert main(["curate", "run", "--config", str(config), "--work", str(work)]) == 2
        assert "work is in use by dap curate run (process 12345)" in capsys.readouterr().err
    assert (work / "state.json").read_bytes() == before
    assert main(["curate", "run", "--config", str(config), "--work", str(work)]) == 0
    resumed = json.loads((work / "state.json").read_text())
    assert list(resumed["done"]) == ["ingest", "stage1", "label1", "disc", "select", "stage2", "label3", "final"]
    assert all(resumed["done"][k] == v for k, v in state["done"].items())  # finished steps were not redone
    assert (work / "runs/final/final/model.safetensors").is_file()
    assert all(r["stage3_label"] and r["stage"] == "labelled3" for r in read_manifest(work / "pool"))
    capsys.readouterr()
    # the steps done hold only for the config they were done with
    rerun = ["curate", "run", "--config", str(config), "--work", str(work)]
    assert main([*rerun, "--set", "label.batch_size=1"]) == 0  # how fast, not what: allowed
    assert main([*rerun, "--set", "label.resolution=[64,128]"]) == 2
    assert "holds steps done with another curation config (label.resolution: [32, 64] -> [64, 128])" in \
        capsys.readouterr().err
    assert main([*rerun, "--set", "final.set={}"]) == 2  # an empty mapping flattens to other keys than a full one
    err = capsys.readouterr().err
    assert "(final.set: not set -> {}; final.set.data" in err and "None" not in err
    with pytest.raises(DapError, match=r"stage1 labels .* were made with other settings \(resolution: \[32, 64\] -> "
                                       r"\[64, 128\]\); label with the earlier ones, or delete"):
        label_pool(work / "pool", work / "runs/stage1/final", "stage1", LabelOptions(resolution=(64, 128)),
                   progress=False)
    assert main(["curate", "status", "--pool", str(work / "pool"), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "accepted 6" in printed and "stage3 6" in printed
    # a tag file that moves a selected row to the other domain unselects it: it was chosen among the other's rows
    chosen = next(r for r in read_manifest(work / "pool") if r["selected"])
    flipped = {"indoor": "outdoor", "outdoor": "indoor"}[chosen["domain"]]
    (tmp_path / "flip.csv").write_text(f"path,domain\n{chosen['path']},{flipped}\n")
    ingest([chosen["path"]], work / "pool", IngestOptions(min_width=SMALL, tags=str(tmp_path / "flip.csv")),
           progress=False)
    (after,) = [r for r in read_manifest(work / "pool") if r["id"] == chosen["id"]]
    assert after["domain"] == flipped and not after["selected"]
    assert "1 selected rows changed domain with these tags" in capsys.readouterr().err
    assert (tmp_path / "plots/hist_disc_score.png").is_file() and (tmp_path / "plots/contact_sheet_disc.png").is_file()
    # a done step's output deleted since: it and the steps after it run again (a rerun said "done" and left the
    # pool pointing at label files that were gone)

    next((work / "pool/labels/stage3").glob("*.npz")).unlink()
    shutil.rmtree(work / "runs/final/final")
    assert main(rerun) == 0
    assert "step label3: the stage3 labels of 1 accepted row(s) missing; running label3, final again" in \
        capsys.readouterr().err
    assert len(list((work / "pool/labels/stage3").glob("*.npz"))) == 6
    assert (work / "runs/final/final/model.safetensors").is_file()
    # panoramas added to the pool: label1 and what is made from it again, the discriminator and stage 1 kept. The
    # training runs were resumed at their last step ("nothing trained"): stage 2 kept the old selection's model and
    # final never saw the new panoramas; and label3 kept the old stage 2's labels of the old rows
    for i in range(6, 8):
        write_rgb(src / f"p{i}.png", _render(300 + i, "indoor", 32)["rgb"])
    capsys.readouterr()
    assert main(rerun) == 0  # not added by a run (ingest is done), but said
    # with the config's pool settings (a bare command stored or rejected them otherwise: 16-pixel renders here)
    assert f"{src} holds 2 file(s) the pool does not (p6.png, ...), which this run leaves out; `dap curate ingest " \
        f"{src} --pool {work / 'pool'} --min-width {SMALL} --max-tilt 90 --source renders` adds them" \
        in capsys.readouterr().err
    ingest([str(src)], work / "pool", IngestOptions(min_width=SMALL), progress=False)
    stage2 = (work / "runs/stage2/final/model.safetensors").read_bytes()
    disc = json.loads((work / "state.json").read_text())["done"]["disc"]
    capsys.readouterr()
    assert main(rerun) == 0
    err = capsys.readouterr().err
    assert "step label1: the stage1 labels of 2 accepted row(s) missing; running label1, select, stage2, label3, " \
        "final again" in err and "nothing trained" not in err
    assert (work / "runs/stage2.replaced").is_dir() and (work / "pool/labels/stage3.replaced").is_dir()
    assert (work / "runs/stage2/final/model.safetensors").read_bytes() != stage2
    done = json.loads((work / "state.json").read_text())["done"]
    assert done["disc"] == disc and done["stage2"]["steps"] == done["final"]["steps"] > 0
    rows = read_manifest(work / "pool")
    assert len(rows) == 8 and all(r["stage3_label"] for r in rows)


def test_a_run_refuses_missing_data_and_an_empty_pool_before_training(tmp_path, capsys):
    """A wrong labeled or discriminator.data path failed only after ingest (and, for the discriminator, after stage 1's
    training and label1); a pool where every panorama was rejected was marked "ingest done" and stage 1 trained
    before label1 failed, and a rerun never ingested again."""
    src = tmp_path / "renders"
    write_rgb(src / "p0.png", _render(300, "indoor", 32)["rgb"])
    config = _tiny_curate_config(tmp_path, src)
    cfg = json.loads(config.read_text())
    for key in ("labeled", "discriminator"):
        bad = json.loads(json.dumps(cfg))
        sources = [{"kind": "shards", "path": "nowhere"}]
        if key == "labeled":
            bad["labeled"] = sources
        else:
            bad["discriminator"]["data"] = sources
        config.write_text(json.dumps(bad))
        assert main(["curate", "run", "--config", str(config), "--work", str(tmp_path / key)]) == 2
        where = "labeled" if key == "labeled" else "discriminator.data"
        assert f"{where}[0] (shards {tmp_path / 'nowhere'}) does not exist" in capsys.readouterr().err
        assert not (tmp_path / key / "pool").exists()
    cfg["pool"]["min_width"] = 64  # the 64-wide render passes; a 32-wide one is too small
    write_rgb(src / "p0.png", _render(300, "indoor", 16)["rgb"])
    config.write_text(json.dumps(cfg))
    work = tmp_path / "work"
    assert main(["curate", "run", "--config", str(config), "--work", str(work)]) == 2
    assert "no panorama of pool.inputs was accepted into the pool" in capsys.readouterr().err
    assert json.loads((work / "state.json").read_text())["done"] == {}
    cfg["pool"]["min_width"] = SMALL
    config.write_text(json.dumps(cfg))
    assert main(["curate", "run", "--config", str(config), "--work", str(work), "--stop-after", "ingest"]) == 0
    assert [r["status"] for r in read_manifest(work / "pool")] == ["ok"]


def test_an_edited_stage_config_or_tag_file_is_a_changed_config(tmp_path, capsys):
    """state.json recorded the paths of the stage training configs and tag files, not what they hold: an edit after
    stage 1 trained stage 2 and final with other settings (and the new tags were ignored), without a word."""
    src = tmp_path / "renders"
    for i in range(2):
        write_rgb(src / f"p{i}.png", _render(300 + i, "indoor", 32)["rgb"])
    config = _tiny_curate_config(tmp_path, src)
    cfg = json.loads(config.read_text())
    (tmp_path / "train.yaml").write_text("loss:\n  mask_threshold: 100.0\n")
    (tmp_path / "tags.csv").write_text(f"path,domain\n{src / 'p0.png'},indoor\n")
    cfg["stage1"]["config"] = cfg["stage2"]["config"] = "train.yaml"
    cfg["pool"]["inputs"][0]["tags"] = "tags.csv"
    config.write_text(json.dumps(cfg))
    run = ["curate", "run", "--config", str(config), "--work", str(tmp_path / "w")]
    assert main([*run, "--stop-after", "stage1"]) == 0
    (tmp_path / "train.yaml").write_text("loss:\n  mask_threshold: 10.0\n")
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "holds steps done with another curation config (stage1.config_sha256:" in err
    (tmp_path / "train.yaml").write_text("loss:\n  mask_threshold: 100.0\n")
    (tmp_path / "tags.csv").write_text(f"path,domain\n{src / 'p0.png'},outdoor\n")
    assert main(run) == 2
    assert "(pool.tags_sha256: " in capsys.readouterr().err


def test_a_lost_pool_image_has_a_way_back_that_brings_its_row_back(tmp_path, capsys):
    """A selected row's stored image deleted: stage 2 failed with "check the path ... re-download it"; and after the
    way back (label rejects the row, ingest restores it) the row kept its label file but not its manifest entry, so
    it was never merged, scored or selected again."""
    src = tmp_path / "renders"
    for i in range(4):
        write_rgb(src / f"p{i}.png", _render(310 + i, "indoor" if i % 2 else "outdoor", 32)["rgb"])
    config, work = _tiny_curate_config(tmp_path, src), tmp_path / "work"
    run = ["curate", "run", "--config", str(config), "--work", str(work)]
    assert main([*run, "--stop-after", "select"]) == 0
    lost = next(r for r in read_manifest(work / "pool") if r["selected"])
    (work / "pool" / lost["image"]).unlink()
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err
    # said before the first training step (it was said when its sample was drawn)
    assert f"1 stored image(s) of {work / 'pool'} that the manifest names are gone (e.g. {lost['image']}, of " \
           f"{lost['path']}): `dap curate label --pool" in err and "re-download" not in err
    assert main(["curate", "label", "--pool", str(work / "pool"), "--model", str(work / "runs/stage1/final"),
                 "--resolution", "32x64", "--no-progress"]) == 0
    ingest([lost["path"]], work / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    capsys.readouterr()
    assert main(run) == 0
    assert "step label1: the stage1 labels of 1 accepted row(s) missing; running label1, select, stage2" in \
        capsys.readouterr().err
    (back,) = [r for r in read_manifest(work / "pool") if r["id"] == lost["id"]]
    assert back["status"] == "ok" and back["stage1_label"] and math.isfinite(back["disc_score"])
    assert back["selected"] == lost["selected"]  # the same rows, scores and rule: the same selection


def test_pool_settings_of_a_curation_config_are_checked_by_their_names(tmp_path):
    """A bad pool.max_width passed the config check and failed at the ingest step, as "--max-width must be ...": an
    option dap curate run does not have."""
    from dap.curation.pipeline import load_curate_config

    config = _tiny_curate_config(tmp_path, tmp_path / "renders")
    for setting, problem in (("pool.max_width=1001", "pool.max_width must be an even number of pixels"),
                             ("pool.max_tilt_deg=-1", "pool.max_tilt_deg must be >= 0 degrees")):
        with pytest.raises(DapError, match=f"curation config .*: {problem}"):
            load_curate_config(config, [setting])


def test_dap_train_words_reach_dap_curate_run_in_its_own(tmp_path, monkeypatch, capsys):
    """A diverged stage said "resume with the new settings (--resume --set ...)", and a --set of a missing list item
    named data.sources.0.ratio: dap train's options, which dap curate run does not have."""
    from dap.curation.pipeline import load_curate_config
    from dap.errors import DivergedError

    config = _tiny_curate_config(tmp_path, tmp_path / "renders")
    with pytest.raises(DapError, match=r"--set labeled.5.ratio: no such config entry .*e.g. labeled.0.ratio\)"):
        load_curate_config(config, ["labeled.5.ratio=2"])

    def diverges(*args, **kwargs):
        raise DivergedError("loss is nan at step 3 (terms: {}). Lower the learning rates (optim.lr_head, "
                            "optim.lr_backbone) or set optim.grad_clip, or check the data, then resume with the new "
                            "settings (--resume --set ...): resuming with these would repeat the same steps exactly",
                            "loss is nan at step 3 (terms: {})")

    monkeypatch.setattr("dap.train.train", diverges)
    write_rgb(tmp_path / "renders" / "p0.png", _render(300, "indoor", 32)["rgb"])
    assert main(["curate", "run", "--config", str(config), "--work", str(tmp_path / "work")]) != 0
    err = capsys.readouterr().err
    assert "stage1: loss is nan at step 3 (terms: {}). Lower its learning rates (--set stage1.set.optim.lr_head=" in err
    assert "--resume" not in err


def test_a_keep_in_the_config_replaces_the_default_whole(tmp_path):
    """`keep: {indoor: 0.5}` was merged into the default: outdoor still kept the paper's 0.207 (and those rows
    trained stage 2), while the same mapping through --set or `dap curate select --keep` kept no outdoor row."""
    from dap.curation.pipeline import load_curate_config

    config = _tiny_curate_config(tmp_path, tmp_path / "renders")
    cfg = json.loads(config.read_text())
    cfg["select"]["keep"] = {"indoor": 0.5}
    config.write_text(json.dumps(cfg))
    assert load_curate_config(config).select.keep == {"indoor": 0.5}
    assert load_curate_config(config, ["select.keep={indoor: 0.5}"]).select.keep == {"indoor": 0.5}


def test_curate_config_and_argument_errors_exit_2(tmp_path, capsys):

    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: {inputs: []}\nlabeled: [{kind: rooms}]\n")
    assert main(["curate", "run", "--config", str(bad), "--work", str(tmp_path / "w")]) == 2
    assert "pool.inputs is empty" in capsys.readouterr().err
    bad.write_text("pool: {inputs: [{path: x}]}\nlabeled: [{kind: rooms}]\ndiscriminator: {data: [{kind: rooms}]}\n"
                   "selekt: {}\n")
    assert main(["curate", "run", "--config", str(bad), "--work", str(tmp_path / "w")]) == 2
    assert "unknown keys ['selekt']" in capsys.readouterr().err
    # what later steps use is checked before the first one runs
    bad.write_text("pool: {inputs: [{path: x}]}\nlabeled: [{kind: rooms}]\ndiscriminator: {data: [{kind: rooms}]}\n")
    for setting, problem in [("select.score=disk", "select.score must be one of disc, tta, disc_tta, got 'disk'"),
                             ("label.resolution=[100,100]", "label.resolution must be [height, width] of a 2:1"),
                             ("stage2.config=nonexist.yaml", "stage2: cannot read the training config"),
                             ("final.set={optim.lr_head: -1}", "final: --set optim.lr_head=-1: optim.lr_head must be"),
                             ("select.keep={indoor: -1}", "select.keep.indoor must be a fraction below 1 or a whole"),
                             ("select.keep={indoor: 1.5}", "select.keep.indoor must be a fraction below 1 or a whole"),
                             ("select.keep={kitchen: 1}", "select.keep names the domain 'kitchen'; the domains are"),
                             ("stage2.pseudo_ratio=-1", "stage2.pseudo_ratio must be a number >= 0, got -1"),
                             ("final.set={model.init: stage3}", "final: model.init /"),
                             ("stage1.set={model.init: stage1}", "model.init stage1 is not made before stage1"),
                             # each failed only where used, the discriminator's after all of stage-1 training
                             ("label.batch_size=0", "label.batch_size must be a whole number >= 1, got 0"),
                             ("label.num_workers=-1", "label.num_workers must be a whole number >= 0"),
                             ("label.outdoor_sky_fraction=2", "label.outdoor_sky_fraction must be a fraction from 0"),
                             ("discriminator.steps=0", "discriminator.steps must be a whole number >= 1, got 0"),
                             ("discriminator.held_out=1.0", "discriminator.held_out must be a fraction from 0 to"),
                             ("discriminator.lr=-1", "discriminator.lr must be a learning rate > 0, got -1"),
                             ("discriminator.channels=0", "discriminator.channels must be a whole number >= 1"),
                             ("discriminator.batch_size=0", "discriminator.batch_size must be a whole number >= 1")]:
        assert main(["curate", "run", "--config", str(bad), "--work", str(tmp_path / "w"), "--set", setting]) == 2
        assert problem in capsys.readouterr().err, setting
    assert not (tmp_path / "w").exists()
    assert main(["curate", "label", "--pool", str(tmp_path), "--model", str(tmp_path / "missing")]) == 2
    assert "is not a curation pool" in capsys.readouterr().err
    write_manifest(tmp_path, [{**empty_row(), "id": "0" * 16, "status": "ok"}])
    assert main(["curate", "label", "--pool", str(tmp_path), "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "dap-tiny-synth" in err  # and it names the models it knows
    (tmp_path / "file").write_text("")
    assert main(["curate", "ingest", str(tmp_path), "--pool", str(tmp_path / "file")]) == 2
    assert "it is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["curate", "select", "--pool", str(tmp_path), "--keep", "indoor=lots"])
    assert e.value.code == 2 and "DOMAIN=K" in capsys.readouterr().err


def test_ingest_records_a_video_cut_short_after_its_good_frames(tmp_path):
    rng = np.random.default_rng(0)
    frames = [cv2.resize(rng.random((4, 8, 3), np.float32), (128, 64)) for _ in range(12)]
    (tmp_path / "src").mkdir()
    _write_video(tmp_path / "src" / "walk.avi", frames, fps=4)
    data = (tmp_path / "src" / "walk.avi").read_bytes()
    (tmp_path / "src" / "walk.avi").write_bytes(data[: int(len(data) * 0.7)])  # a copy interrupted mid-way
    pool = tmp_path / "pool"
    ingest([str(tmp_path / "src")], pool, IngestOptions(min_width=SMALL, every_s=1.0, max_tilt_deg=90), progress=False)
    rows = read_manifest(pool)
    good = [r for r in rows if r["kind"] == "video_frame"]
    bad = [r for r in rows if r["kind"] != "video_frame"]
    assert [r["frame_time"] for r in good] == [0.0, 1.0] and {r["status"] for r in good} == {"ok"}
    assert len(bad) == 1 and bad[0]["status"] == "rejected" and "of 12 cannot be decoded" in bad[0]["reason"]
    again = ingest([str(tmp_path / "src")], pool, IngestOptions(min_width=SMALL, every_s=1.0, max_tilt_deg=90),
                   progress=False)
    assert again["already_in_pool"] == 3 and again["rejected"] == 0 and len(read_manifest(pool)) == 3


def test_a_file_name_that_is_not_utf8_is_ingested_with_its_name_escaped(tmp_path):
    src = tmp_path / "in"
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, as old cameras and Windows tools write them
    try:
        write_rgb(src / name, _render(4, "indoor")["rgb"])
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    counts = ingest([str(src)], tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)
    assert counts["added"] == 1
    (row,) = read_manifest(tmp_path / "pool")
    assert row["path"].endswith("caf\\xe9.png") and (tmp_path / "pool" / row["image"]).is_file()


def test_label_resolution_must_be_a_panorama_size(tmp_path, capsys):

    with pytest.raises(SystemExit) as e:
        main(["curate", "label", "--pool", str(tmp_path), "--model", "x", "--resolution", "64x64"])
    assert e.value.code == 2
    assert "argument --resolution: size '64x64' is not 2:1 (HEIGHTxWIDTH); use e.g. 64x128" in capsys.readouterr().err


def test_new_stage1_labels_clear_the_scores_and_selection_made_on_the_old(tmp_path, capsys):
    from dap.curation.label import label_path, merge_labels

    pool = tmp_path / "pool"
    rows = [{**empty_row(), "id": f"{i:016x}", "status": "ok", "path": f"{i}.jpg", "image": f"images/{i}.jpg"}
            for i in range(2)]
    for r in rows:
        write_rgb(pool / r["image"], np.zeros((4, 8, 3)))
    write_manifest(pool, rows)
    depth, prob = np.ones((4, 8)), np.zeros((4, 8))

    def label(row_id, certainty, tta=0.1, sky=0.0):
        save_label(pool / label_path("stage1", row_id), depth, prob, sky_fraction=sky, mask_certainty=certainty,
                   tta_absrel=tta)

    for r in rows:
        label(r["id"], 0.9)
    merge_labels(pool, "stage1", 0.2)
    scored = read_manifest(pool)
    for r in scored:
        r.update(disc_score=0.7, selected=True)
    write_manifest(pool, scored)
    merge_labels(pool, "stage1", 0.2)  # the same labels merged again: nothing changes
    assert all(r["selected"] and r["disc_score"] == 0.7 for r in read_manifest(pool))
    label(rows[0]["id"], 0.5)  # relabelled by another model
    merge_labels(pool, "stage1", 0.2)
    after = read_manifest(pool)
    assert math.isnan(after[0]["disc_score"]) and not after[0]["selected"]
    assert after[1]["disc_score"] == 0.7 and after[1]["selected"]
    assert "1 rows of" in capsys.readouterr().err
    # labelled with --no-tta (no TTA signal): a new label was taken for the old one, scores and selection kept
    for r in rows:
        label(r["id"], 0.9, tta=math.nan)
    merge_labels(pool, "stage1", 0.2)
    rescored = read_manifest(pool)
    for r in rescored:
        r.update(disc_score=0.7, selected=True)
    write_manifest(pool, rescored)
    label(rows[0]["id"], 0.4, tta=math.nan)
    merge_labels(pool, "stage1", 0.2)
    after = read_manifest(pool)
    assert math.isnan(after[0]["disc_score"]) and not after[0]["selected"] and after[1]["selected"]
    # a row the labeler's rule moves to the other domain (another sky threshold) was kept under the old one's share
    capsys.readouterr()
    merge_labels(pool, "stage1", -1.0)  # every row outdoor now (sky fraction 0 >= -1)
    after = read_manifest(pool)
    assert [r["domain"] for r in after] == ["outdoor", "outdoor"] and not any(r["selected"] for r in after)
    assert "1 selected rows of" in capsys.readouterr().err  # row 1 (row 0's selection was cleared above)


def test_a_manifest_rewritten_by_other_tools_reads_back_or_says_what_is_wrong(tmp_path):
    """A pandas round trip (the documented way to look at the table) writes NaN as null: every command then ended
    in `TypeError: must be real number, not NoneType`. A duplicated row was selected and trained on twice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _scored_rows(2, 1)
    rows[0]["disc_score"] = math.nan
    write_manifest(tmp_path, rows)
    path = tmp_path / "manifest.parquet"
    table = pq.read_table(path)
    nulls = table.set_column(table.column_names.index("disc_score"), "disc_score",
                             pa.array([None, *table["disc_score"].to_pylist()[1:]], pa.float64()))
    pq.write_table(nulls.cast(pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f
                                         for f in nulls.schema])), path)  # pandas' large strings too
    back = read_manifest(tmp_path)
    assert math.isnan(back[0]["disc_score"]) and back[1]["disc_score"] == rows[1]["disc_score"]
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    pq.write_table(pa.concat_tables([table, table.slice(1, 1)]), path)
    with pytest.raises(DapError, match=f"lists the id {rows[1]['id']} twice \\(rows 1 and {len(rows)}\\)"):
        read_manifest(tmp_path)
    pq.write_table(table.set_column(table.column_names.index("selected"), "selected",
                                    pa.array(["yes"] * len(rows))), path)
    with pytest.raises(DapError, match="has a selected column of type string, not bool"):
        read_manifest(tmp_path)


def test_status_plots_count_untagged_rows(tmp_path, capsys):
    import dap

    sample = Path(dap.__file__).parent / "assets" / "sample_indoor.jpg"  # a room with vertical edges: a tilt
    ingest([str(sample)], tmp_path / "pool", IngestOptions(), progress=False)  # no tags: domain unknown
    assert main(["curate", "status", "--pool", str(tmp_path / "pool"), "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "hist_tilt_deg.png").is_file()  # was not written: untagged rows matched no group
    (tmp_path / "afile").write_text("x")  # was "error: file exists, afile; check ... the disk is healthy", exit 1
    assert main(["curate", "status", "--pool", str(tmp_path / "pool"), "--plots", str(tmp_path / "afile")]) == 2
    assert "it is a file; choose a folder for --plots" in capsys.readouterr().err


def test_an_interrupted_training_step_resumes_from_another_folder(tmp_path, monkeypatch, capsys):
    src = tmp_path / "renders"
    for i in range(4):
        write_rgb(src / f"p{i}.png", _render(500 + i, "indoor" if i % 2 else "outdoor", 32)["rgb"])
    config = _tiny_curate_config(tmp_path, src)
    cfg = json.loads(config.read_text())
    cfg["stage2"]["set"]["model.init"] = "stage1"  # a path in the work folder, recorded in the step's checkpoints
    config.write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["curate", "run", "--config", str(config), "--work", "work", "--stop-after", "stage2"]) == 0
    shutil.rmtree(tmp_path / "work/runs/stage2/final")  # as if stopped after its last checkpoint
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    # the same work folder, named from elsewhere: the step's checkpoint was refused (its paths were relative)
    assert main(["curate", "run", "--config", str(config), "--work", str(tmp_path / "work"),
                 "--stop-after", "stage2"]) == 0, capsys.readouterr().err
    assert (tmp_path / "work/runs/stage2/final/model.safetensors").is_file()


def test_select_says_which_domains_keep_none(tmp_path, capsys):
    rows = [{**empty_row(), "id": f"{i:016x}", "status": "ok", "domain": d, "disc_score": 0.1 * i, "stage1_label": "x",
             "image": "x"} for i, d in enumerate(["indoor", "indoor", "outdoor"])]
    write_manifest(tmp_path, rows)
    (tmp_path / "x").write_bytes(b"x")  # the label file and image they name (an empty image is a lost one)
    assert main(["curate", "select", "--pool", str(tmp_path), "--keep", "indoor=1"]) == 0
    assert "kept indoor 1" in (out := capsys.readouterr().out) and "outdoor none (not in --keep)" in out
    with pytest.raises(SystemExit):
        main(["curate", "select", "--pool", str(tmp_path), "--keep", "indoor=1,indoor=2"])
    assert "indoor is given twice in 'indoor=1,indoor=2'" in capsys.readouterr().err


def _labelled_pool(pool: Path, n: int) -> Path:
    """A pool of n accepted rows of 16x32 noise with their stage-1 labels merged."""
    from dap.curation.label import label_path, merge_labels

    rows = [{**empty_row(), "id": f"{i:016x}", "status": "ok", "path": f"{i}.jpg", "image": f"images/{i}.jpg"}
            for i in range(n)]
    for r in rows:
        write_rgb(pool / r["image"], np.random.default_rng(0).uniform(0, 1, (16, 32, 3)))
        save_label(pool / label_path("stage1", r["id"]), np.ones((16, 32)), np.zeros((16, 32)), sky_fraction=0.0,
                   mask_certainty=0.9, tta_absrel=0.1)
    write_manifest(pool, rows)
    merge_labels(pool, "stage1", 0.2)
    return pool


def test_a_label_file_deleted_after_labelling_is_reported_and_refused_until_labelled_again(tmp_path, capsys):
    """The manifest kept naming a deleted label file: status counted it as labelled, select selected it and
    training failed on it hours in. Now status counts it as gone, score/select/training refuse with the command
    that makes it again, and a merge after labelling (where it was not made again) clears it."""
    from dap.curation.label import merge_labels
    from dap.curation.report import format_summary, status
    from dap.curation.selection import select_pool
    from dap.errors import DatasetLayoutError

    pool = _labelled_pool(tmp_path / "pool", 3)
    rows = read_manifest(pool)
    for i, r in enumerate(rows):
        r.update(disc_score=0.5 + 0.1 * i, selected=True)
    write_manifest(pool, rows)
    (pool / rows[1]["stage1_label"]).unlink()

    summary, _ = status(pool)
    assert summary["label_files_gone"] == {"stage1": 1, "stage3": 0}
    assert "label files gone (deleted since labelling; `dap curate label` makes them again): stage1 1" in \
        format_summary(summary)
    status(pool, tmp_path / "plots")  # the contact sheet leaves it out (it read it: FileNotFoundError)
    assert (tmp_path / "plots" / "contact_sheet_disc.png").is_file()
    # scores cleared since: the earlier run's score plots stood beside this run's as if they were its own
    write_manifest(pool, [{**r, "disc_score": math.nan, "selected": False} for r in rows])
    _, written = status(pool, tmp_path / "plots")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)
    assert "hist_disc_score.png" not in {p.name for p in written}
    write_manifest(pool, rows)
    with pytest.raises(DatasetLayoutError, match=r"1 stage1 label file\(s\) that the manifest of .* names are gone "
                                                 rf"\(e\.g\. labels/stage1/{rows[1]['id']}\.npz\): run `dap curate "
                                                 "label --pool .* --model <the model that made the others>`"):
        select_pool(pool, {"indoor": 2})
    # the settings the others were made with, which the new ones must match (a bare command was refused)
    (pool / "labels" / "stage1" / "settings.json").write_text('{"model": "x", "resolution": [64, 128], "tta": false}')
    with pytest.raises(DatasetLayoutError, match=r"--model <the model that made the others> --resolution 64x128 "
                                                 "--no-tta` to make them again, then score and select"):
        select_pool(pool, {"indoor": 2})
    with pytest.raises(DatasetLayoutError, match="are gone .* then train"):
        PseudoLabelDataset(pool, "stage1", selected_only=True)
    from dap.curation.selection import score_pool

    disc = D.DepthDiscriminator(D.DiscriminatorConfig(height=16, width=32, channels=4)).eval()
    with pytest.raises(DatasetLayoutError, match="are gone .* then score$"):
        score_pool(pool, disc, progress=False)
    assert [r["selected"] for r in read_manifest(pool)] == [True, True, True]  # nothing changed by refusals

    merge_labels(pool, "stage1", 0.2)  # after a labelling that could not make it again
    after = read_manifest(pool)
    assert after[1]["stage1_label"] == "" and math.isnan(after[1]["stage1_tta_absrel"])
    assert math.isnan(after[1]["disc_score"]) and not after[1]["selected"]
    assert [r["selected"] for r in after] == [True, False, True]
    assert select_pool(pool, {"indoor": 1}) == {"indoor": 1}
    assert len(PseudoLabelDataset(pool, "stage1", selected_only=True)) == 1


def test_status_says_when_there_is_nothing_to_plot(tmp_path, capsys):
    write_manifest(tmp_path, [{**empty_row(), "id": "00", "status": "rejected", "reason": "too small"}])
    assert main(["curate", "status", "--pool", str(tmp_path), "--plots", str(tmp_path / "plots")]) == 0
    assert "nothing to plot in" in capsys.readouterr().err  # was: no output, no file, exit 0


def test_a_set_override_of_one_training_key_keeps_the_stages_other_keys():
    """`dap curate run --set stage1.set.run.steps=2` nested {"run": {"steps": 2}} in the stage's overrides, which
    replaced its whole run section: ckpt_every 20 -> 500, val_every 0 -> 500, silently."""
    from dap.curation.pipeline import load_curate_config, stage_train_config

    config = Path(__file__).resolve().parents[1] / "configs" / "curate_tiny.yaml"
    cfg = load_curate_config(config, ["stage1.set.run.steps=2"])
    tc = stage_train_config(cfg, cfg.stage1, None)
    assert (tc.run.steps, tc.run.ckpt_every, tc.run.val_every, tc.run.log_every) == (2, 20, 0, 10)
    assert tc.data.height == 128 and tc.optim.lr_head == 1.0e-4


def test_an_unreadable_pseudo_label_says_how_to_make_it_again(tmp_path):
    """An emptied label file was an EOFError traceback (a text file: numpy's pickle advice) in label's merge, score,
    status and training."""
    from dap.errors import UnreadableFileError

    for content in (b"", b"not a label"):
        (tmp_path / "x.npz").write_bytes(content)
        with pytest.raises(UnreadableFileError, match=r"the pseudo-label .*x.npz cannot be read .*delete it and run "
                                                      "`dap curate label` again"):
            load_label(tmp_path / "x.npz")
    # readable, but not what label writes: a KeyError traceback, an IndexError, or a panorama stretched to its shape
    for arrays, holds in (({"depth": np.ones((8, 16))}, r"depth \(8, 16\)\);"),
                          ({"depth": np.ones((8, 16)), "prob": np.ones((4, 8))}, r"depth \(8, 16\), prob \(4, 8\)"),
                          ({"depth": np.ones((8, 8)), "prob": np.ones((8, 8))}, r"depth \(8, 8\)")):
        np.savez(tmp_path / "x.npz", **arrays)
        with pytest.raises(UnreadableFileError, match=f"is not one dap curate label writes .*it holds {holds}"):
            load_label(tmp_path / "x.npz")


def test_training_on_a_pool_whose_image_is_gone_is_refused_before_the_first_step(tmp_path):
    """A pool image deleted since labelling was found when its sample was drawn, at a random step."""
    pool = _labelled_pool(tmp_path / "pool", 3)
    (pool / read_manifest(pool)[1]["image"]).unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 stored image\(s\) of .* are gone"):
        PseudoLabelDataset(pool, "stage1")


def test_select_says_which_labelled_rows_it_could_not_rank(tmp_path, capsys):
    """Rows labelled after `dap curate score` have no discriminator score: --keep indoor=0.5 took half of the scored
    rows only (4 of 8 kept where 12 were labelled), without a word."""
    from dap.curation.selection import select_pool

    pool = _labelled_pool(tmp_path / "pool", 4)
    rows = read_manifest(pool)
    for r in rows[:3]:
        r["disc_score"] = 0.5
    write_manifest(pool, rows)
    domain = rows[0]["domain"]
    assert select_pool(pool, {domain: 2}) == {domain: 2}
    assert (f"dap curate select: note: labelled rows without a disc score were not ranked ({domain} 1); run `dap "
            "curate score`") in capsys.readouterr().err
    for r in rows:
        r["disc_score"] = 0.5
    write_manifest(pool, rows)
    select_pool(pool, {domain: 2})
    assert "note" not in capsys.readouterr().err
    # scored again (another discriminator): the selection by the earlier scores stays, said (was silent)
    from dap.curation.selection import score_pool

    disc = D.DepthDiscriminator(D.DiscriminatorConfig(height=16, width=32, channels=4)).eval()
    score_pool(pool, disc, progress=False)
    assert ("dap curate score: note: 2 selected row(s) were selected by the earlier scores, which changed; run `dap "
            "curate select` again") in capsys.readouterr().err


def test_a_users_tag_stays_with_a_file_ingested_again(tmp_path):
    """A tagged file edited since, or its lost pool image brought back by ingesting it again, got a row without its
    tag: the labeler's guess then overrode the user's domain (an outdoor bridge became indoor)."""
    src = tmp_path / "in"
    a = _render(40, "indoor", 32)["rgb"]
    write_rgb(src / "a.png", a)
    tags = tmp_path / "tags.csv"
    tags.write_text("file,domain\na.png,outdoor\n")
    pool = tmp_path / "pool"
    ingest([str(src)], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90, tags=str(tags)), progress=False)
    write_rgb(src / "a.png", np.clip(a * 1.1, 0, 1))  # edited; ingested again without the tag file
    assert ingest([str(src)], pool, IngestOptions(min_width=SMALL, max_tilt_deg=90), progress=False)["replaced"] == 1
    ok = [r for r in read_manifest(pool) if r["status"] == "ok"]
    assert [(r["domain"], r["domain_from"]) for r in ok] == [("outdoor", "user")]


def test_disc_tta_ties_go_to_the_smaller_id():
    """Tied rank sums were broken by the rows' order in the manifest (stable argsort ranks), not by id."""
    rows = [{**empty_row(), "id": f"{i:016x}", "status": "ok", "stage1_label": f"labels/stage1/{i}.npz",
             "domain": "indoor", "disc_score": 0.5, "stage1_tta_absrel": 0.05} for i in (9, 3, 7, 1, 5)]
    select_top_k(rows, {"indoor": 2}, score="disc_tta")
    assert sorted(r["id"] for r in rows if r["selected"]) == [f"{1:016x}", f"{3:016x}"]


def test_select_refuses_rows_whose_stored_image_is_gone(tmp_path, capsys):
    """A selected row whose pool image was deleted stayed selected: training on the selection failed on it, hours
    in (select already refused lost label files for that reason)."""
    pool = _labelled_pool(tmp_path / "pool", 4)
    rows = read_manifest(pool)
    for i, r in enumerate(rows):
        r.update(disc_score=0.5, domain=("indoor", "outdoor")[i % 2])
    write_manifest(pool, rows)
    (pool / rows[0]["image"]).unlink()
    assert main(["curate", "select", "--pool", str(pool), "--score", "disc", "--keep", "indoor=1,outdoor=1"]) == 2
    err = capsys.readouterr().err
    assert "1 stored image(s) of" in err and rows[0]["image"] in err and "dap curate ingest" in err
    # emptied is lost too, as `dap curate label` counts it (select let it through)
    (pool / rows[0]["image"]).write_bytes(b"")
    assert main(["curate", "select", "--pool", str(pool), "--score", "disc", "--keep", "indoor=1,outdoor=1"]) == 2
    assert "1 stored image(s) of" in capsys.readouterr().err


def test_a_file_fixed_since_leaves_no_row_of_its_broken_version(tmp_path):
    """A file that could not be decoded (a download cut short) kept its rejected row after it was fixed and
    accepted: two rows, "rejected 1 (cannot decode 1)", for one good file."""
    src = tmp_path / "in"
    src.mkdir()
    write_rgb(tmp_path / "good.png", _render(41, "indoor", 32)["rgb"])
    (src / "a.png").write_bytes((tmp_path / "good.png").read_bytes()[:200])
    pool = tmp_path / "pool"
    opts = IngestOptions(min_width=SMALL, max_tilt_deg=90)
    assert ingest([str(src)], pool, opts, progress=False)["rejected"] == 1
    shutil.copy(tmp_path / "good.png", src / "a.png")
    assert ingest([str(src)], pool, opts, progress=False)["added"] == 1
    assert [r["status"] for r in read_manifest(pool)] == ["ok"]


def test_an_edited_file_whose_name_is_not_utf8_replaces_its_row(tmp_path):
    """Its stored path is escaped (caf\\xe9.png) and was looked up by the raw name: the edit was taken for a
    near-duplicate of its own old version and the pool kept the stale content."""
    src = tmp_path / "in"
    name = os.fsdecode(b"caf\xe9.png")
    a = _render(42, "indoor", 32)["rgb"]
    try:
        write_rgb(src / name, a)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    pool, opts = tmp_path / "pool", IngestOptions(min_width=SMALL, max_tilt_deg=90)
    ingest([str(src)], pool, opts, progress=False)
    write_rgb(src / name, np.clip(a * 1.1, 0, 1))
    assert ingest([str(src)], pool, opts, progress=False)["replaced"] == 1
    assert ingest([str(src)], pool, opts, progress=False) == {"added": 0, "duplicate": 0, "rejected": 0,
                                                              "already_in_pool": 1, "replaced": 0}


def test_an_odd_width_partial_panorama_says_why_pad_to_erp_cannot_pad_it(tmp_path):
    """It was rejected with "... or use --pad-to-erp" while --pad-to-erp was given."""
    write_rgb(tmp_path / "in" / "p.png", np.random.default_rng(0).uniform(0, 1, (40, 121, 3)))
    opts = IngestOptions(min_width=SMALL, max_tilt_deg=90, pad_to_erp=True)
    ingest([str(tmp_path / "in")], tmp_path / "pool", opts, progress=False)
    (row,) = read_manifest(tmp_path / "pool")
    assert "width must be even" in row["reason"] and "pad-to-erp" not in row["reason"]


def test_a_half_trained_stage_with_another_model_says_what_to_do_in_curate_words(tmp_path, monkeypatch, capsys):
    """A stage stopped mid-training, run again with another model in its set: dap train's refusal told the user to
    resume with <out>/config.yaml or start a new --out, neither of which `dap curate run` has."""
    src = tmp_path / "renders"
    for i in range(4):
        write_rgb(src / f"p{i}.png", _render(510 + i, "indoor" if i % 2 else "outdoor", 32)["rgb"])
    config = _tiny_curate_config(tmp_path, src)
    monkeypatch.chdir(tmp_path)
    assert main(["curate", "run", "--config", str(config), "--work", "work", "--stop-after", "stage1"]) == 0
    state = json.loads((tmp_path / "work/state.json").read_text())  # as a kill during stage 1 leaves it
    del state["done"]["stage1"]
    (tmp_path / "work/state.json").write_text(json.dumps(state))
    shutil.rmtree(tmp_path / "work/runs/stage1/final")
    capsys.readouterr()
    code = main(["curate", "run", "--config", str(config), "--work", "work", "--stop-after", "stage1",
                 "--set", "stage1.set.model.overrides={features: 32}"])
    err = capsys.readouterr().err
    assert code == 2 and "stage1 was begun with another model" in err and "--work" in err
    assert "--out" not in err and "config.yaml" not in err
