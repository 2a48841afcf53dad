"""Round trips and failure modes of every format in dap.io."""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import OpenEXR
import pytest
import torch
import trimesh
from PIL import Image

from dap import geometry, io
from dap.errors import (
    DapError,
    DepthUnitError,
    InputWarning,
    NotPanoramaError,
    NoValidDepthError,
    UnreadableFileError,
)
from dap.inference import to_rgb

H, W = 32, 64


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _depth(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.3, 20.0, (H, W)).astype(np.float32)


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# ----------------------------------------------------------------------------------------------- atomic_write


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    with io.atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("one")
    with io.atomic_write(target) as tmp:
        tmp.write_text("two")
    assert target.read_text() == "two"
    assert _leftovers(target.parent) == []


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "new.npy"
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_write(target) as tmp:
            np.save(tmp, np.zeros(3))
            assert tmp.exists()
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "old.txt"
    target.write_text("precious")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_write(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "precious"
    assert _leftovers(tmp_path) == []


def test_atomic_write_body_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with io.atomic_write(tmp_path / "x.bin"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_folder_lock_dies_with_its_process_not_with_its_forked_children(tmp_path):
    """A DataLoader worker (forked) shared the lock of `dap train`: killed, the run's folder stayed "in use by dap
    train (process N)", a dead process, until the orphaned worker noticed."""
    import signal
    import subprocess
    import sys

    code = ("import os, sys, time\nfrom dap.io import folder_lock\nwith folder_lock(sys.argv[1], 'holder'):\n"
            "    child = os.fork()\n    if child == 0:\n"
            "        os.closerange(1, 3)  # the pipe: run() waits for its end\n"
            "        time.sleep(60)\n        os._exit(0)\n"
            "    print(child, flush=True)\n    os._exit(0)  # dies holding it, as a killed run; its child lives on\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    child = int(out.stdout)
    try:
        with io.folder_lock(tmp_path, "the next run"):  # was: "in use by holder (process N)"
            pass
    finally:
        os.kill(child, signal.SIGKILL)
    with io.folder_lock(tmp_path, "holder"):  # in one process, a second holder is still refused
        with pytest.raises(DapError, match="is in use by holder"):
            with io.folder_lock(tmp_path, "another"):
                pass


def test_folder_lock_files_go_with_their_holder_and_still_exclude(tmp_path):
    """A lock file stayed in the temporary folder for every folder ever used. Each now goes as its holder lets go,
    and three processes taking turns on one folder (one deleting the file while another has it open) never hold it
    at once: an exclusive marker each creates inside the lock would fail."""
    import subprocess
    import sys

    folder = tmp_path / "run"
    lock = io.lock_path(folder)  # its own file only: other dap runs of this user hold theirs meanwhile
    with io.folder_lock(folder, "holder"):
        assert lock.is_file()
    assert not lock.exists()
    code = ("import os, sys, time\nfrom dap.errors import DapError\nfrom dap.io import folder_lock\n"
            "marker, held, end = os.path.join(sys.argv[2], 'inside'), 0, time.monotonic() + 3\n"
            "while time.monotonic() < end:\n    try:\n        with folder_lock(sys.argv[1], 'p'):\n"
            "            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
            "            os.unlink(marker)\n            held += 1\n    except DapError:\n        pass\n"
            "print(held)\n")
    runs = [subprocess.Popen([sys.executable, "-c", code, str(folder), str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in results]
    assert all(int(out) > 0 for out, _ in results)
    assert not lock.exists()


def test_npy_round_trip_keeps_non_finite_values_and_names_a_broken_file(tmp_path):
    a = np.array([[1.5, np.nan], [np.inf, 0.0]], np.float32)
    io.write_npy(tmp_path / "p.NPY", a)  # numpy alone would write "p.NPY.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.NPY"]
    b = io.read_npy(tmp_path / "p.NPY")
    assert b.dtype == np.float32 and np.array_equal(a, b, equal_nan=True)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(UnreadableFileError, match="bad.npy.*no NumPy header"):
        io.read_npy(tmp_path / "bad.npy")


def test_atomic_folder_leaves_the_old_folder_or_the_new_one(tmp_path):
    """dap convert and the discriminator's save removed (or renamed away) the old folder before moving the new one
    in: a kill between left neither; their temporaries (8 random characters) were never cleaned up."""
    out = tmp_path / "m"
    with io.atomic_folder(out) as tmp:
        (tmp / "a").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError), io.atomic_folder(out) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and (out / "a").read_text() == "1"
    # killed between the two renames: the earlier folder waits as a backup; the next call puts it back first
    out.rename(tmp_path / ".m.0123456789ab.old")
    (tmp_path / ".m.fedcba987654.tmp").mkdir()  # and the half-written new one, a temporary like any other
    assert io.TEMPORARY_NAME.fullmatch(".m.fedcba987654.tmp")
    with pytest.raises(RuntimeError), io.atomic_folder(out) as tmp:
        assert (out / "a").read_text() == "1"
        raise RuntimeError("killed again")
    assert (out / "a").read_text() == "1" and not list(tmp_path.glob("*.old"))


def test_atomic_folder_replacing_a_file_leaves_no_backup(tmp_path):
    """A file where the folder goes (a user's, replaced with --overwrite) stayed as a hidden ".<name>.<hex>.old":
    the backup was removed as a folder only."""
    (tmp_path / "a.cube").write_text("a file")
    with io.atomic_folder(tmp_path / "a.cube") as tmp:
        (tmp / "face").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cube"] and (tmp_path / "a.cube" / "face").is_file()


def test_a_refused_run_removes_no_temporary_of_the_run_it_is_refused_by(tmp_path, monkeypatch):
    """The commands removed stale temporaries of their output folder before taking its lock: a run paused (or slow)
    for over a minute lost the file it was writing to the run refused beside it, and then failed."""
    tmp = tmp_path / ".p.ply.0123456789ab.tmp.ply"
    with io.folder_lock(tmp_path, "dap predict"):
        tmp.write_bytes(b"half")
        os.utime(tmp, (1, 1))  # old: "stale" by age
        with pytest.raises(DapError, match="in use by dap predict"):
            with io.folder_lock(tmp_path, "a second dap predict"):
                pass
        assert tmp.exists()
    with io.folder_lock(tmp_path, "the next dap predict"):  # held: the killed run's leftovers go
        assert not tmp.exists()


def test_a_held_run_removes_no_temporary_of_another_run_in_a_sub_folder(tmp_path):
    """A run's clean-up walked its whole folder: `dap predict --out par` removed the panels folder a `dap eval --out
    par/ev` was still filling (written in its first minute, untouched since), and the evaluation failed at its end."""
    tmp = tmp_path / "ev" / ".panels.0123456789ab.tmp"
    with io.folder_lock(tmp_path / "ev", "dap eval"):
        tmp.mkdir(parents=True)
        os.utime(tmp, (1, 1))  # "stale" by age
        with io.folder_lock(tmp_path, "dap predict"):
            assert tmp.exists()
    with io.folder_lock(tmp_path, "dap predict"):  # no run holds ev now: a killed run's leftover
        assert not tmp.exists()


@pytest.mark.parametrize("unsafe", ["open to others", "a link"])
def test_a_lock_folder_others_could_write_is_refused(tmp_path, monkeypatch, unsafe):
    """The lock folder has a predictable name in the shared /tmp and was used whoever made it, its lock file opened
    through links and emptied: another user could make it first, plant <hash>.lock -> ~/.bashrc, and have any dap
    command empty that file."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out"
    locks = io.lock_path(folder).parent
    if unsafe == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        locks.symlink_to(tmp_path / "elsewhere")
    else:
        locks.mkdir()
        locks.chmod(0o777)
    io.lock_path(folder).symlink_to(victim)
    with pytest.raises(DapError, match=f"the lock folder {re.escape(str(locks))} .*remove it, or set TMPDIR to a "
                                       "folder of your own"):
        with io.folder_lock(folder, "dap predict"):
            pass
    assert victim.read_text() == "precious"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the page cut short
def test_a_multi_page_tiff_cut_short_in_a_later_page_reads_its_first(tmp_path):
    """Pillow's frame count raised TypeError ("Missing dimensions") on a TIFF cut short in its second page's header:
    a traceback from read_rgb, and dap predict ended the whole folder run on it."""
    first, second = (Image.fromarray(np.full((32, 64, 3), v, np.uint8)) for v in (60, 200))
    first.save(tmp_path / "two.tif", save_all=True, append_images=[second])
    data = (tmp_path / "two.tif").read_bytes()
    ifd = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[ifd:ifd + 2])[0]
    page2 = struct.unpack("<I", data[ifd + 2 + 12 * entries:ifd + 6 + 12 * entries])[0]
    (tmp_path / "cut.tif").write_bytes(data[:page2 + 2])  # the second page's header cut short
    rgb, notes = io.read_rgb_notes(tmp_path / "cut.tif")
    assert np.allclose(rgb, 60 / 255) and "frames" in notes[0]


def test_a_16bit_min_is_white_grey_tiff_is_not_read_as_its_negative(tmp_path):
    """TIFF photometric 0 ("min is white": a stored 0 is white): Pillow inverts such 8-bit grey as it reads it,
    16-bit it leaves as stored, and those were read as a negative."""
    from PIL import TiffImagePlugin

    stored = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[262] = 0
    Image.fromarray(stored).save(tmp_path / "w16.tif", tiffinfo=tags)  # I;16, its pixels written as they are
    rgb = io.read_rgb(tmp_path / "w16.tif")
    np.testing.assert_allclose(rgb[..., 0], 1 - stored / 65535, atol=1e-6)
    # big-endian ("MM"): Pillow has no mode for it, OpenCV reads it, and ignored the tag
    h, w = stored.shape
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 0), (273, 4, 1, 0),
               (277, 3, 1, 1), (278, 3, 1, h), (279, 4, 1, stored.nbytes)]
    ifd_size = 2 + 12 * len(entries) + 4
    pixels_at = 8 + ifd_size
    ifd = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, kind, count) + (struct.pack(">HH", value, 0) if kind == 3 else
                                                 struct.pack(">I", pixels_at if tag == 273 else value))
        for tag, kind, count, value in entries) + struct.pack(">I", 0)
    (tmp_path / "w16b.tif").write_bytes(b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + stored.astype(">u2").tobytes())
    np.testing.assert_allclose(io.read_rgb(tmp_path / "w16b.tif")[..., 0], 1 - stored / 65535, atol=1e-6)


def test_a_npz_that_is_no_archive_is_named_so(tmp_path):
    """A text file named .npz got numpy's advice to allow pickles; a .npy file named .npz was a TypeError."""
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "array.npy", np.ones((4, 8), np.float32))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    for name in ("text.npz", "array.npz"):
        with pytest.raises(UnreadableFileError, match=f"cannot read .*{name}: it is not a .npz archive") as err:
            io.read_depth(tmp_path / name)
        assert "pickle" not in str(err.value)


@pytest.mark.skipif(".heic" not in io.UNSUPPORTED_FORMATS, reason="this install decodes HEIF")
def test_a_heic_photo_named_jpg_is_named_by_its_contents(tmp_path):
    """A phone's HEIC saved as .jpg got "cannot identify image file ... re-download it if it was cut short"."""
    (tmp_path / "pano.jpg").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    with pytest.raises(UnreadableFileError, match="pano.jpg: by its contents it is a HEIF/AVIF image, which this "
                                                  "install does not decode: convert it to JPEG or PNG first"):
        io.read_rgb(tmp_path / "pano.jpg")


def test_a_large_jpeg_is_decoded_no_larger_than_asked(tmp_path):
    """`dap curate ingest` decoded a 16K panorama whole (3.2 GB at its peak) to store it 2048 wide."""
    rgb = np.random.default_rng(0).random((1024, 2048, 3)).astype(np.float32)
    io.write_rgb(tmp_path / "big.jpg", rgb)
    io.write_rgb(tmp_path / "big.png", rgb)
    assert io.read_rgb(tmp_path / "big.jpg", at_least=256).shape == (256, 512, 3)  # 1/4: 1/8 would be too small
    assert io.read_rgb(tmp_path / "big.jpg", at_least=600).shape == (1024, 2048, 3)  # 1/2 would be too small
    assert io.read_rgb(tmp_path / "big.png", at_least=256).shape == (1024, 2048, 3)  # JPEG only
    small = io.read_rgb(tmp_path / "big.jpg", at_least=256)
    full = cv2.resize(io.read_rgb(tmp_path / "big.jpg"), (512, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(small - full).mean() < 0.02  # the same picture


def test_atomic_write_errors_name_the_file_asked_for(tmp_path):
    """A read-only folder's PermissionError named the hidden temporary; a folder in the way was a bare
    IsADirectoryError from the rename."""
    with pytest.raises(PermissionError) as err:
        with io.atomic_write(tmp_path / "a.npy") as tmp:
            raise PermissionError(13, "Permission denied", str(tmp))  # as open() raises it (root ignores modes)
    assert err.value.filename == str(tmp_path / "a.npy") and ".tmp" not in str(err.value)
    (tmp_path / "taken.npy").mkdir()
    with pytest.raises(IsADirectoryError, match="a folder is in the way of the file to write: .*taken.npy"):
        io.write_depth(tmp_path / "taken.npy", np.ones((4, 8), np.float32))
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------- images


def test_rgb_png_uint8_round_trip_is_exact(tmp_path, rng):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    io.write_rgb(tmp_path / "x.png", rgb)
    out = io.read_rgb(tmp_path / "x.png")
    assert out.dtype == np.float32 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), rgb)
    assert _leftovers(tmp_path) == []


def test_rgb_float_input_is_quantised_to_8_bit(tmp_path, rng):
    rgb = rng.uniform(-0.1, 1.1, (H, W, 3)).astype(np.float32)
    io.write_rgb(tmp_path / "x.png", rgb)
    out = io.read_rgb(tmp_path / "x.png")
    np.testing.assert_allclose(out, np.clip(rgb, 0, 1), atol=0.5 / 255 + 1e-6)


def test_rgb_jpeg_round_trip_is_close(tmp_path):
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([xx / W, yy / H, np.full((H, W), 0.5)], axis=-1).astype(np.float32)
    io.write_rgb(tmp_path / "x.jpg", rgb)
    with Image.open(tmp_path / "x.jpg") as img:
        assert img.format == "JPEG"
    assert np.abs(io.read_rgb(tmp_path / "x.jpg") - rgb).mean() < 0.01


def test_rgb_16bit_png_keeps_16_bit_precision(tmp_path, rng):
    rgb16 = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 takes BGR
    out = io.read_rgb(tmp_path / "c16.png")
    np.testing.assert_allclose(out, rgb16 / 65535.0, atol=1e-7)
    # 8-bit truncation would be off by up to 255/65535: make sure we are far below that
    assert np.abs(out - rgb16 / 65535.0).max() < 1e-5


def test_rgba_16bit_png_drops_alpha(tmp_path, rng):
    rgba16 = rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16a.png"), rgba16[..., [2, 1, 0, 3]])
    np.testing.assert_allclose(io.read_rgb(tmp_path / "c16a.png"), rgba16[..., :3] / 65535.0, atol=1e-7)


def test_gray16_png_to_three_channels(tmp_path, rng):
    gray = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    out = io.read_rgb(tmp_path / "g16.png")
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], gray / 65535.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P"])
def test_other_modes_become_rgb(tmp_path, rng, mode):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    img = base.convert(mode) if mode != "P" else base.quantize(16)
    if mode in ("LA", "RGBA"):
        img.putalpha(Image.fromarray(np.zeros((H, W), np.uint8)))  # fully transparent: alpha must be dropped
    img.save(tmp_path / "x.png")
    out = io.read_rgb(tmp_path / "x.png")
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    expected = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(out, expected)
    assert out.max() > 0.5  # alpha 0 was not composited to black


def test_webp_and_tiff_read(tmp_path, rng):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.webp", lossless=True)
    Image.fromarray(rgb).save(tmp_path / "x.tif")
    for name in ("x.webp", "x.tif"):
        np.testing.assert_array_equal(np.round(io.read_rgb(tmp_path / name) * 255), rgb)


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _write_exr(path, channels: dict) -> None:
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels).write(str(path))


def test_hdr_tone_mapping_exposes_the_median_to_middle_grey_whatever_the_exposure(rng):
    # a uniform panorama of any radiance comes out at middle grey: linear 0.18 is sRGB 0.4614
    for radiance in (0.002, 5.0, 3000.0):
        np.testing.assert_allclose(io.tonemap_hdr(np.full((H, W, 3), radiance, np.float32)), 0.46135, atol=1e-4)
    linear = (rng.random((H, W, 3)) ** 2.2 * 30).astype(np.float32)
    kept = linear.copy()
    out = io.tonemap_hdr(linear)
    np.testing.assert_array_equal(linear, kept)  # the caller's array is left alone unless copy=False
    assert io.tonemap_hdr(kept, copy=False) is kept and np.array_equal(kept, out)
    np.testing.assert_allclose(io.tonemap_hdr(linear * 7.3), out, atol=1e-6)  # exposure-invariant
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    # settings that gave an all-black or all-NaN image, and a grey input a matmul traceback
    for kwargs, says in (({"key": 0}, "key must be a finite number > 0, got 0"),
                         ({"key": float("nan")}, "key must be a finite number > 0"),
                         ({"clip_share": 1.5}, "clip_share is a share of the sphere in"),
                         ({"protect_stops": float("nan")}, "protect_stops is a number of stops >= 0")):
        with pytest.raises(ValueError, match=says):
            io.tonemap_hdr(linear, **kwargs)
    with pytest.raises(ValueError, match=r"expects linear RGB of shape \(H, W, 3\), got shape \(8, 16\)"):
        io.tonemap_hdr(linear[:8, :16, 0])
    # the median over the sphere, not over pixels: bright polar caps of 60% of the rows cover 41% of the sphere,
    # so the dark middle band is what comes out at middle grey (without the limit on clipping, which they would hit)
    caps = np.full((H, W, 3), 1.0, np.float32)
    band = round(0.3 * H)
    caps[:band] = caps[-band:] = 50.0
    out = io.tonemap_hdr(caps, clip_share=None)
    np.testing.assert_allclose(out[H // 2], 0.46135, atol=1e-4)
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)  # clipped at white
    # NaN, inf and negative radiance are black; a black panorama stays black
    bad = np.full((H, W, 3), 0.5, np.float32)
    bad[0, :3] = [np.nan, np.inf, -2.0]
    assert np.all(io.tonemap_hdr(bad)[0, :3] == 0)
    np.testing.assert_array_equal(io.tonemap_hdr(np.zeros((H, W, 3))), 0)


def test_hdr_tone_mapping_keeps_a_bright_sky_as_a_camera_would():
    # ground at radiance 1, a sky over the top 40% of the rows (about 30% of the sphere) brightening from 10 to 20
    # towards the zenith, and a sun of a few pixels at 1e5
    linear = np.full((64, 128, 3), 1.0, np.float32)
    sky_rows = round(0.4 * 64)
    linear[:sky_rows] = np.linspace(20.0, 10.0, sky_rows, dtype=np.float32)[:, None, None]
    linear[10, 40:42] = 1e5
    sphere = geometry.solid_angle_weights(64, 128, dtype=torch.float64).numpy()

    def share_at_white(img: np.ndarray) -> float:
        return float(np.average(img.min(-1) > 0.9999, weights=np.broadcast_to(sphere, (64, 128))))

    # the median alone (the ground, at middle grey) would burn out the whole sky
    burnt = io.tonemap_hdr(linear, clip_share=None)
    np.testing.assert_allclose(burnt[-1], 0.46135, atol=1e-4)
    assert share_at_white(burnt) > 0.29
    # the limit keeps all but 1% of the sphere below white: the sky keeps its gradient, the ground comes out darker
    out = io.tonemap_hdr(linear)
    # the sun and the sky's brightest rows: 1% past white, and the row holding the quantile at white exactly
    assert 0.002 < share_at_white(out) < 0.02
    sky = out[:sky_rows, 0, 1]
    assert sky[6] < 0.99 and np.all(np.diff(sky[4:]) < 0)  # brighter towards the zenith, row by row
    ground = out[-1, 0, 1]
    assert 0.2 < ground < 0.46135
    # the sun alone covers too little to change the exposure
    no_sun = linear.copy()
    no_sun[10, 40:42] = no_sun[10, 39]
    np.testing.assert_allclose(io.tonemap_hdr(no_sun)[-1], out[-1], atol=1e-6)


def test_hdr_tone_mapping_lets_very_bright_lamps_burn_out_rather_than_darken_the_room():
    # ceiling lights in a band of rows 30-40 degrees up (about 2% of the sphere) at 1000 times the room's radiance
    linear = np.full((64, 128, 3), 1.0, np.float32)
    linear[8:10] = 1000.0
    out = io.tonemap_hdr(linear)
    # putting the lamps at white would leave the room at 1/1000; the protection stops 3 stops below the median's
    room = 0.18 / 2**io.HDR_PROTECT_STOPS  # linear, then sRGB-encoded:
    np.testing.assert_allclose(out[32], 1.055 * room ** (1 / 2.4) - 0.055, atol=1e-4)
    assert np.all(out[8:10] > 0.9999)
    # with the limit lifted, the lamps win and the room goes black
    assert io.tonemap_hdr(linear, protect_stops=math.inf)[32].max() < 0.02


def test_hdr_tone_mapping_of_a_mostly_black_panorama_is_exposure_invariant():
    # a night sky over 60% of the sphere: the median is black, so the lit 40% sets the exposure, whatever the file's
    linear = np.zeros((64, 128, 3), np.float32)
    linear[30:] = np.linspace(0.5, 3.0, 128, dtype=np.float32)[None, :, None]
    out = io.tonemap_hdr(linear)
    np.testing.assert_allclose(io.tonemap_hdr(linear * np.float32(1e-3)), out, atol=1e-6)
    np.testing.assert_allclose(io.tonemap_hdr(linear * np.float32(1e3)), out, atol=1e-6)
    assert out[40, -1, 0] > 0.85 and out[40, 0, 0] < 0.6 and np.all(out[:30] == 0)  # the brightest near white


def test_hdr_and_exr_panoramas_read_tone_mapped(tmp_path, rng):
    srgb = rng.random((H, W, 3)).astype(np.float32)
    linear = _srgb_to_linear(srgb) * 40.0  # as an HDR file stores it, at some absolute exposure
    expected = io.tonemap_hdr(linear.copy())
    cv2.imwrite(str(tmp_path / "p.hdr"), linear[..., ::-1].copy())
    _write_exr(tmp_path / "rgb.exr", {"RGB": linear})
    _write_exr(tmp_path / "half.exr", {"R": linear[..., 0].astype(np.float16), "G": linear[..., 1].astype(np.float16),
                                       "B": linear[..., 2].astype(np.float16), "A": np.ones((H, W), np.float16)})
    _write_exr(tmp_path / "gray.exr", {"Y": linear[..., 1]})
    np.testing.assert_allclose(io.read_rgb(tmp_path / "rgb.exr"), expected, atol=1e-6)
    np.testing.assert_allclose(io.read_rgb(tmp_path / "half.exr"), expected, atol=2e-3)  # half floats
    # RGBE keeps 8 bits of mantissa per channel beside a shared exponent: close, not exact
    assert np.abs(io.read_rgb(tmp_path / "p.hdr") - expected).mean() < 0.01
    gray = io.read_rgb(tmp_path / "gray.exr")
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    # a renderer's multi-layer EXR: the colour of its Combined layer, whatever other layers it holds
    plane = [np.ascontiguousarray(linear[..., i]) for i in range(3)]  # the binding ignores strides: no views
    layers = {f"ViewLayer.Combined.{c}": plane[i] for i, c in enumerate("RGB")}
    layers.update({"ViewLayer.Combined.A": np.ones((H, W), np.float32), "ViewLayer.Depth.Z": plane[0],
                   "ViewLayer.Normal.R": plane[2], "ViewLayer.Normal.G": plane[1], "ViewLayer.Normal.B": plane[0]})
    _write_exr(tmp_path / "layers.exr", layers)
    np.testing.assert_allclose(io.read_rgb(tmp_path / "layers.exr"), expected, atol=1e-6)
    assert not io.is_depth_exr(tmp_path / "layers.exr")
    assert not io.is_depth_exr(tmp_path / "rgb.exr") and not io.is_depth_exr(tmp_path / "gray.exr")


def test_depth_exr_npy_and_broken_hdr_inputs_say_what_they_are(tmp_path, rng):
    io.write_depth(tmp_path / "depth.exr", rng.random((H, W)).astype(np.float32) + 1)
    assert io.is_depth_exr(tmp_path / "depth.exr")
    with pytest.raises(UnreadableFileError, match=r"EXR channels are Z, not all three of R, G and B .*; a depth map"):
        io.read_rgb(tmp_path / "depth.exr")
    np.save(tmp_path / "pano.npy", rng.random((H, W, 3)).astype(np.float32))
    with pytest.raises(UnreadableFileError, match=r"a \.npy file holds an array, not an image.*numpy\.load"):
        io.read_rgb(tmp_path / "pano.npy")
    for name, data in (("cut.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8 +X 16\n"), ("text.exr", b"hello")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableFileError, match=f"cannot read .*{name}"):
            io.read_rgb(tmp_path / name)
    assert not io.is_depth_exr(tmp_path / "text.exr")  # unreadable: listed as an input, then fails by name
    OpenEXR.File({"type": OpenEXR.scanlineimage}, {"RGB": rng.random((H, W, 3)).astype(np.float32)}).write(
        str(tmp_path / "cut.exr"))
    (tmp_path / "cut.exr").write_bytes((tmp_path / "cut.exr").read_bytes()[:400])
    with pytest.raises(UnreadableFileError, match=r"cut.exr: its OpenEXR data is damaged or cut short \(OpenEXR: "):
        io.read_rgb(tmp_path / "cut.exr")


def test_exif_orientation_is_applied_unless_it_would_turn_a_panorama_on_its_side(tmp_path):
    """A phone's portrait-stored 1:2 image tagged "turn 90 degrees" is turned upright (to 2:1); a 2:1 panorama with
    such a tag is read as stored (turned it would be 1:2, which no 360 camera makes: the tag is wrong); a turn by
    180 degrees (a camera mounted upside down) is applied to a panorama too."""
    def saved(rgb, orientation, name):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(rgb).save(tmp_path / name, exif=exif.tobytes(), quality=95)
        return io.read_rgb(tmp_path / name)

    portrait = np.zeros((W, H, 3), np.uint8)
    portrait[:4] = 255  # bright top rows
    out = saved(portrait, 6, "portrait.jpg")  # 6: "turn 90 degrees clockwise to display"
    assert out.shape == (H, W, 3)
    assert out[:, -3:].mean() > 0.9 and out[:, :-5].mean() < 0.1  # the top rows end up as the right-most columns

    pano = np.zeros((H, W, 3), np.uint8)
    pano[:4] = 255
    for orientation in (5, 6, 7, 8):
        out = saved(pano, orientation, f"pano{orientation}.jpg")
        assert out.shape == (H, W, 3) and out[:3].mean() > 0.9 and out[5:].mean() < 0.1
    out = saved(pano, 3, "upside_down.jpg")
    assert out.shape == (H, W, 3) and out[-3:].mean() > 0.9 and out[:-5].mean() < 0.1


def _tiff(path, pixels: np.ndarray, orientation: int | None = 1, sample_format: int = 1, xmp: bytes = b"") -> None:
    """An uncompressed RGB TIFF of uint8, uint16 or float32 (`sample_format` 3) `pixels` with an orientation tag
    (None: none) and XMP, as cameras and scanners write them (Pillow writes no 16-bit colour, OpenCV no
    orientation)."""
    h, w, channels = pixels.shape
    data, per_channel = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes(), pixels.dtype.itemsize * 8
    arrays = struct.pack("<3H", *[per_channel] * 3) + struct.pack("<3H", *[sample_format] * 3)
    xmp += b" " * (len(xmp) % 2)
    ifd_at = 8 + len(arrays) + len(data) + len(xmp)
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 8 + len(arrays)), (274, 3, 1, orientation), (277, 3, 1, channels), (278, 4, 1, h),
            (279, 4, 1, len(data)), (284, 3, 1, 1), (339, 3, 3, 14),  # 258 and 339 point at the arrays
            (700, 1, len(xmp), 8 + len(arrays) + len(data))]
    tags = [t for t in tags if t[3] is not None and t[2]]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + struct.pack("<HH" if kind == 3 and count == 1 else "<I", value,
                                                            *([0] if kind == 3 and count == 1 else []))
        for tag, kind, count, value in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + arrays + data + xmp + ifd)


