"""Benchmark loaders on tiny fixtures written in each dataset's real on-disk encoding."""

import math
import shutil

import cv2
import numpy as np
import OpenEXR
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dap.data.datasets import (
    DATASETS,
    Deep360,
    FolderDataset,
    Matterport3D,
    Stanford2D3D,
    Structured3D,
    cassini_to_erp,
    get_dataset,
)
from dap.errors import DatasetLayoutError, DepthUnitError
from dap.geometry import erp_lonlat
from dap.io import write_depth, write_rgb

H, W = 8, 16


def png16(path, raw):
    """A raw 16-bit single-channel PNG, as the datasets ship it (no scale metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(raw, np.uint16)).save(path)


def rgb_png(path, h=H, w=W, value=0.5):
    write_rgb(path, np.full((h, w, 3), value, np.float32))


# ---------------------------------------------------------------------------------------- Stanford2D3D
def make_stanford(root):
    for area, k in (("area_5a", 1), ("area_5b", 2), ("area_1", 3)):
        stem = f"camera_{k}abc_office_{k}_frame_equirectangular_domain"
        rgb_png(root / area / "pano" / "rgb" / f"{stem}_rgb.png")
        raw = np.full((H, W), 512 * k, np.uint16)  # k metres at 1/512 m per unit
        raw[0, 0] = 65535  # no data
        raw[1, 1] = 0
        raw[2, 2] = 256  # 0.5 m
        png16(root / area / "pano" / "depth" / f"{stem}_depth.png", raw)


def test_stanford_test_split_units_and_invalid(tmp_path):
    make_stanford(tmp_path)
    ds = Stanford2D3D(tmp_path)
    assert len(ds) == 2 and ds.expected_size == 373  # area_1 is a training area
    s = ds[0]
    assert s["name"] == "area_5a/camera_1abc_office_1_frame_equirectangular_domain"
    assert s["rgb"].shape == (H, W, 3) and s["rgb"].dtype == np.float32
    d = s["depth"]
    assert d.dtype == np.float32 and d[0, 0] == 0.0 and d[1, 1] == 0.0 and d[2, 2] == 0.5 and d[3, 3] == 1.0
    assert ds[1]["depth"][3, 3] == 2.0
    assert len(Stanford2D3D(tmp_path, "all")) == 3
    # a copy that upper-cased the suffix (_rgb.PNG, _depth.PNG) keeps its panoramas
    for kind in ("rgb", "depth"):
        for p in (tmp_path / "area_5b" / "pano" / kind).iterdir():
            p.rename(p.with_suffix(".PNG"))
    upper = Stanford2D3D(tmp_path)
    assert len(upper) == 2 and upper[1]["name"] == "area_5b/camera_2abc_office_2_frame_equirectangular_domain"
    assert upper[1]["depth"][3, 3] == 2.0
    for kind in ("rgb", "depth"):
        for p in (tmp_path / "area_5b" / "pano" / kind).iterdir():
            p.rename(p.with_suffix(".png"))
    with pytest.raises(DatasetLayoutError, match="area_2/pano/rgb is missing"):
        Stanford2D3D(tmp_path, "train")  # the fixture has only one of the five training areas
    # UniFuse-style split file with 'rgb depth' lines
    (tmp_path / "list.txt").write_text(
        "area_5b/pano/rgb/camera_2abc_office_2_frame_equirectangular_domain_rgb.png "
        "area_5b/pano/depth/camera_2abc_office_2_frame_equirectangular_domain_depth.png\n"
    )
    listed = Stanford2D3D(tmp_path, split_file=tmp_path / "list.txt")
    assert [it.name for it in listed.items] == ["area_5b/camera_2abc_office_2_frame_equirectangular_domain"]
    # UniFuse's own list names other folders (rgb_/): the same name (was area_5b/rgb_/<stem>, so saved predictions
    # named as the docs say were not found)
    unifuse = tmp_path / "area_5b" / "rgb_"
    unifuse.mkdir()
    shutil.copy(tmp_path / "area_5b/pano/rgb/camera_2abc_office_2_frame_equirectangular_domain_rgb.png", unifuse)
    (tmp_path / "unifuse.txt").write_text(
        "area_5b/rgb_/camera_2abc_office_2_frame_equirectangular_domain_rgb.png "
        "area_5b/pano/depth/camera_2abc_office_2_frame_equirectangular_domain_depth.png\n")
    assert [it.name for it in Stanford2D3D(tmp_path, split_file="unifuse.txt").items] == [
        "area_5b/camera_2abc_office_2_frame_equirectangular_domain"]


def test_stanford_depth_in_metres_is_read_in_metres(tmp_path):
    """Depth listed as .exr or .npy (3D60's Stanford renders are EXR in metres) was divided by 512 as the PNGs are:
    AbsRel 511 for a perfect prediction, exit 0."""
    rgb_png(tmp_path / "area_5a" / "rgb" / "x_rgb.png")
    write_exr(tmp_path / "area_5a" / "depth" / "x_depth.exr", np.full((H, W), 2.5, np.float32))
    write_depth(tmp_path / "area_5a" / "depth" / "y_depth.npy", np.full((H, W), 1.5, np.float32))
    rgb_png(tmp_path / "area_5a" / "rgb" / "y_rgb.png")
    (tmp_path / "list.txt").write_text("area_5a/rgb/x_rgb.png area_5a/depth/x_depth.exr\n"
                                       "area_5a/rgb/y_rgb.png area_5a/depth/y_depth.npy\n")
    ds = Stanford2D3D(tmp_path, split_file="list.txt")
    assert ds[0]["depth"][3, 3] == 2.5 and ds[1]["depth"][3, 3] == 1.5
    # an absolute path that exists was read under the root ("2 listed files are missing, e.g. <root>/<root>/...")
    (tmp_path / "abs.txt").write_text(f"{tmp_path}/area_5a/rgb/x_rgb.png /area_5a/depth/x_depth.exr\n")
    assert Stanford2D3D(tmp_path, split_file="abs.txt")[0]["depth"][3, 3] == 2.5


def test_stanford_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="area_5a/pano/rgb is missing") as e:
        Stanford2D3D(tmp_path)
    assert "area_5a/pano/depth/camera_<uuid>" in str(e.value)  # shows the expected layout
    assert "or use the 'folder' loader with a manifest" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError) as e:  # the folder loader itself is not told to use the folder loader
        FolderDataset(tmp_path / "empty")
    assert "or give the folder a manifest" in str(e.value) and "'folder' loader" not in str(e.value)
    make_stanford(tmp_path)
    next((tmp_path / "area_5b" / "pano" / "depth").iterdir()).unlink()
    with pytest.raises(DatasetLayoutError, match="1 listed files are missing") as e:
        Stanford2D3D(tmp_path)
    assert "camera_2abc_office_2_frame_equirectangular_domain_depth.png" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        Stanford2D3D(tmp_path / "nope")


# ---------------------------------------------------------------------------------------- Matterport3D
def write_exr(path, depth):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Y": np.asarray(depth, np.float32)}).write(str(path))


def test_matterport_stitched_png_and_pano3d_exr(tmp_path):
    raw = np.full((H, W), 6000, np.uint16)  # 1.5 m at 1/4000 m per unit
    raw[0, :] = 0  # no data
    rgb_png(tmp_path / "scanA" / "p1_rgb.png")
    png16(tmp_path / "scanA" / "p1_depth.png", raw)
    exr = np.full((H, W), 2.25, np.float32)
    exr[1, :] = np.inf  # Pano3D marks holes with inf
    rgb_png(tmp_path / "bldg" / "v1_color_0_Left_Down_0.0.png")
    write_exr(tmp_path / "bldg" / "v1_depth_0_Left_Down_0.0.exr", exr)
    (tmp_path / "matterport3d_test.txt").write_text(
        "scanA/p1_rgb.png scanA/p1_depth.png\nbldg/v1_color_0_Left_Down_0.0.png bldg/v1_depth_0_Left_Down_0.0.exr\n"
    )
    ds = Matterport3D(tmp_path)
    assert len(ds) == 2 and ds.expected_size == 2014
    a, b = ds[0], ds[1]
    assert a["name"] == "scanA/p1_rgb"
    assert np.all(a["depth"][0] == 0) and np.all(a["depth"][1:] == 1.5)
    assert np.all(b["depth"][1] == 0) and np.all(b["depth"][0] == 2.25) and np.isfinite(b["depth"]).all()
    # a list made on Windows, with a comment; found under the root when given by its name alone
    (tmp_path / "win.txt").write_text("# rgb depth\r\nscanA\\p1_rgb.png scanA\\p1_depth.png\r\n")
    assert [it.name for it in Matterport3D(tmp_path, split_file="win.txt").items] == ["scanA/p1_rgb"]
    # without a split file: Pano3D renders are paired by name, through linked folders, never macOS's ._ files
    (tmp_path / "matterport3d_test.txt").unlink()
    (tmp_path / "bldg" / "._v1_depth_0_Left_Down_0.0.exr").write_bytes(b"\x00\x05\x16\x07")
    elsewhere = tmp_path.parent / f"{tmp_path.name}_other_disk"
    rgb_png(elsewhere / "bldg2" / "v2_color_0_Left_Down_0.0.png")
    write_exr(elsewhere / "bldg2" / "v2_depth_0_Left_Down_0.0.exr", exr)
    (tmp_path / "bldg2").symlink_to(elsewhere / "bldg2")
    (tmp_path / "bldg2" / "loop").symlink_to(tmp_path)  # a link back up the tree is walked once
    pano3d = Matterport3D(tmp_path)
    assert [it.rgb.name for it in pano3d.items] == ["v1_color_0_Left_Down_0.0.png", "v2_color_0_Left_Down_0.0.png"]
    assert np.array_equal(pano3d[0]["depth"], b["depth"])
    # every render found is no test split: recorded as all (was "test", or any name asked, all scored alike)
    assert pano3d.split == "all" and pano3d.expected_size is None
    with pytest.raises(DatasetLayoutError, match="unknown split 'no_such_split': a folder of Pano3D renders"):
        Matterport3D(tmp_path, "no_such_split")


def test_matterport_layout_error_names_split_file(tmp_path):
    with pytest.raises(DatasetLayoutError, match="matterport3d_test.txt") as e:
        Matterport3D(tmp_path)
    assert "Pano3D" in str(e.value)


# --------------------------------------------------------------------------------------------- Deep360
def cassini_rays(hc, wc):
    """Rays of Cassini pixel centres, derived independently: column angle a about the x axis' pole,
    row angle b around it (0 forward, pi/2 down)."""
    a = (np.arange(wc) + 0.5) / wc * math.pi - math.pi / 2
    b = (np.arange(hc) + 0.5) / hc * 2 * math.pi - math.pi
    a, b = np.meshgrid(a, b)  # (hc, wc)
    return np.stack([np.sin(a), np.cos(a) * np.sin(b), np.cos(a) * np.cos(b)], -1)


def erp_rays_by_hand(h):
    lon, lat = (t.double().numpy() for t in erp_lonlat(h, 2 * h))
    return np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)


def field(r):
    """A smooth function on the sphere that tells every direction apart from its mirror images."""
    x, y, z = r[..., 0], r[..., 1], r[..., 2]
    return 5 + 2 * x + 1.5 * y + z + 0.5 * x * z


def test_cassini_to_erp_matches_function_rendered_in_both_projections():
    hc, wc = 128, 64  # portrait, like Deep360's 1024 x 512
    cas = field(cassini_rays(hc, wc)).astype(np.float32)
    want = field(erp_rays_by_hand(wc))
    got = cassini_to_erp(cas)
    assert got.shape == (64, 128) and got.dtype == np.float32
    assert np.abs(got - want).max() < 0.005  # bilinear resampling error only (measured 0.0014)
    near = cassini_to_erp(cas, mode="nearest")
    assert np.abs(near - want).max() < 0.15  # measured 0.095
    # the same picture read with the wrong orientation (upside down) is far off
    assert np.abs(cassini_to_erp(cas[::-1].copy()) - want).max() > 1.0
    # channels are carried along
    rgb = np.stack([cas, 2 * cas, 3 * cas], -1)
    assert np.allclose(cassini_to_erp(rgb)[..., 2], 3 * got, atol=1e-4)


def test_deep360_loader_converts_cassini_npz(tmp_path):
    hc, wc = 2 * W, W  # Cassini is portrait: ERP comes out (W, 2W)
    depth = field(cassini_rays(hc, wc)).astype(np.float32)
    depth[:, :2] = 0  # invalid strip at the x = -1 pole (left of the Cassini image)
    for ep in ("ep1_500frames", "ep6_500frames"):
        d = tmp_path / ep / "testing"
        (d / "depth").mkdir(parents=True)
        np.savez(d / "depth" / "000001_depth.npz", depth)  # stored as 'arr_0', like Deep360
        write_rgb(d / "rgb" / "000001_12_rgb1.png", np.full((hc, wc, 3), 0.25, np.float32))
    ds = Deep360(tmp_path)
    assert len(ds) == 2 and ds.expected_size == 600
    testing = Deep360(tmp_path, "testing")  # the folder's name for it: the same split, recorded as test
    assert testing.split == "test" and testing.expected_size == 600
    s = ds[0]
    assert s["name"] == "ep1_500frames/000001"
    assert s["rgb"].shape == (W, 2 * W, 3) and np.allclose(s["rgb"], 0.25, atol=1 / 255)
    d = s["depth"]
    assert d.shape == (W, 2 * W)
    rays = erp_rays_by_hand(W)
    far_from_pole = rays[..., 0] > -0.5
    assert np.abs(d - field(rays))[far_from_pole].max() < 0.6  # nearest lookup at 16 x 32
    assert np.all(d[rays[..., 0] < -0.99] == 0)  # the invalid pole stays invalid, never blended
    with pytest.raises(DatasetLayoutError, match="ep1_500frames/validation/depth is missing"):
        Deep360(tmp_path, "val")
    # an equirectangular (landscape) copy is not read as Cassini
    write_rgb(tmp_path / "ep1_500frames" / "testing" / "rgb" / "000001_12_rgb1.png", np.zeros((wc, hc, 3)))
    with pytest.raises(DatasetLayoutError, match=r"000001_12_rgb1.png is 32x16; Deep360 panoramas are Cassini"):
        Deep360(tmp_path)[0]


# ---------------------------------------------------------------------------------------- Structured3D
def test_structured3d_split_by_scene_and_mm(tmp_path):
    for scene in ("scene_00001", "scene_03250", "scene_03499"):
        full = tmp_path / scene / "2D_rendering" / "485142" / "panorama" / "full"
        rgb_png(full / "rgb_rawlight.png")
        raw = np.full((H, W), 2500, np.uint16)  # 2.5 m
        raw[:, 0] = 0
        png16(full / "depth.png", raw)
    ds = Structured3D(tmp_path)
    assert [it.name for it in ds.items] == ["scene_03250/485142", "scene_03499/485142"]
    d = ds[0]["depth"]
    assert np.all(d[:, 0] == 0) and np.all(d[:, 1:] == 2.5)
    assert len(Structured3D(tmp_path, "train")) == 1 and len(Structured3D(tmp_path, "all")) == 3
    with pytest.raises(DatasetLayoutError, match="no scene_XXXXX folders"):
        Structured3D(tmp_path / "scene_00001")
    # a depth PNG that says its own unit (written by dap.io in centimetres) is not read at the dataset's millimetres
    write_depth(tmp_path / "scene_03250" / "2D_rendering" / "485142" / "panorama" / "full" / "depth.png",
                np.full((H, W), 2.5, np.float32), scale=0.01)
    with pytest.raises(DepthUnitError, match=r"depth.png says its unit is 0.01 m .* being read at 0.001 m per unit"):
        ds[0]


# ------------------------------------------------------------------------------------ folder / manifest
def test_manifest_csv_and_parquet(tmp_path):
    rgb_png(tmp_path / "img" / "a.jpg")
    rgb_png(tmp_path / "img" / "b.png")
    png16(tmp_path / "d" / "a.png", np.full((H, W), 300, np.uint16))  # 3 m at 1/100 m per unit
    write_depth(tmp_path / "d" / "b.exr", np.full((H, W), 7.0, np.float32))
    (tmp_path / "manifest.csv").write_text(
        "rgb,depth,metres_per_unit,split\nimg/a.jpg,d/a.png,0.01,test\nimg/b.png,d/b.exr,,train\n"
    )
    ds = FolderDataset(tmp_path)
    assert [it.name for it in ds.items] == ["img/a"] and np.all(ds[0]["depth"] == 3.0)
    assert len(FolderDataset(tmp_path, "all")) == 2
    (tmp_path / "manifest.csv").unlink()
    pq.write_table(
        pa.table({"rgb": ["img/b.png"], "depth": ["d/b.exr"], "name": ["bee"]}), tmp_path / "manifest.parquet"
    )
    ds = get_dataset("folder", tmp_path)
    assert ds[0]["name"] == "bee" and np.all(ds[0]["depth"] == 7.0)


def test_manifests_as_spreadsheets_write_them_or_with_mistakes(tmp_path):
    rgb_png(tmp_path / "img" / "a.png")
    rgb_png(tmp_path / "img" / "a.jpg")
    write_depth(tmp_path / "d" / "a.npy", np.full((H, W), 3.0, np.float32))
    manifest = tmp_path / "manifest.csv"
    # Excel's "CSV UTF-8" starts with a byte-order mark; a trailing line of commas is a blank spreadsheet row
    manifest.write_bytes("\ufeffrgb,depth,metres_per_unit\nimg/a.png,d/a.npy,\n,,\n".encode())
    assert [it.name for it in FolderDataset(tmp_path).items] == ["img/a"]
    for body, problem in [
        ("img/a.png,d/a.npy,abc\n", "row 2 of .*manifest.csv: metres_per_unit must be a positive number"),
        ("img/a.png,d/a.npy,0\n", "metres_per_unit must be a positive number .* got '0'"),
        ("img/a.png,,\n", "row 2 of the manifest manifest.csv has an empty rgb or depth cell"),
        ("img/a.png,d/a.npy,\nimg/a.jpg,d/a.npy,\n", r"two samples share the name 'img/a' \(.*a.png and .*a.jpg\)"),
    ]:
        manifest.write_text("rgb,depth,metres_per_unit\n" + body)
        with pytest.raises(DatasetLayoutError, match=problem):
            FolderDataset(tmp_path)
    manifest.write_bytes("rgb,depth\nimg/caf\xe9.png,d/a.npy\n".encode("latin-1"))
    with pytest.raises(DatasetLayoutError, match="is not UTF-8 text"):
        FolderDataset(tmp_path)
    manifest.unlink()
    (tmp_path / "manifest.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(DatasetLayoutError, match="cannot read the manifest .* as Parquet"):
        FolderDataset(tmp_path)


def test_split_files_that_are_missing_or_of_the_wrong_kind(tmp_path):
    make_stanford(tmp_path)
    with pytest.raises(DatasetLayoutError, match="the split file .*nope.txt does not exist"):
        Stanford2D3D(tmp_path, split_file=tmp_path / "nope.txt")
    (tmp_path / "one.txt").write_text("# rgb only\narea_5b/pano/rgb/x_rgb.png\n")
    with pytest.raises(DatasetLayoutError, match="line 2 of the split file .* holds one path"):
        Matterport3D(tmp_path, split_file=tmp_path / "one.txt")
    (tmp_path / "utf16.txt").write_text("a b\n", encoding="utf-16")
    with pytest.raises(DatasetLayoutError, match="is not UTF-8 text"):
        Stanford2D3D(tmp_path, split_file=tmp_path / "utf16.txt")


def test_folder_without_manifest_and_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no manifest.csv") as e:
        FolderDataset(tmp_path)
    assert "metres_per_unit" in str(e.value)
    (tmp_path / "manifest.csv").write_text("image,depth\nx.png,y.png\n")
    with pytest.raises(DatasetLayoutError, match=r"has columns \['depth', 'image'\]; it needs rgb"):
        FolderDataset(tmp_path)
    (tmp_path / "manifest.csv").write_text("rgb,depth,split\nx.png,y.npy,val\nz.png,w.npy,train\n")
    with pytest.raises(DatasetLayoutError, match="no rows of split 'test'; its splits are 'train', 'val'"):
        FolderDataset(tmp_path)  # was: "no samples found for split 'test'"
    # a row whose split is almost the one asked for was left out without a word, beside rows that matched
    for cell, problem in (("TEST", "the split 'TEST', not 'test' .splits are case-sensitive."), ("", "no split")):
        (tmp_path / "manifest.csv").write_text(f"rgb,depth,split\nx.png,y.npy,test\nz.png,w.npy,{cell}\n")
        with pytest.raises(DatasetLayoutError, match=f"row 3 of the manifest manifest.csv has {problem}; give every "
                                                     "row its split"):
            FolderDataset(tmp_path)
    rgb_png(tmp_path / "x.png")
    write_depth(tmp_path / "y.npy", np.full((H, W), 4.0, np.float32))
    (tmp_path / "manifest.csv").write_text("rgb,depth,split\nx.png,y.npy,test \n")  # a stray space: that split
    assert [it.name for it in FolderDataset(tmp_path).items] == ["x"]
    (tmp_path / "x.png").unlink()
    (tmp_path / "y.npy").unlink()
    (tmp_path / "manifest.csv").write_text("rgb,depth,split\n")  # was: "has columns []; it needs rgb and depth"
    with pytest.raises(DatasetLayoutError, match="lists no samples .no rows under its header"):
        FolderDataset(tmp_path)
    (tmp_path / "manifest.csv").unlink()
    rgb_png(tmp_path / "rgb" / "s.png")
    write_depth(tmp_path / "depth" / "s.npy", np.full((H, W), 4.0, np.float32))
    assert np.all(FolderDataset(tmp_path)[0]["depth"] == 4.0)
    # any image format dap.io reads, HDR included (tone-mapped), pairs with its depth by stem
    cv2.imwrite(str(tmp_path / "rgb" / "t.hdr"), np.full((H, W, 3), 30.0, np.float32))
    write_depth(tmp_path / "depth" / "t.exr", np.full((H, W), 2.0, np.float32))
    ds = FolderDataset(tmp_path)
    assert [it.name for it in ds.items] == ["s", "t"]
    np.testing.assert_allclose(ds[1]["rgb"], 0.4614, atol=1e-3)
    assert np.all(ds[1]["depth"] == 2.0)


def test_one_depth_file_for_two_samples_or_two_for_one_is_refused(tmp_path):
    """Two manifest rows naming one depth file were both scored against it, read at the unit of the later row
    (7997 m for an 8 m room); a plain folder with s0.npy (millimetres) beside s0.exr (metres) took the .npy without a
    word; an empty metres_per_unit cell for a raw PNG said to list the file in a manifest, where it was."""
    rgb_png(tmp_path / "rgb" / "s0.png")
    rgb_png(tmp_path / "rgb" / "s1.png")
    write_depth(tmp_path / "depth" / "shared.npy", np.full((H, W), 8.0, np.float32))
    (tmp_path / "manifest.csv").write_text("rgb,depth,metres_per_unit\nrgb/s0.png,depth/shared.npy,0.001\n"
                                           "rgb/s1.png,depth/shared.npy,1\n")
    with pytest.raises(DatasetLayoutError, match="two samples, 'rgb/s0' and 'rgb/s1', list one depth file, "
                                                 ".*shared.npy; each panorama needs its own"):
        FolderDataset(tmp_path)
    png16(tmp_path / "depth" / "raw.png", np.full((H, W), 300, np.uint16))
    (tmp_path / "manifest.csv").write_text("rgb,depth,metres_per_unit\nrgb/s0.png,depth/raw.png,\n")
    with pytest.raises(DepthUnitError, match="raw.png is a 16-bit depth PNG that does not say its unit, and row 2 "
                                             "of .*manifest.csv leaves metres_per_unit empty"):
        FolderDataset(tmp_path)[0]
    (tmp_path / "manifest.csv").unlink()
    (tmp_path / "depth" / "raw.png").unlink()
    (tmp_path / "depth" / "shared.npy").rename(tmp_path / "depth" / "s0.npy")
    write_depth(tmp_path / "depth" / "s0.exr", np.full((H, W), 8.0, np.float32))
    write_depth(tmp_path / "depth" / "s1.exr", np.full((H, W), 8.0, np.float32))
    with pytest.raises(DatasetLayoutError, match=r"s0.png has 2 depth files \(s0.npy, s0.exr\); keep one"):
        FolderDataset(tmp_path)
    (tmp_path / "depth" / "s0.npy").unlink()
    rgb_png(tmp_path / "rgb" / "scene2" / "s2.png")  # left out without a word: 2 of 3 panoramas scored or trained on
    with pytest.raises(DatasetLayoutError, match=r"rgb has sub-folders of images \(scene2\), which a plain folder "
                                                 "does not search"):
        FolderDataset(tmp_path)


def test_folder_pairs_that_cannot_be_scored_say_why(tmp_path):
    # a raw 16-bit PNG does not say its unit: the fix is the manifest's metres_per_unit column
    rgb_png(tmp_path / "rgb" / "a.png")
    png16(tmp_path / "depth" / "a.png", np.full((H, W), 3000, np.uint16))
    with pytest.raises(DepthUnitError, match=r"a.png is a 16-bit depth PNG that does not say its unit\. List it in "
                                             r"a manifest.csv .* metres_per_unit \(e.g. 0.001 for millimetres"):
        FolderDataset(tmp_path)[0]
    (tmp_path / "manifest.csv").write_text("rgb,depth,metres_per_unit\nrgb/a.png,depth/a.png,0.001\n")
    assert np.all(FolderDataset(tmp_path)[0]["depth"] == 3.0)
    # the same column gives the unit of float depth too (millimetres in an .npy); without it they are metres
    np.save(tmp_path / "depth" / "mm.npy", np.full((H, W), 2500.0, np.float32))
    (tmp_path / "manifest.csv").write_text("rgb,depth,metres_per_unit\nrgb/a.png,depth/mm.npy,0.001\n")
    np.testing.assert_allclose(FolderDataset(tmp_path)[0]["depth"], 2.5)
    (tmp_path / "manifest.csv").write_text("rgb,depth,metres_per_unit\nrgb/a.png,depth/mm.npy,\n")
    assert np.all(FolderDataset(tmp_path)[0]["depth"] == 2500.0)
    (tmp_path / "depth" / "mm.npy").unlink()
    # a depth map of another shape than its panorama is not the same view: an error, not a silent stretch
    (tmp_path / "manifest.csv").unlink()
    (tmp_path / "depth" / "a.png").unlink()
    write_depth(tmp_path / "depth" / "a.npy", np.full((H, W + 6), 2.0, np.float32))
    with pytest.raises(DatasetLayoutError, match=rf"a.npy is {W + 6}x{H} but its RGB .*a.png is {W}x{H}"):
        FolderDataset(tmp_path)[0]
    write_depth(tmp_path / "depth" / "a.npy", np.full((H // 2, W // 2), 2.0, np.float32))  # smaller: fine
    assert FolderDataset(tmp_path)[0]["depth"].shape == (H // 2, W // 2)


def test_registry():
    assert set(DATASETS) == {"stanford2d3d", "matterport3d", "deep360", "structured3d", "folder", "synth"}
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        get_dataset("kitti", ".")


def test_synth_shards_as_an_evaluation_set(tmp_path):
    from dap.data.shards import write_dataset
    from dap.data.synthetic import kind_for_seed, make_scene, render

    write_dataset(tmp_path / "s", 3, kind="mixed", resolution=(32, 64), shard_size=2, seed=7, progress=False)
    ds = get_dataset("synth", tmp_path / "s")
    assert len(ds) == 3
    sample = ds[1]
    assert sample["rgb"].shape == (32, 64, 3) and sample["depth"].shape == (32, 64)
    want = render(make_scene(8, kind_for_seed(8, "mixed")), 32, 64)["depth"]
    np.testing.assert_array_equal(sample["depth"], want)
    # a dap synth folder is one set: every split name gives all of it (and one cache key), a typo is an error
    assert get_dataset("synth", tmp_path / "s", split="val").split == ds.split == "all"
    with pytest.raises(DatasetLayoutError, match="unknown split 'tset' .* every name gives all of it"):
        get_dataset("synth", tmp_path / "s", split="tset")