def _xmp_orientation(tag: int) -> bytes:
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="' + str(tag).encode()
            + b'"/></rdf:RDF></x:xmpmeta>')


def _png_chunk(path, kind: bytes, data: bytes) -> None:
    """Add a chunk to a PNG before its pixels (what OpenCV's writer cannot: EXIF, XMP)."""
    raw = path.read_bytes()
    at = raw.index(b"IDAT") - 4
    path.write_bytes(raw[:at] + struct.pack(">I", len(data)) + kind + data
                     + struct.pack(">I", zlib.crc32(kind + data)) + raw[at:])


def test_every_orientation_is_applied_alike_by_every_reader(tmp_path):
    """Orientations 2-8 (flips and turns), from EXIF or XMP, in 8- and 16-bit PNG and TIFF and in PIL images, read
    as Pillow's exif_transpose turns them upright; a 90 degree tag on a 2:1 image is ignored by each reader alike
    (OpenCV, which decodes 16 bits, ignores XMP and turns TIFFs whatever it is told: read upside down before)."""
    upright = np.arange(H * W * 3, dtype=np.uint32).reshape(H, W, 3) % 251  # no symmetry: any wrong turn shows
    inverse = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
    method = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
              6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}  # exif_transpose's
    want = upright.astype(np.float32) / 251
    for tag in range(2, 9):
        stored = np.asarray(Image.fromarray(upright.astype(np.uint8)).transpose(method[inverse[tag]]))
        wide = tag in (5, 6, 7, 8)  # a tag of these on the 2:1 upright image itself is ignored
        cases = {}
        for bits, scale in ((8, 1), (16, 257)):
            pixels = (stored.astype(np.uint16) * scale).astype(np.uint8 if bits == 8 else np.uint16)
            _tiff(tmp_path / f"{tag}_{bits}.tif", pixels, tag)
            cases[f"{bits}-bit TIFF"] = (tmp_path / f"{tag}_{bits}.tif", 251 * scale)
            _tiff(tmp_path / f"{tag}_{bits}x.tif", pixels, None, xmp=_xmp_orientation(tag))  # XMP's alone
            cases[f"{bits}-bit TIFF with XMP"] = (tmp_path / f"{tag}_{bits}x.tif", 251 * scale)
            if wide:
                _tiff(tmp_path / f"{tag}_{bits}w.tif", (upright * scale).astype(pixels.dtype), tag)
                cases[f"2:1 {bits}-bit TIFF"] = (tmp_path / f"{tag}_{bits}w.tif", 251 * scale)
            for how in ("EXIF", "XMP"):
                path = tmp_path / f"{tag}_{bits}_{how}.png"
                cv2.imwrite(str(path), pixels[..., ::-1])
                exif = Image.Exif()
                exif[0x0112] = tag
                _png_chunk(path, b"eXIf", exif.tobytes()[6:]) if how == "EXIF" else _png_chunk(
                    path, b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + _xmp_orientation(tag))
                cases[f"{bits}-bit PNG with {how}"] = (path, 251 * scale)
        # float colour, which Pillow cannot open: OpenCV's reader failed on tags 5-8 ("neither Pillow nor OpenCV")
        _tiff(tmp_path / f"{tag}_f.tif", stored.astype(np.float32) / 255, tag, sample_format=3)
        _tiff(tmp_path / f"{tag}_fx.tif", stored.astype(np.float32) / 255, None, 3, _xmp_orientation(tag))
        cases |= {"float TIFF": (tmp_path / f"{tag}_f.tif", 251), "float TIFF with XMP": (tmp_path / f"{tag}_fx.tif",
                                                                                         251)}
        if wide:
            _tiff(tmp_path / f"{tag}_fw.tif", upright.astype(np.float32) / 255, tag, sample_format=3)
            cases["2:1 float TIFF"] = (tmp_path / f"{tag}_fw.tif", 251)
        for name, (path, peak) in cases.items():
            got = io.read_rgb(path) * (65535 if peak > 251 else 255) / peak
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"orientation {tag}, {name}")
            if "PNG" in name and "8-bit" in name:  # a PIL image of the file is turned as the file is
                np.testing.assert_allclose(to_rgb(Image.open(path)) * 255 / 251, want, atol=1e-4,
                                           err_msg=f"orientation {tag}, PIL image of {name}")


def test_integer_tiffs_outside_16_bits_are_refused_and_low_16_bit_files_noted(tmp_path):
    _tiff(tmp_path / "signed.tif", np.full((H, W, 3), 1000, np.uint16), sample_format=2)
    with pytest.raises(DapError, match="signed.tif holds signed integer pixels, whose range the file does not state"):
        io.read_rgb(tmp_path / "signed.tif")
    Image.fromarray(np.full((H, W), 70000, np.int32)).save(tmp_path / "i32.tif")  # Pillow's mode I: signed
    with pytest.raises(DapError, match="i32.tif holds signed integer pixels"):
        io.read_rgb(tmp_path / "i32.tif")
    with pytest.raises(DapError, match=r"a grey image of mode I with values 0\.\.71645 is not 16-bit"):
        to_rgb(Image.fromarray(np.arange(H * W, dtype=np.int32).reshape(H, W) * 35))  # was clipped at white
    for name, pixels in (("rgb12.png", np.full((H, W, 3), 4000, np.uint16)), ("grey8.png", np.full((H, W), 200,
                                                                                                    np.uint16))):
        cv2.imwrite(str(tmp_path / name), pixels[..., ::-1] if pixels.ndim == 3 else pixels)
        rgb, notes = io.read_rgb_notes(tmp_path / name)
        assert notes == [f"its 16-bit pixels reach only {pixels.max()} of 65535, so it reads as almost black; if it "
                         "holds 8-bit (0-255) or 12-bit (0-4095) values, scale them to 0-65535, or save it with 8 bits"]
        np.testing.assert_allclose(rgb.max(), pixels.max() / 65535)  # still read as 16-bit: the note says it
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "grey6.tif", exif=exif.tobytes())
    with pytest.raises(DapError, match="grey6.tif is a grey TIFF whose orientation tag .6. turns it by 90 degrees"):
        io.read_rgb(tmp_path / "grey6.tif")  # Pillow gave neither the stored nor the upright pixels


@pytest.mark.parametrize("name", ["x.png", "x.jpg"])
def test_truncated_images_raise(tmp_path, rng, name):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UnreadableFileError, match="truncated") as err:
        io.read_rgb(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)


def test_too_many_pixels_says_to_downscale(tmp_path, rng, monkeypatch):
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 3)  # over twice the limit: Pillow refuses it
    with pytest.raises(UnreadableFileError, match=r"huge.png: .*Downscale it first") as err:
        io.read_rgb(tmp_path / "huge.png")
    assert "complete" not in str(err.value)  # not reported as a broken download
    assert "attack.." not in str(err.value) and "the official model sees 1024x512 pixels" in str(err.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W * 2 // 3)  # over the limit, under twice it: a warning
    with pytest.warns(Image.DecompressionBombWarning):
        assert io.read_rgb(tmp_path / "huge.png").shape == (H, W, 3)


def test_text_file_named_png_raises(tmp_path):
    (tmp_path / "fake.png").write_text("not an image at all")
    with pytest.raises(UnreadableFileError, match="fake.png"):
        io.read_rgb(tmp_path / "fake.png")


def test_a_video_named_as_an_image_says_so(tmp_path):
    """An MP4 without an extension or an AVI named .jpg got Pillow's "cannot identify image file"."""
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (W, H))
    writer.write(np.zeros((H, W, 3), np.uint8))
    writer.release()
    for name in ("clip", "clip.jpg"):
        (tmp_path / name).write_bytes((tmp_path / "clip.avi").read_bytes())
        with pytest.raises(UnreadableFileError, match=rf"{name}: it is a video \(by its contents\), named as something "
                                                      r"else; give it its video extension \(.mp4"):
            io.read_rgb(tmp_path / name)
    (tmp_path / "text.jpg").write_text("not a video either")
    with pytest.raises(UnreadableFileError, match="text.jpg: cannot identify image file"):
        io.read_rgb(tmp_path / "text.jpg")


def test_an_mpeg_transport_stream_is_a_video(tmp_path):
    """A camera's .ts/.mts (MPEG-TS) was "cannot identify image file ... re-download it": by its name and by its
    contents (a sync byte every 188 bytes) it is a video, whose frames are read."""
    ts = tmp_path / "clip.ts"
    # FFmpeg muxes MPEG-TS by the name; a stream shorter than this is too short for it to find the codec
    writer = cv2.VideoWriter(str(ts), cv2.VideoWriter_fourcc(*"mp4v"), 5, (256, 128))
    for i in range(10):
        writer.write(np.full((128, 256, 3), 20 * i, np.uint8))
    writer.release()
    assert ts.read_bytes()[0] == 0x47 and ts.suffix in io.VIDEO_SUFFIXES
    assert len(list(io.iter_video_frames(ts))) == 10
    # a glob over a folder with TypeScript beside it takes the video, not the .ts/.mts source files
    from dap.inference import expand_inputs

    (tmp_path / "app.ts").write_text("export const x: number = 1;\n")
    (tmp_path / "lib.mts").write_text("export {};\n")
    items, _ = expand_inputs([str(tmp_path / "*.*ts")])
    assert [i.source for i in items] == [str(ts)] and io.listed_as_video(ts) and not io.listed_as_video(
        tmp_path / "app.ts")
    (tmp_path / "clip.bin").write_bytes(ts.read_bytes())
    with pytest.raises(UnreadableFileError, match=r"clip.bin: it is a video \(by its contents\)"):
        io.read_rgb(tmp_path / "clip.bin")


def test_a_broken_link_says_where_it_points(tmp_path):
    """A dangling link to a video said only "no such file" (images listed from a folder said where it points)."""
    (tmp_path / "dead.mp4").symlink_to("/nowhere/x.mp4")
    with pytest.raises(UnreadableFileError, match=r"dead.mp4: no such file \(a symbolic link to /nowhere/x.mp4, which "
                                                  "does not exist"):
        list(io.iter_video_frames(tmp_path / "dead.mp4"))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "pano.jpg"
    with pytest.raises(UnreadableFileError) as err:
        io.read_rgb(missing)
    assert str(missing) in str(err.value) and "no such file" in str(err.value)
    with pytest.raises(UnreadableFileError, match="depth.npy"):
        io.read_depth(tmp_path / "depth.npy")
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        io.read_rgb(tmp_path)


def test_require_erp(tmp_path):
    io.write_rgb(tmp_path / "ok.png", np.zeros((H, W, 3), np.uint8))
    io.write_rgb(tmp_path / "bad.png", np.zeros((H, W + 2, 3), np.uint8))
    assert io.read_rgb(tmp_path / "ok.png", require_erp=True).shape == (H, W, 3)
    assert io.read_rgb(tmp_path / "bad.png").shape == (H, W + 2, 3)
    with pytest.raises(NotPanoramaError, match="bad.png"):
        io.read_rgb(tmp_path / "bad.png", require_erp=True)


# ----------------------------------------------------------------------------------------------- depth


@pytest.mark.parametrize("ext", [".npy", ".npz", ".exr"])
def test_float_depth_round_trip_is_bit_exact(tmp_path, rng, ext):
    depth = _depth(rng)
    depth[3, 5] = 0.0
    io.write_depth(tmp_path / f"d{ext}", depth)
    out = io.read_depth(tmp_path / f"d{ext}")
    assert out.dtype == np.float32 and out.shape == (H, W)
    np.testing.assert_array_equal(out, depth)
    assert _leftovers(tmp_path) == []
    # views keep their values whatever their memory layout (OpenEXR's binding alone would write the buffer as is)
    for name, view in (("transposed", _depth(rng).T.copy().T), ("mirrored", depth[:, ::-1]), ("strided",
                       np.repeat(depth, 2, axis=1)[:, ::2])):
        io.write_depth(tmp_path / f"{name}{ext}", view)
        np.testing.assert_array_equal(io.read_depth(tmp_path / f"{name}{ext}"), view, err_msg=name)
    # the extension in capitals: numpy added ".npy" to the temporary, the write failed and left it behind
    io.write_depth(tmp_path / f"upper{ext.upper()}", depth)
    np.testing.assert_array_equal(io.read_depth(tmp_path / f"upper{ext.upper()}"), depth)
    assert _leftovers(tmp_path) == []


def test_scale_applies_to_every_depth_format(tmp_path):
    """read_depth(..., scale=) was ignored but for PNG: millimetres in a .npy read as 1500 m."""
    mm = np.full((4, 8), 1500, np.uint16)
    np.save(tmp_path / "mm.npy", mm)
    np.savez(tmp_path / "mm.npz", depth=mm)
    OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Z": mm.astype(np.float32)}).write(str(tmp_path / "mm.exr"))
    for name in ("mm.npy", "mm.npz", "mm.exr"):
        np.testing.assert_allclose(io.read_depth(tmp_path / name, scale=0.001), 1.5, err_msg=name)
        np.testing.assert_allclose(io.read_depth(tmp_path / name), 1500, err_msg=name)
    with pytest.raises(ValueError, match=r"key='depth' names an array of a .npz or a channel of an .exr; .*mm.npy"):
        io.read_depth(tmp_path / "mm.npy", key="depth")


def test_written_files_are_what_they_claim(tmp_path, rng):
    depth = _depth(rng)
    io.write_depth(tmp_path / "d.npz", depth)
    with np.load(tmp_path / "d.npz") as z:
        assert list(z.keys()) == ["depth"]
    io.write_depth(tmp_path / "d.exr", depth)
    channels = OpenEXR.File(str(tmp_path / "d.exr")).channels()
    assert list(channels) == ["Z"] and channels["Z"].pixels.dtype == np.float32


def test_png16_depth_round_trip_within_half_a_unit(tmp_path, rng):
    scale = 1 / 1000
    depth = _depth(rng)
    depth[0, 0] = 0.0
    io.write_depth(tmp_path / "d.png", depth, scale=scale)
    with Image.open(tmp_path / "d.png") as img:
        assert img.mode == "I;16"
    out = io.read_depth(tmp_path / "d.png")  # scale comes from the text chunk
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0
    assert np.abs(out - depth).max() <= scale / 2 + 1e-6
    # an explicit scale must agree with the stored one: a dataset's fixed unit read over a file written in another
    # unit would be silently off by their ratio
    np.testing.assert_array_equal(io.read_depth(tmp_path / "d.png", scale=scale), out)
    from fractions import Fraction  # any real number is a scale, not only a float

    io.write_depth(tmp_path / "f.png", depth, scale=Fraction(1, 1000))
    np.testing.assert_array_equal(io.read_depth(tmp_path / "f.png", scale=Fraction(1, 1000)), out)
    with pytest.raises(DepthUnitError, match=r"d.png says its unit is 0.001 m \(its 'dap:metres_per_unit' text "
                                             r"chunk\), but it is being read at 0.002 m per unit"):
        io.read_depth(tmp_path / "d.png", scale=2 * scale)


def test_png16_write_clips_overflow_with_warning_and_keeps_tiny_valid(tmp_path):
    depth = np.array([[1.0, 100.0, 0.0001, 0.0]], np.float32)
    with pytest.warns(UserWarning, match="clipped"):
        io.write_depth(tmp_path / "d.png", depth, scale=1 / 1000)
    out = io.read_depth(tmp_path / "d.png")
    np.testing.assert_allclose(out, [[1.0, 65.534, 0.001, 0.0]], rtol=1e-6)


def test_png16_write_needs_scale(tmp_path, rng):
    with pytest.raises(ValueError, match="scale"):
        io.write_depth(tmp_path / "d.png", _depth(rng))
    assert not (tmp_path / "d.png").exists()


def test_png16_read_without_scale_or_chunk_asks_for_scale(tmp_path):
    Image.fromarray(np.full((H, W), 1000, np.uint16)).save(tmp_path / "raw.png")
    with pytest.raises(DapError, match="scale"):
        io.read_depth(tmp_path / "raw.png")
    np.testing.assert_allclose(io.read_depth(tmp_path / "raw.png", scale=1 / 512), 1000 / 512, rtol=1e-6)


def test_png16_sentinels_are_invalid(tmp_path):
    raw = np.array([[0, 1, 512, 65534, 65535]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "raw.png")
    out = io.read_depth(tmp_path / "raw.png", scale=1 / 512)
    np.testing.assert_allclose(out, [[0.0, 1 / 512, 1.0, 65534 / 512, 0.0]], rtol=1e-6)


def test_8bit_png_is_not_depth(tmp_path):
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "gray8.png")
    with pytest.raises(UnreadableFileError, match="16-bit"):
        io.read_depth(tmp_path / "gray8.png", scale=1.0)


@pytest.mark.parametrize("ext", [".exr", ".npy"])
def test_invalid_float_values_become_zero(tmp_path, ext):
    depth = np.array([[np.inf, np.nan, 1e10, -2.0, 0.0, 3.5, -np.inf, 2e9]], np.float32)
    path = tmp_path / f"bad{ext}"
    if ext == ".exr":  # write the raw values, bypassing write_depth's own cleaning
        OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Z": depth}).write(str(path))
    else:
        np.save(path, depth)
    out = io.read_depth(path)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 0, 3.5, 0, 0]])
    assert np.isfinite(out).all()


def test_write_depth_cleans_invalid_values(tmp_path):
    io.write_depth(tmp_path / "d.npy", np.array([[np.nan, -1.0, 2.0, 1e10]], np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), [[0, 0, 2.0, 0]])


def test_no_valid_depth(tmp_path):
    io.write_depth(tmp_path / "d.npy", np.zeros((H, W), np.float32))
    assert not io.read_depth(tmp_path / "d.npy").any()
    with pytest.raises(NoValidDepthError, match="d.npy"):
        io.read_depth(tmp_path / "d.npy", require_valid=True)


def test_npz_key_selection(tmp_path, rng):
    a, b = _depth(rng), _depth(rng)
    np.savez(tmp_path / "one.npz", dist=a)
    np.testing.assert_array_equal(io.read_depth(tmp_path / "one.npz"), a)
    np.savez(tmp_path / "two.npz", a=a, b=b)
    with pytest.raises(DapError, match=r"key=.*\['a', 'b'\]|\['a', 'b'\].*key="):
        io.read_depth(tmp_path / "two.npz")
    np.testing.assert_array_equal(io.read_depth(tmp_path / "two.npz", key="b"), b)
    np.savez(tmp_path / "named.npz", depth=a, confidence=b)  # 'depth' first, then numpy's default name 'arr_0'
    np.testing.assert_array_equal(io.read_depth(tmp_path / "named.npz"), a)
    np.savez(tmp_path / "plain.npz", a, b)
    np.testing.assert_array_equal(io.read_depth(tmp_path / "plain.npz"), a)
    with pytest.raises(DapError, match=r"plain.npz has no array 'nope'; it holds \['arr_0', 'arr_1'\]$"):
        io.read_depth(tmp_path / "plain.npz", key="nope")


@pytest.mark.parametrize("scale", [math.inf, "0.001", 0.0])
def test_png_depth_needs_a_finite_positive_scale(tmp_path, scale):
    with pytest.raises(ValueError, match="needs scale=<metres per unit> > 0"):
        io.write_depth(tmp_path / "d.png", np.full((4, 8), 5.0, np.float32), scale=scale)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("depth, problem", [(np.zeros((0, 5)), "non-empty"), (np.ones((4, 8), bool), "dtype bool"),
                                            (np.ones((4, 8), complex), "dtype complex128")])
def test_write_depth_refuses_what_is_not_a_depth_map(tmp_path, depth, problem):
    for suffix in (".npy", ".exr", ".png"):
        with pytest.raises(ValueError, match=problem):
            io.write_depth(tmp_path / f"d{suffix}", depth, scale=0.001)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="scale is a positive number of metres per unit, got 0"):
        io.read_depth(tmp_path / "d.png", scale=0)  # the call's mistake, said before the file is looked at


def test_a_video_given_as_an_image_is_named_as_a_video(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(UnreadableFileError, match=r"clip.mp4 is a video, not an image: predict its frames"):
        io.read_rgb(tmp_path / "clip.mp4")


def test_exr_channel_priority(tmp_path, rng):
    r, g, z = _depth(rng), _depth(rng), _depth(rng)
    header = {"type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"R": r, "G": g, "B": g}).write(str(tmp_path / "rgb.exr"))
    np.testing.assert_array_equal(io.read_depth(tmp_path / "rgb.exr"), r)
    np.testing.assert_array_equal(io.read_depth(tmp_path / "rgb.exr", key="G"), g)
    OpenEXR.File(header, {"R": r, "Z": z}).write(str(tmp_path / "rz.exr"))
    np.testing.assert_array_equal(io.read_depth(tmp_path / "rz.exr"), z)
    OpenEXR.File(header, {"A": r, "B": g}).write(str(tmp_path / "ab.exr"))
    with pytest.raises(DapError, match="key="):
        io.read_depth(tmp_path / "ab.exr")
    # a renderer's multi-layer file: its one <layer>.Z channel, beside colour layers
    OpenEXR.File(header, {"ViewLayer.Combined.R": r, "ViewLayer.Combined.G": g, "ViewLayer.Combined.B": g,
                          "ViewLayer.Depth.Z": z}).write(str(tmp_path / "layers.exr"))
    np.testing.assert_array_equal(io.read_depth(tmp_path / "layers.exr"), z)
    OpenEXR.File(header, {"a.Z": r, "b.Z": z}).write(str(tmp_path / "two_layers.exr"))
    with pytest.raises(DapError, match=r"\['a.Z', 'b.Z'\].*key="):  # two depth layers: which one is for the user
        io.read_depth(tmp_path / "two_layers.exr")


def test_broken_depth_files_are_unreadable(tmp_path, rng):
    io.write_depth(tmp_path / "d.npy", _depth(rng))
    data = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "d.npy").write_bytes(data[: len(data) // 2])
    (tmp_path / "d.exr").write_text("nope")
    (tmp_path / "d.npz").write_text("nope")
    (tmp_path / "d.bmp").write_text("nope")
    for name in ("d.npy", "d.exr", "d.npz", "d.bmp"):
        with pytest.raises(UnreadableFileError, match=name):
            io.read_depth(tmp_path / name)
    (tmp_path / "text.npy").write_text("not an array")  # numpy alone would call it a pickle: allow_pickle advice
    with pytest.raises(UnreadableFileError, match=r"text.npy: it is not a NumPy .npy file \(no NumPy header\); "
                                                   r"save depth maps with numpy.save\. Check") as err:
        io.read_depth(tmp_path / "text.npy")
    assert "pickle" not in str(err.value) and ".." not in str(err.value)
    np.save(tmp_path / "empty.npy", np.zeros((0, 0), np.float32))  # crashed resampling in dap eval
    with pytest.raises(UnreadableFileError, match=r"empty.npy holds an array of shape \(0, 0\), not an \(H, W\) "
                                                  "depth map: save the depth alone"):
        io.read_depth(tmp_path / "empty.npy")
    # a network's output saved as it came is its depth map; another shape is named without "re-download it" advice
    np.save(tmp_path / "nchw.npy", np.full((1, 1, 4, 8), 2.0, np.float32))
    assert io.read_depth(tmp_path / "nchw.npy").shape == (4, 8)
    np.save(tmp_path / "rgb.npy", np.ones((4, 8, 3), np.float32))
    with pytest.raises(UnreadableFileError, match=r"shape \(4, 8, 3\), not an \(H, W\) depth map") as err:
        io.read_depth(tmp_path / "rgb.npy")
    assert "re-download" not in str(err.value)


# ----------------------------------------------------------------------------------------------- colour


def test_colorize_depth():
    depth = np.linspace(1.0, 5.0, H * W, dtype=np.float32).reshape(H, W)
    depth[0, :3] = [0.0, np.nan, np.inf]
    rgb = io.colorize_depth(depth)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb[0, :3], 0)
    turbo = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_TURBO)[0, :, ::-1]
    np.testing.assert_array_equal(rgb[0, 3], turbo[0])  # nearest valid pixel = start of the map
    np.testing.assert_array_equal(rgb[-1, -1], turbo[1])  # farthest = end
    # an explicit range saturates values outside it
    clipped = io.colorize_depth(depth, min_depth=2.0, max_depth=3.0)
    np.testing.assert_array_equal(clipped[-1, -1], turbo[1])
    np.testing.assert_array_equal(clipped[0, 3], turbo[0])
    assert io.colorize_depth(np.zeros((H, W), np.float32)).max() == 0
    with pytest.raises(ValueError, match="the colour range min_depth 10 to max_depth 1 is not increasing"):
        io.colorize_depth(depth, min_depth=10, max_depth=1)  # was one colour for every pixel


def test_preview_range_leaves_out_a_few_outliers():
    """A room of 1-4 m with 0.5% of its pixels at 40 m (a lamp the model put far) and some invalid pixels: the
    preview's colour range is the room's, not the outliers'."""
    depth = np.linspace(1.0, 4.0, 200 * 100, dtype=np.float32).reshape(100, 200)
    depth.flat[::200] = 40.0  # 0.5%
    depth[0, :10] = [0.0, np.nan, np.inf, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    lo, hi = io.preview_range(depth)
    assert 1.0 <= lo < 1.1 and 3.9 < hi <= 4.0
    assert io.preview_range(np.zeros((4, 8), np.float32)) == (0.0, 1.0)


def test_depth_color_legend_is_below_the_image(tmp_path, rng):
    depth = _depth(rng)
    io.write_depth_color(tmp_path / "c.png", depth)
    io.write_depth_color(tmp_path / "plain.png", depth, legend=False)
    with Image.open(tmp_path / "c.png") as img:
        legend = np.asarray(img.convert("RGB"))
    with Image.open(tmp_path / "plain.png") as img:
        plain = np.asarray(img.convert("RGB"))
    assert plain.shape == (H, W, 3)
    assert legend.shape[0] > H and legend.shape[1] == W
    np.testing.assert_array_equal(legend[:H], plain)
    assert legend[H:].max() > 0  # something (bar, labels) is drawn in the strip


def test_depth_color_png_is_a_palette_image_of_the_colormap(tmp_path):
    """The preview is written as an 8-bit palette PNG (fast to encode): its colours are colorize_depth's up to one
    step of the colormap, with the same ends and black invalid pixels."""
    depth = np.linspace(1.0, 5.0, H * W, dtype=np.float32).reshape(H, W)
    depth[0, :3] = [0.0, np.nan, np.inf]
    io.write_depth_color(tmp_path / "c.png", depth, legend=False)
    with Image.open(tmp_path / "c.png") as img:
        assert img.mode == "P"
        rgb = np.asarray(img.convert("RGB")).astype(int)
    expected = io.colorize_depth(depth).astype(int)
    np.testing.assert_array_equal(rgb[0, :4], expected[0, :4])  # three invalid pixels black, then the near end
    np.testing.assert_array_equal(rgb[-1, -1], expected[-1, -1])  # the far end
    assert np.abs(rgb - expected).max() <= 8 and np.abs(rgb - expected).mean() < 1.0


def test_mask_and_normals_png(tmp_path):
    mask = np.zeros((H, W), bool)
    mask[:, : W // 2] = True
    io.write_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), np.where(mask, 255, 0))
    normals = np.zeros((2, 2, 3), np.float32)
    normals[0, 0] = [1, 0, 0]
    normals[0, 1] = [0, -1, 0]
    normals[1, 0] = [0, 0, 1]
    io.write_normals_png(tmp_path / "n.png", normals)
    with Image.open(tmp_path / "n.png") as img:
        out = np.asarray(img)
    np.testing.assert_array_equal(out[0, 0], [255, 128, 128])
    np.testing.assert_array_equal(out[0, 1], [128, 0, 128])
    np.testing.assert_array_equal(out[1, 0], [128, 128, 255])
    np.testing.assert_array_equal(out[1, 1], [0, 0, 0])


# ----------------------------------------------------------------------------------------------- point clouds


def _ply_vertices(path) -> np.ndarray:
    """The vertex table of a PLY file as another tool parses it (trimesh, whose public objects drop normals)."""
    return trimesh.load(path, file_type="ply", process=False).metadata["_ply_raw"]["vertex"]["data"]


def _columns(vertex: np.ndarray, *names: str) -> np.ndarray:
    return np.stack([vertex[n] for n in names], axis=1)


def test_ply_round_trip_is_exact(tmp_path, rng):
    n = 100
    points = rng.normal(size=(n, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    normals = rng.normal(size=(n, 3)).astype(np.float32)
    io.write_ply(tmp_path / "p.ply", points, colors, normals)
    assert b"format binary_little_endian 1.0" in (tmp_path / "p.ply").read_bytes()[:100]
    vertex = _ply_vertices(tmp_path / "p.ply")
    assert vertex.dtype.names == ("x", "y", "z", "nx", "ny", "nz", "red", "green", "blue")
    np.testing.assert_array_equal(_columns(vertex, "x", "y", "z"), points)
    np.testing.assert_array_equal(_columns(vertex, "red", "green", "blue"), colors)
    np.testing.assert_array_equal(_columns(vertex, "nx", "ny", "nz"), normals)
    assert vertex["x"].dtype == np.float32 and vertex["red"].dtype == np.uint8
    assert len(trimesh.load(tmp_path / "p.ply").vertices) == n


def test_ply_optional_fields_and_float_colors(tmp_path, rng):
    points = rng.normal(size=(10, 3)).astype(np.float32)
    io.write_ply(tmp_path / "bare.ply", points)
    vertex = _ply_vertices(tmp_path / "bare.ply")
    assert vertex.dtype.names == ("x", "y", "z")
    np.testing.assert_array_equal(_columns(vertex, "x", "y", "z"), points)
    io.write_ply(tmp_path / "fc.ply", points, colors=np.full((10, 3), 0.5, np.float32))
    np.testing.assert_array_equal(_columns(_ply_vertices(tmp_path / "fc.ply"), "red", "green", "blue"), 128)
    with pytest.raises(ValueError, match="normals"):
        io.write_ply(tmp_path / "x.ply", points, normals=np.zeros((9, 3)))
    # colours in 0-255 held as floats are refused (they all came out saturated), an overshoot past 1 is clipped
    colors = np.full((10, 3), 128.0)
    colors[0] = 0.0
    with pytest.raises(ValueError, match=r"colors are floats from 0 to 128; floats are taken as 0 to 1: divide"):
        io.write_ply(tmp_path / "x.ply", points, colors=colors)
    with pytest.raises(ValueError, match=r"rgb are floats from 128 to 128"):
        io.write_rgb(tmp_path / "x.png", np.full((2, 4, 3), 128.0))
    io.write_ply(tmp_path / "x.ply", points, colors=np.full((10, 3), 1.1))
    assert np.all(_columns(_ply_vertices(tmp_path / "x.ply"), "red", "green", "blue") == 255)
    # non-finite points are refused, in PLY and GLB alike (a NaN bound makes a GLB that browsers reject)
    points[3, 1] = np.nan
    for name, write in (("x.ply", io.write_ply), ("x.glb", io.write_glb)):
        with pytest.raises(ValueError, match="1 of 10 points are NaN or infinite; drop them first"):
            write(tmp_path / name, points)
    assert not (tmp_path / "x.glb").exists()


def test_glb_loads_back(tmp_path, rng):
    n = 50
    points = rng.normal(size=(n, 3)).astype(np.float32)
    io.write_glb(tmp_path / "p.glb", points, colors=rng.integers(0, 256, (n, 3), dtype=np.uint8))
    assert (tmp_path / "p.glb").read_bytes()[:4] == b"glTF"
    scene = trimesh.load(tmp_path / "p.glb")
    vertices = np.concatenate([np.asarray(g.vertices) for g in scene.geometry.values()])
    assert len(vertices) == n
    y_up = points * np.array([1, -1, -1], np.float32)  # glTF's frame: y up, camera looking along -z
    np.testing.assert_allclose(np.sort(vertices, axis=0), np.sort(y_up, axis=0), atol=1e-6)
    assert b"KHR_materials_unlit" in (tmp_path / "p.glb").read_bytes()  # points have no normals to light
    with pytest.raises(ValueError, match="no points to write to e.glb: glTF has no empty point cloud"):
        io.write_glb(tmp_path / "e.glb", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="write_glb writes binary glTF; give .*p.gltf a .glb extension"):
        io.write_glb(tmp_path / "p.gltf", points)  # a .gltf is JSON: binary there was unreadable


def test_writes_never_leave_partial_files(tmp_path, rng, monkeypatch):
    io.write_depth(tmp_path / "d.npy", np.ones((H, W), np.float32))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        io.write_depth(tmp_path / "d.npy", _depth(rng))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), 1.0)
    assert sorted(os.listdir(tmp_path)) == ["d.npy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean write raises no warning
        io.write_depth(tmp_path / "d.png", _depth(rng), scale=1 / 1000)


def _cut_video(tmp_path, frames: int = 20):
    """A 20-frame MJPG AVI and the same file cut to 70 % of its bytes (a copy interrupted mid-way)."""
    full, cut = tmp_path / "full.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 5, (W, H))
    for i in range(frames):
        writer.write(np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8))
    writer.release()
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    return full, cut


def test_video_cut_short_raises_after_its_good_frames(tmp_path):
    full, cut = _cut_video(tmp_path)
    assert sum(1 for _ in io.iter_video_frames(full)) == 20
    assert [i for i, _, _ in io.sample_video_frames(full, every_s=1.0)] == [0, 5, 10, 15]
    got = []
    with pytest.raises(UnreadableFileError, match=rf"{cut}: frame (\d+) of 20 cannot be decoded") as e:
        got.extend(io.iter_video_frames(cut))
    assert 0 < len(got) < 20 and f"frame {len(got)} of 20" in str(e.value)  # the first frame that failed
    with pytest.raises(UnreadableFileError, match=rf"{cut}: frame {len(got)} of 20"):
        list(io.sample_video_frames(cut, every_s=1.0))


def test_a_float_colour_tiff_is_read_through_opencv(tmp_path):
    rgb = np.random.default_rng(0).random((32, 64, 3)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "f.tif"), rgb[..., ::-1])  # OpenCV writes BGR; Pillow cannot open float RGB TIFFs
    np.testing.assert_array_equal(io.read_rgb(tmp_path / "f.tif"), rgb)
    cv2.imwrite(str(tmp_path / "hdr.tif"), rgb * 40)
    with pytest.raises(DapError, match=r"hdr.tif \(a float TIFF\): float pixels must be in \[0, 1\], got .*; save it"):
        io.read_rgb(tmp_path / "hdr.tif")


def test_a_float_grey_tiff_is_read_only_in_0_to_1(tmp_path):
    from PIL import Image

    grey = np.linspace(0, 1, 32 * 64, dtype=np.float32).reshape(32, 64)
    Image.fromarray(grey, mode="F").save(tmp_path / "unit.tif")
    np.testing.assert_allclose(io.read_rgb(tmp_path / "unit.tif")[..., 1], grey, atol=1e-7)
    Image.fromarray(grey * 255, mode="F").save(tmp_path / "bytes.tif")  # 0-255 values: clipped, a white image
    with pytest.raises(DapError, match=r"bytes.tif \(a 32-bit float grey image\): float pixels must be in \[0, 1\], "
                                       r"got 0..255; save it as an 8- or 16-bit image"):
        io.read_rgb(tmp_path / "bytes.tif")


def test_float_pixels_follow_one_rule_in_files_pil_images_and_arrays(tmp_path):
    """NaN and inf pixels: 0 with a warning in arrays, 0 silently (NaN) or an error (inf) in float files and PIL
    images; float rounding past 1 (1.0000001) was refused with a range that printed as "0..1"."""
    from PIL import Image

    from dap.inference import to_rgb

    grey = np.full((32, 64), 0.5, np.float32)
    grey[0, :3] = [np.nan, np.inf, -np.inf]
    grey[1, 0] = 1.0000001
    Image.fromarray(grey, mode="F").save(tmp_path / "f.tif")
    cv2.imwrite(str(tmp_path / "rgb.tif"), np.repeat(grey[..., None], 3, axis=2))
    for name, image in (("f.tif", tmp_path / "f.tif"), ("rgb.tif", tmp_path / "rgb.tif"),
                        ("input image", Image.open(tmp_path / "f.tif")), ("input image", grey)):
        with pytest.warns(InputWarning, match=f"{name}: 3 of its pixels are NaN or infinite; they are set to 0"):
            rgb = to_rgb(image)
        assert (rgb[0, :3] == 0).all() and rgb[1, 0, 0] == 1.0 and rgb.max() == 1.0, name
    with pytest.raises(DapError, match=r"input image: float pixels must be in \[0, 1\], got 1.01..1.01; divide 0-255"):
        to_rgb(np.full((32, 64, 3), 1.01, np.float32))


@pytest.mark.parametrize("name, says", [
    ("pano.heic", "a HEIF/AVIF image, which this install does not decode: convert it to JPEG or PNG first"),
    ("IMG_0001.DNG", "a camera raw file: develop and export it as JPEG, PNG or TIFF first"),
    ("IMG_20260101.insp", "an Insta360 photo, the camera's two unstitched fisheye images: export an equirectangular"),
])
def test_panorama_formats_we_do_not_decode_say_how_to_convert_them(tmp_path, name, says):
    (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypheic not decodable here")
    with pytest.raises(UnreadableFileError, match=f"cannot read .*{name}: it is {says}"):
        io.read_rgb(tmp_path / name)
    write_rgb_ok = tmp_path / "really_a_jpeg.heic"  # a misnamed file that decodes is read as what it is
    io.write_rgb(tmp_path / "x.jpg", np.full((H, W, 3), 0.5, np.float32))
    (tmp_path / "x.jpg").rename(write_rgb_ok)
    assert io.read_rgb(write_rgb_ok).shape == (H, W, 3)


def test_big_endian_16_bit_grey_reads_as_little_endian_does(tmp_path):
    """A Motorola-order 16-bit grey TIFF ('I;16B') was refused as "wrong mode ... re-download it", as a PIL image a
    ValueError traceback, and its numpy form ('>u2') as an unsupported pixel type."""
    grey = (np.arange(64 * 128, dtype=np.uint16).reshape(64, 128) * 7) % 65535
    big = Image.frombytes("I;16B", (128, 64), grey.astype(">u2").tobytes())
    big.save(tmp_path / "be.tif")
    assert Image.open(tmp_path / "be.tif").mode == "I;16B"
    want = np.repeat((grey / 65535.0).astype(np.float32)[..., None], 3, axis=2)
    for image in (tmp_path / "be.tif", big, grey.astype(">u2")):
        np.testing.assert_allclose(to_rgb(image), want, atol=1e-7)
    np.testing.assert_allclose(io.read_rgb(tmp_path / "be.tif"), want, atol=1e-7)


def test_transparency_is_read_by_mode_not_band_name():
    """Lab's bands are L, A, B: a Lab image was "63% transparent"; premultiplied alpha ("La", "RGBa", band "a") was
    not looked at."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8))
    assert io.transparency_note(rgb.convert("LAB")) is None
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(32)[:, None] < 16, 0, 255).astype(np.uint8).repeat(64, 1)))
    for image in (rgba, rgba.convert("RGBa"), rgba.convert("LA"), rgba.convert("LA").convert("La")):
        assert "50% of it is transparent" in io.transparency_note(image), image.mode


def test_a_jpeg_with_a_preview_is_not_called_an_animation(tmp_path):
    """An MPO JPEG (a preview or an HDR gain map beside the photo) was "2 frames (an animation or a multi-page
    image)", with advice to save the frames apart."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8))
    photo.save(tmp_path / "mpo.jpg", format="MPO", save_all=True, append_images=[photo.resize((32, 16))])
    assert Image.open(tmp_path / "mpo.jpg").format == "MPO" and Image.open(tmp_path / "mpo.jpg").n_frames == 2
    rgb, notes = io.read_rgb_notes(tmp_path / "mpo.jpg")
    assert rgb.shape == (64, 128, 3) and notes == []


def _rotation_tagged(path: Path, degrees: int) -> Path:
    """An MP4 of 2:1 frames (W x H, grey level 40 x its number, a white band on top) whose track header says to turn
    it."""
    import struct

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (W, H))
    for i in range(3):
        frame = np.full((H, W, 3), 40 * i, np.uint8)
        frame[:H // 4] = 255
        writer.write(frame)
    writer.release()
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")  # the display matrix after version/flags, times, track id, duration, layer...
    v1 = data[tkhd + 4] == 1
    at = tkhd + 8 + (16 if v1 else 8) + 8 + (8 if v1 else 4) + 16
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    data[at:at + 36] = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


def test_a_video_tagged_to_turn_its_2_to_1_frames_by_90_degrees_is_read_as_stored(tmp_path):
    """OpenCV turned such frames to 1:2 and the video failed with "rotate it upright", while its frames are upright:
    the tag is wrong, as for images. A turn by 180 degrees is applied."""
    for degrees, band in ((90, "top"), (270, "top"), (180, "bottom")):
        frames = list(io.iter_video_frames(_rotation_tagged(tmp_path / f"r{degrees}.mp4", degrees)))
        assert [f.shape for f in frames] == [(H, W, 3)] * 3, degrees
        assert [round(float(f[H // 2].mean()) * 255 / 40) for f in frames] == [0, 1, 2]
        top, bottom = (float(frames[0][rows].mean()) for rows in (slice(0, 4), slice(H - 4, H)))
        assert (top > 0.9 and bottom < 0.1) if band == "top" else (bottom > 0.9 and top < 0.1), degrees
        assert [i for i, _, _ in io.sample_video_frames(tmp_path / f"r{degrees}.mp4", 0.4)] == [0, 2]


def test_a_video_trimmed_without_reencoding_is_whole(tmp_path):
    """A trim that keeps the samples and shows fewer by an edit list (QuickTime, iOS, ffmpeg -c copy) failed as "frame 7
    of 10 cannot be decoded (the video is cut short or corrupt)" after its 7 frames: OpenCV counts the samples."""
    import struct

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (W, H))
    for i in range(10):
        writer.write(np.full((H, W, 3), 20 * i, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    elst, mdhd = data.find(b"elst"), data.find(b"mdhd")
    assert data[elst + 4] == 0 and data[mdhd + 4] == 0  # version 0 boxes
    media_rate = struct.unpack(">I", data[mdhd + 16:mdhd + 20])[0]
    duration, start = struct.unpack(">Ii", data[elst + 12:elst + 20])
    data[elst + 12:elst + 20] = struct.pack(">Ii", duration * 7 // 10, start + 3 * media_rate // 5)  # frames 3-9
    path.write_bytes(bytes(data))
    assert len(list(io.iter_video_frames(path))) == 7
    assert [i for i, _, _ in io.sample_video_frames(path, 0.4)] == [0, 2, 4, 6]
    cut = tmp_path / "cut.avi"  # a file cut short still fails
    writer = cv2.VideoWriter(str(cut), cv2.VideoWriter_fourcc(*"MJPG"), 5, (W, H))
    for i in range(10):
        writer.write(np.random.default_rng(i).integers(0, 255, (H, W, 3), np.uint8))
    writer.release()
    whole = cut.read_bytes()
    cut.write_bytes(whole[:len(whole) * 6 // 10])
    with pytest.raises(UnreadableFileError, match="of 10 cannot be decoded"):
        list(io.iter_video_frames(cut))


def test_a_depth_png_written_by_dap_is_no_input_panorama(tmp_path):
    """`dap predict pano.depth.png` predicted our own 16-bit depth map as a grey panorama (with a "blank" warning);
    our depth EXR was refused."""
    io.write_depth(tmp_path / "pano.depth.png", np.full((32, 64), 2.0, np.float32), scale=1 / 512)
    with pytest.raises(UnreadableFileError, match=r"pano.depth.png as a panorama: it is a depth map .*'dap:metres_per_"
                                                  r"unit'.* is no input"):
        io.read_rgb(tmp_path / "pano.depth.png")


def test_depth_size_reads_headers_as_read_depth_reads_the_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 1, 4, 8), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 8, 3), np.float32))
    io.write_depth(tmp_path / "c.png", np.ones((6, 12), np.float32), scale=0.001)
    (tmp_path / "d.npy").write_bytes(b"junk")
    assert io.depth_size(tmp_path / "a.npy") == (8, 4) == io.read_depth(tmp_path / "a.npy").shape[::-1]
    assert io.depth_size(tmp_path / "b.npy") is None  # read_depth refuses it, naming the shape
    assert io.depth_size(tmp_path / "c.png") == (12, 6)
    assert io.depth_size(tmp_path / "d.npy") is None
