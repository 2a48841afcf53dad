import dataclasses
import functools
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import OpenEXR
import pytest
import torch
import trimesh
from PIL import Image

import dap
from conftest import box_room_depth, dual_fisheye, photo_sphere_xmp
from dap import geometry, io
from dap.cli import main
from dap.errors import DapError, InputWarning, NotPanoramaError, UnreadableFileError
from dap.inference import Prediction, looks_blank, photo_sphere_top, predict, seam_pad_columns, to_rgb
from dap.models import load_model, save_model
from dap.models.dap import DapConfig


def _pano(h=48, w=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lon = np.linspace(0, 2 * np.pi, w, endpoint=False)
    base = 0.5 + 0.3 * np.sin(3 * lon)[None, :, None] * np.linspace(0, 1, h)[:, None, None]
    return np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


def test_predict_returns_full_resolution_metric_outputs(tiny_model):
    rgb = _pano(48, 96)
    res = dap.predict(rgb, tiny_model, resolution=(32, 64))
    assert res.depth.shape == (48, 96) and res.depth.dtype == np.float32
    assert res.range_mask.shape == (48, 96) and res.range_mask.dtype == bool
    assert res.points.shape == (48, 96, 3) and res.normals.shape == (48, 96, 3)
    assert (res.depth > 0).all() and (res.depth <= 100.0).all()
    # Out-of-range pixels carry the 100 m cap, in-range ones the network's value.
    np.testing.assert_array_equal(res.depth[res.range_mask], 100.0)
    assert np.allclose(np.linalg.norm(res.points, axis=-1), res.depth, rtol=1e-5)
    # points follow depth rescaled in place (by a known scale, say), not the depth they were first read at
    res.depth *= 2
    assert np.allclose(np.linalg.norm(res.points, axis=-1), res.depth, rtol=1e-5)


def test_predict_accepts_every_input_kind_and_batches(tiny_model, tmp_path):
    rgb = _pano(32, 64)
    io.write_rgb(tmp_path / "p.png", rgb)
    kinds = [tmp_path / "p.png", str(tmp_path / "p.png"), Image.open(tmp_path / "p.png"),
             (rgb * 255).round().astype(np.uint8), torch.from_numpy(io.read_rgb(tmp_path / "p.png")).permute(2, 0, 1)]
    ref = predict(kinds[0], tiny_model, resolution=(32, 64), seam_pad=0)
    for item in kinds[1:]:
        np.testing.assert_allclose(predict(item, tiny_model, resolution=(32, 64), seam_pad=0).depth, ref.depth,
                                   atol=1e-5)
    batch = predict([rgb, rgb], tiny_model, resolution=(32, 64))
    assert isinstance(batch, list) and len(batch) == 2
    assert len(predict(np.stack([rgb, rgb]), tiny_model, resolution=(32, 64))) == 2


def test_predict_runs_in_eval_mode_and_leaves_training_modules_training(tiny_model):
    """predict skips the per-call .eval() walk when the model is already evaluating, but not when any submodule is
    training (a model handed over from a training loop, or one head switched back to training); those modules are
    training again afterwards."""
    want = predict(_pano(32, 64), tiny_model, resolution=(32, 64)).depth
    for switch in (tiny_model, list(tiny_model.modules())[-1]):
        switch.train()
        before = [m.training for m in tiny_model.modules()]
        seen: list[bool] = []
        hook = tiny_model.register_forward_pre_hook(
            lambda m, _, seen=seen: seen.append(any(x.training for x in m.modules())))
        np.testing.assert_array_equal(predict(_pano(32, 64), tiny_model, resolution=(32, 64)).depth, want)
        hook.remove()
        assert seen == [False] and [m.training for m in tiny_model.modules()] == before
        tiny_model.eval()


def test_wrong_aspect_is_an_error_unless_padded(tiny_model):
    with pytest.raises(NotPanoramaError, match="2:1"):
        predict(_pano(40, 64), tiny_model, resolution=(32, 64))
    res = predict(_pano(24, 64), tiny_model, resolution=(32, 64), pad_to_erp=True)
    assert res.depth.shape == (32, 64) and res.valid_rows == slice(4, 28)
    assert res.range_mask[:4].all() and res.range_mask[28:].all() and (res.depth[:4] == 0).all()
    with pytest.raises(NotPanoramaError, match="too tall"):
        predict(_pano(40, 64), tiny_model, resolution=(32, 64), pad_to_erp=True)
    # a 40000x10 strip (a 350 KB JPEG) padded to 40000x20000 allocated 9.6 GB before any check
    with pytest.raises(NotPanoramaError, match=r"padded to 2:1, the 40000x10 image would be 40000x20000 \(800 MP\), "
                                               r"more than .* downscale it first"):
        predict(np.zeros((10, 40000, 3), np.float32), tiny_model, resolution=(32, 64), pad_to_erp=True)


def test_a_partial_photo_sphere_is_padded_where_its_xmp_puts_it(tiny_model, checkpoint, tmp_path, capsys):
    from PIL import PngImagePlugin

    part = (_pano(24, 64) * 255).astype(np.uint8)  # 360 degrees wide, 24 of the full 32 rows
    Image.fromarray(part).save(tmp_path / "top2.jpg", xmp=photo_sphere_xmp(1024, 512, 0, 32, 1024, 384))
    png_info = PngImagePlugin.PngInfo()
    png_info.add_itxt("XML:com.adobe.xmp", photo_sphere_xmp(64, 32, 0, 8, 64, 24, elements=True).decode())
    Image.fromarray(part).save(tmp_path / "top8.png", pnginfo=png_info)
    Image.fromarray(part).save(tmp_path / "plain.jpg")
    assert io.read_photo_sphere(tmp_path / "top8.png") == io.PhotoSphere(64, 32, 0, 8, 64, 24)
    assert io.read_photo_sphere(tmp_path / "plain.jpg") is None
    for bad in (photo_sphere_xmp(0, 0, 0, 0, 0, 0), photo_sphere_xmp("inf", 32, 0, 8, 64, 24),  # as if none
                photo_sphere_xmp(64, 32, 0, -10, 64, 24), photo_sphere_xmp(64, 32, 0, 9999, 64, 24)):
        Image.fromarray(part).save(tmp_path / "bad.jpg", xmp=bad)
        assert io.read_photo_sphere(tmp_path / "bad.jpg") is None
        assert predict(str(tmp_path / "bad.jpg"), tiny_model, resolution=(32, 64), pad_to_erp=True).valid_rows == \
            slice(4, 28)  # centred, as without an XMP
    # its numbers are in the pixels the XMP was written for (1024 wide): scaled to the image's 64, row 32 is row 2
    for name, rows in (("top2.jpg", slice(2, 26)), ("top8.png", slice(8, 32)), ("plain.jpg", slice(4, 28))):
        res = predict(str(tmp_path / name), tiny_model, resolution=(32, 64), pad_to_erp=True)
        assert res.valid_rows == rows, name
        outside = np.ones(32, bool)
        outside[rows] = False
        assert (res.depth[outside] == 0).all() and (res.depth[rows] > 0).all()
    # the same file as a bytes path or an opened PIL image (was: centred, the XMP ignored)
    for spelling in (bytes(tmp_path / "top8.png"), Image.open(tmp_path / "top8.png")):
        assert predict(spelling, tiny_model, resolution=(32, 64), pad_to_erp=True).valid_rows == slice(8, 32)
    res = predict(str(tmp_path / "top8.png"), tiny_model, resolution=(32, 64), pad_to_erp=True, pad_top=0)
    assert res.valid_rows == slice(0, 24)  # pad_top wins
    with pytest.raises(DapError, match="pad_top 9 puts a 64x24 partial panorama outside .* 0 to 8"):
        predict(_pano(24, 64), tiny_model, resolution=(32, 64), pad_to_erp=True, pad_top=9)
    # numbers that do not fit the image (another crop, not 360 degrees wide, not 2:1 in full) are not used
    assert photo_sphere_top(io.PhotoSphere(64, 32, 0, 8, 64, 20), 24, 64) is None
    with pytest.raises(NotPanoramaError, match="spans 180 of 360 degrees across"):
        photo_sphere_top(io.PhotoSphere(128, 64, 32, 8, 64, 24), 24, 64)
    assert photo_sphere_top(io.PhotoSphere(64, 40, 0, 8, 64, 24), 24, 64) is None
    # dap predict does the same, reading the XMP on its decoding thread
    assert main(["predict", str(tmp_path / "top8.png"), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                 "--resolution", "32x64", "--outputs", "npy", "--pad-to-erp"]) == 0
    depth = np.load(tmp_path / "o" / "top8.npy")
    assert depth.shape == (32, 64) and (depth[:8] == 0).all() and (depth[8:] > 0).all()
    # a half-sphere's XMP: that input fails with the reason, the others go on
    Image.fromarray(part).save(tmp_path / "half.jpg", xmp=photo_sphere_xmp(128, 64, 32, 8, 64, 24))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "half.jpg"), str(tmp_path / "plain.jpg"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(checkpoint), "--resolution", "32x64", "--outputs", "npy", "--pad-to-erp"]) == 1
    assert "half.jpg: the image's Photo Sphere XMP says it spans 180 of 360 degrees" in capsys.readouterr().err


def test_seam_padding_width():
    assert seam_pad_columns(1024, 1 / 16) == 64 and seam_pad_columns(64, 1 / 16) == 0
    assert seam_pad_columns(256, 1 / 8) == 32


def test_resampling_rules_follow_what_the_pixels_mean():
    from dap.inference import resize_depth, resize_image, resize_nearest

    checker = (np.indices((48, 96)).sum(0) % 2).astype(np.float32)
    small = resize_image(checker, (16, 32))  # averaged: a fine checkerboard shrinks to grey, not to a new pattern
    assert small.shape == (16, 32) and np.abs(small[2:-2, 2:-2] - 0.5).max() < 0.05
    labels = torch.from_numpy(np.where(checker > 0, 5.0, 2.0).astype(np.float32))[None]
    big = resize_nearest(labels, (96, 192))  # picked: only values that were there
    assert big.shape == (1, 96, 192) and set(big.unique().tolist()) == {2.0, 5.0}
    assert resize_nearest(checker > 0, (96, 192)).dtype == bool
    depth = np.full((8, 16), 4.0, np.float32)
    depth[:, :8] = 2.0
    depth[4, 12] = 0  # invalid
    up = resize_depth(depth, (16, 32))
    assert (up[7:11, 23:27] == 0).all() and (up[:, 25] > 0).sum() == 16 - 4  # no blending into the hole
    np.testing.assert_allclose(up[:, 15:17], np.tile([2.5, 3.5], (16, 1)))  # interpolated across a valid edge
    np.testing.assert_array_equal(up[:, :14], 2.0)
    # +inf (counted as the cap) and NaN (a failure) keep their own area: blended, +inf made NaN beside finite depth
    # (0 x inf, then scored as min_depth) and a NaN pixel spread over four times its area
    depth[4, 12] = 4.0
    depth[1:3, 2:4], depth[6, 14] = np.inf, np.nan
    up = resize_depth(depth, (24, 48))
    assert np.isposinf(up).sum() == 4 * 9 and np.isnan(up).sum() == 9 and (up == 0).sum() == 0
    assert np.isposinf(up[3:9, 6:12]).all() and np.isnan(up[18:21, 42:45]).all()


class LocalNet(torch.nn.Module):
    """A tiny random network with DAP's interface whose output depends on a 7-pixel neighbourhood, with zero
    padding at the image borders as DPT's convolutions have. (A ViT attends globally, with positions relative to
    the whole input, so it is not exactly equivariant to rolls even with seam padding: this isolates what the
    padding guarantees.)"""

    def __init__(self):
        super().__init__()
        self.cfg = DapConfig(name="local")
        conv = functools.partial(torch.nn.Conv2d, kernel_size=3, padding=1)
        self.net = torch.nn.Sequential(conv(3, 8), torch.nn.Tanh(), conv(8, 8), torch.nn.Tanh(), conv(8, 2))

    def forward(self, x):
        y = self.net(x).sigmoid()
        return {"depth": y[:, :1] * self.cfg.max_depth, "out_of_range_prob": y[:, 1:]}


def test_seam_padding_makes_the_panorama_periodic():
    torch.manual_seed(0)
    model = LocalNet().eval()
    rgb = np.random.default_rng(0).random((64, 128, 3), dtype=np.float32)
    run = functools.partial(predict, model=model, resolution=(64, 128), device="cpu")
    # Independent expectation: the network on the panorama wrapped around the sphere (circular columns, zero
    # rows), its input normalised by hand.
    x = torch.from_numpy((rgb - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225]))
    with torch.no_grad():
        wrapped = model(torch.nn.functional.pad(x.permute(2, 0, 1)[None], (8, 8, 0, 0), mode="circular"))
    ref = run(rgb, seam_pad=1 / 8)  # 16 columns on each side, more than the network sees
    np.testing.assert_allclose(ref.depth, np.where(ref.range_mask, 100.0, wrapped["depth"][0, 0, :, 8:-8]),
                               rtol=1e-5)
    np.testing.assert_allclose(ref.out_of_range_prob, wrapped["out_of_range_prob"][0, 0, :, 8:-8], atol=1e-6)
    # Rolling the panorama by whole patches rolls the prediction by the same columns.
    for k in (16, 48, 64):
        rolled = run(np.roll(rgb, k, axis=1), seam_pad=1 / 8)
        np.testing.assert_allclose(rolled.depth, np.roll(ref.depth, k, axis=1), rtol=1e-5)
        np.testing.assert_allclose(rolled.out_of_range_prob, np.roll(ref.out_of_range_prob, k, axis=1), atol=1e-6)
    # Without seam padding the network's zero borders meet at the seam, and the roll is no longer exact.
    plain = run(rgb, seam_pad=0)
    assert np.abs(run(np.roll(rgb, 64, axis=1), seam_pad=0).depth - np.roll(plain.depth, 64, axis=1)).max() > 1e-3


def test_point_cloud_reproduces_box_room():
    depth = box_room_depth(32, 64)
    pred = Prediction(rgb=np.zeros((32, 64, 3), np.float32), depth=depth, range_mask=np.zeros((32, 64), bool),
                      out_of_range_prob=np.zeros((32, 64), np.float32))
    p = pred.points
    lo, hi = np.array([-2.0, -1.5, -2.5]), np.array([3.0, 1.2, 4.0])
    dist_to_wall = np.minimum(np.abs(p - lo), np.abs(p - hi)).min(axis=-1)
    assert dist_to_wall.max() < 1e-4
    assert (p >= lo - 1e-4).all() and (p <= hi + 1e-4).all()


def test_no_default_model_message(monkeypatch, tmp_path):
    monkeypatch.setattr("dap.inference.default_model_path", lambda: tmp_path / "none")
    with pytest.raises(DapError, match="--checkpoint"):
        predict(_pano(32, 64))


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return save_model(tiny_model, tmp_path / "ckpt")


def test_cli_end_to_end_writes_and_reloads_every_format(checkpoint, tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    io.write_rgb(src / "a.png", _pano(32, 64, 1))
    io.write_rgb(src / "b.jpg", _pano(32, 64, 2))
    (src / "broken.png").write_text("not an image")
    io.write_rgb(src / "wide.png", _pano(32, 80, 3))
    out = tmp_path / "out"
    argv = ["predict", str(src), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution", "32x64",
            "--outputs", "npy,exr,png16,color,mask,normals,ply,glb,cubemap"]
    assert main(argv) == 1  # two inputs failed, the other two were still processed
    pred = predict(src / "a.png", tiny_model, resolution=(32, 64))
    valid = np.where(pred.range_mask, 0, pred.depth)
    np.testing.assert_allclose(io.read_depth(out / "a.npy"), valid, atol=1e-5)
    np.testing.assert_array_equal(io.read_depth(out / "a.npy"), io.read_depth(out / "a.exr"))
    assert np.abs(io.read_depth(out / "a.depth.png") - io.read_depth(out / "a.npy")).max() <= 1 / 1024 + 1e-6
    assert len(trimesh.load(out / "a.ply").vertices) == int((valid > 0).sum())
    for f in ("a.color.png", "a.mask.png", "a.normals.png", "a.glb", "b.npy", "a.cube/+z.rgb.png"):
        assert (out / f).exists(), f
    assert not (out / "broken.npy").exists() and not (out / "wide.npy").exists()
    # Existing outputs are skipped unless --overwrite.
    mtime = os.path.getmtime(out / "a.npy")
    main(["predict", str(src / "a.png"), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution", "32x64"])
    assert os.path.getmtime(out / "a.npy") == mtime


def test_cli_reports_bad_inputs(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint)]) == 2
    assert "no images" in capsys.readouterr().err
    # a folder that holds only a video says so
    (empty / "clip.mp4").write_bytes(b"")
    assert main(["predict", str(empty), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint)]) == 2
    assert "it holds 1 video(s) (clip.mp4): pass a video by its own path" in capsys.readouterr().err
    (empty / "clip.mp4").unlink()
    # a pattern may match the run's own --out inside its folder: rerunning 'g/*' --out g/out skips, not fails
    io.write_rgb(tmp_path / "g" / "a.png", _pano(32, 64))
    run = ["predict", str(tmp_path / "g" / "*"), "--out", str(tmp_path / "g" / "out"), "--checkpoint", str(checkpoint),
           "--resolution", "32x64", "--outputs", "npy"]
    assert main(run) == 0 and main(run) == 0
    assert "skipped 1 with existing outputs" in capsys.readouterr().out
    assert main(["predict", str(empty / "*"), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint)]) == 2
    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    assert main(["predict", str(empty), "--out", str(locked / "sub"), "--checkpoint", str(checkpoint)]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    io.write_rgb(tmp_path / "ok.png", _pano(32, 64))
    assert main(["predict", str(tmp_path / "ok.png"), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                 "--outputs", "npy,bogus"]) == 2
    assert "unknown output kind" in capsys.readouterr().err


def test_a_panorama_far_smaller_than_the_working_resolution_is_predicted_with_a_warning(checkpoint, tmp_path,
                                                                                     tiny_model, capsys):
    """A thumbnail (4x or more below the working height) still gets depth, with a warning that says how much it
    was enlarged; `dap predict` names the file in it. Within 4x there is no warning."""

    with pytest.warns(InputWarning, match=r"only 32x16 pixels \(width x height\), enlarged 8x to the "
                                              r"working resolution's 256x128"):
        got = predict(_pano(16, 32), tiny_model, resolution=(128, 256))
    assert got.depth.shape == (16, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        predict(_pano(64, 128), tiny_model, resolution=(128, 256))  # 2x: no warning
    io.write_rgb(tmp_path / "thumb.png", _pano(8, 16))
    io.write_rgb(tmp_path / "ok.png", _pano(64, 128))
    assert main(["predict", str(tmp_path / "thumb.png"), str(tmp_path / "ok.png"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(checkpoint), "--resolution", "64x128"]) == 0
    err = capsys.readouterr().err
    assert (f"dap predict: warning: {tmp_path / 'thumb.png'}: input panorama is only 16x8 pixels (width x height), "
            "enlarged 8x") in err
    assert err.count("warning") == 1 and (tmp_path / "o" / "thumb.npy").is_file()


def test_an_unstitched_dual_fisheye_image_is_predicted_with_a_warning(checkpoint, tmp_path, capsys):
    fisheye = dual_fisheye(_pano(64, 128))
    io.write_rgb(tmp_path / "raw.jpg", fisheye)
    io.write_rgb(tmp_path / "pano.jpg", _pano(64, 128))
    assert main(["predict", str(tmp_path / "raw.jpg"), str(tmp_path / "pano.jpg"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(checkpoint), "--resolution", "64x128"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'raw.jpg'}: input panorama looks like an unstitched dual-fisheye image" in err
    assert "Stitch it first" in err and err.count("warning") == 1  # the panorama itself gets none


def test_a_blank_image_is_predicted_with_a_warning(checkpoint, tmp_path, capsys):
    io.write_rgb(tmp_path / "black.png", np.zeros((64, 128, 3), np.float32))
    io.write_rgb(tmp_path / "night.png", _pano(64, 128) * 0.3)  # dark, but with detail: no warning
    assert main(["predict", str(tmp_path / "black.png"), str(tmp_path / "night.png"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(checkpoint), "--resolution", "64x128"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'black.png'}: input panorama is blank (one flat colour, no detail)" in err
    assert err.count("warning") == 1 and (tmp_path / "o" / "black.npy").is_file()
    assert looks_blank(np.full((8, 16, 3), 0.7, np.float32)) and not looks_blank(_pano(64, 128) * 0.3)


def _prediction(depth: np.ndarray) -> Prediction:
    h, w = depth.shape
    return Prediction(rgb=np.zeros((h, w, 3), np.float32), depth=depth, range_mask=np.zeros((h, w), bool),
                      out_of_range_prob=np.zeros((h, w), np.float32))


def test_depth_beyond_the_16_bit_png_is_a_note_not_a_warning(tmp_path):
    from dap.inference import output_paths, write_outputs

    depth = np.full((16, 32), 3.0, np.float32)
    depth[0, :5] = 195.0  # a far hill under a --camera-height rescale
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was a two-line UserWarning with a source path, from the writer thread
        notes = write_outputs(_prediction(depth), output_paths(tmp_path, "p", ["png16", "npy"]))
    assert notes == ["5 depth values up to 195 m are beyond what the 16-bit depth PNG holds (128 m) and are 128 m "
                     "there; the npy and exr outputs keep them"]
    np.testing.assert_allclose(io.read_depth(tmp_path / "p.depth.png")[0, :5], 65534 / 512)
    assert np.load(tmp_path / "p.npy")[0, 0] == 195.0


def test_prediction_save_writes_what_dap_predict_writes(tmp_path):
    """Saving from Python: io.write_depth(path, res.depth) stores the range mask's 100 m as depth; save() stores 0
    there, as dap predict's files do, and refuses a mistyped kind (write_outputs skipped it silently)."""
    depth = np.full((16, 32), 3.0, np.float32)
    pred = _prediction(depth)
    pred.range_mask[:2] = True
    pred.depth[:2] = 100.0
    paths = pred.save(tmp_path / "sub" / "pano", ["npy", "mask", "png16"])
    assert [p.name for p in paths] == ["pano.npy", "pano.mask.png", "pano.depth.png"]
    saved = np.load(tmp_path / "sub" / "pano.npy")
    assert (saved[:2] == 0).all() and (saved[2:] == 3.0).all()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "pano.mask.png")) > 0, pred.range_mask)
    assert pred.save(tmp_path / "one", "color") == [tmp_path / "one.color.png"]
    pred.depth[5, :3] = 195.0
    with pytest.warns(InputWarning, match="p2: 3 depth values up to 195 m are beyond what the 16-bit depth PNG"):
        pred.save(tmp_path / "p2", ["png16"])
    with pytest.raises(DapError, match=r"unknown output kind\(s\) \['tiff'\]; choose from npy, exr"):
        pred.save(tmp_path / "x", ["npy", "tiff"])
    with pytest.raises(DapError, match="point_stride keeps every n-th pixel in each direction: an int >= 1, got 0"):
        pred.save(tmp_path / "x", ["ply"], point_stride=0)
    assert not list(tmp_path.glob("x*"))
    for stem in ("", " "):  # "" wrote a hidden ./.color.png; "" with npy was a ValueError
        with pytest.raises(DapError, match="names no file; give the outputs' path without suffix"):
            pred.save(stem, ["color"])
    with pytest.raises(DapError, match=r"x: its outputs go in the folder .*pano.npy, but .*pano.npy is a file; move "
                                       "it away, or give another stem"):  # was a FileExistsError
        pred.save(tmp_path / "sub" / "pano.npy" / "x", ["npy"])


def test_points_of_constant_depth_lie_on_a_sphere_along_the_erp_rays():
    h, w, r = 16, 32, 2.5
    p = _prediction(np.full((h, w), r, np.float32)).points
    # DESIGN conventions: pixel centres, column 0 at longitude -pi, row 0 at the north pole; x right, y down,
    # z forward.
    lon = (np.arange(w) + 0.5) / w * 2 * np.pi - np.pi
    lat = np.pi / 2 - (np.arange(h) + 0.5) / h * np.pi
    lat, lon = np.meshgrid(lat, lon, indexing="ij")
    expected = r * np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(p, axis=-1), r, rtol=1e-6)
    np.testing.assert_allclose(p, expected, atol=1e-5)


def test_normals_of_a_box_room_are_axis_vectors_facing_the_camera():
    lo, hi = np.array([-2.0, -1.5, -2.5]), np.array([3.0, 1.2, 4.0])
    pred = _prediction(box_room_depth(64, 128, tuple(lo), tuple(hi)))
    p, n = pred.points, pred.normals
    # The wall each pixel sees, and its inward normal: a point on the wall x = hi_x has normal -x, and so on.
    gap = np.concatenate([np.abs(p - lo), np.abs(p - hi)], axis=-1)
    wall = gap.argmin(-1)
    normal = np.concatenate([np.eye(3), -np.eye(3)])[wall]
    # Finite differences are exact on a plane; away from the room's edges every neighbour sees the same wall.
    same = np.ones_like(wall, bool)
    for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
        same &= np.roll(wall, (dy, dx), axis=(0, 1)) == wall
    same[[0, -1]] = False
    assert same.mean() > 0.8
    np.testing.assert_allclose(n[same], normal[same], atol=1e-4)


def test_guided_upsampling_follows_image_edges():
    # A step in depth that coincides with a step in brightness: guided upsampling keeps it sharp at full res,
    # bilinear smears it over the low-res pixel footprint.
    from dap.inference import guided_upsample

    H, W = 64, 128
    rgb = torch.full((1, 3, H, W), 0.2)
    rgb[..., :, W // 2 + 3:] = 0.8
    gt = torch.where(rgb[:, :1] > 0.5, 8.0, 2.0)
    low = torch.nn.functional.interpolate(gt, size=(16, 32), mode="area")
    bil = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    guided = guided_upsample(low, rgb)
    err_bil = ((bil - gt).abs() / gt).mean()
    err_guided = ((guided - gt).abs() / gt).mean()
    assert err_guided < 0.5 * err_bil
    # Flat regions are reproduced exactly (up to float error) by both.
    assert torch.allclose(guided[..., 10, 10], torch.tensor(2.0), rtol=1e-3)


def test_default_working_resolution_comes_from_the_model(tmp_path):
    from dap.models import create_model, load_model

    model = create_model("dap_tiny", default_resolution=(32, 64)).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg.default_resolution == (32, 64)
    seen = []
    loaded.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    predict(_pano(64, 128), loaded, seam_pad=0)
    assert seen == [(32, 64)]


def test_range_threshold_travels_with_the_model(tmp_path):
    from dap.models import create_model, load_model

    model = create_model("dap_tiny", default_resolution=(32, 64)).eval()
    prob = predict(_pano(), model, seam_pad=0).out_of_range_prob
    calibrated = float(np.quantile(prob, 0.7))  # random weights: a threshold that splits this image's pixels
    model.cfg = dataclasses.replace(model.cfg, range_threshold=calibrated)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg.range_threshold == calibrated
    pred = predict(_pano(), loaded, seam_pad=0)
    assert np.array_equal(pred.range_mask, prob >= calibrated) and 0.2 < pred.range_mask.mean() < 0.4
    low = predict(_pano(), loaded, seam_pad=0, threshold=float(np.quantile(prob, 0.2)))  # asked for: wins
    assert 0.7 < low.range_mask.mean() < 0.9
    assert create_model("dap_tiny").cfg.range_threshold == 0.5  # what every model without calibration uses
    with pytest.raises(ValueError, match="range_threshold is a probability in"):
        create_model("dap_tiny", range_threshold=0.0)


def test_small_out_of_range_regions_are_dropped_by_their_share_of_the_panorama(tmp_path):
    """range_min_region: a 2x2 blob (0.2% of a 32x64 map) goes, a 4x8 one (1.6%) and the sky band (25%) stay, at any
    threshold asked for; saved and loaded with the model; 0 keeps every region (the official rule)."""
    from dap.inference import drop_small_range_regions
    from dap.models import create_model, load_model

    prob = torch.zeros(1, 1, 32, 64)
    prob[..., :8, :] = 0.9  # sky band at the top
    prob[..., 20:22, 10:12] = 0.95  # a lamp-sized false alarm
    prob[..., 20:24, 40:48] = 0.8  # a window-sized region
    out = drop_small_range_regions(prob, 0.5, 0.005)
    assert out[..., 20:22, 10:12].max() == 0 and torch.equal(out[..., :8, :], prob[..., :8, :])
    assert torch.equal(out[..., 20:24, 40:48], prob[..., 20:24, 40:48])
    assert torch.equal(drop_small_range_regions(prob, 0.5, 0.0), prob)
    assert torch.equal(drop_small_range_regions(prob, 0.85, 0.02)[..., 20:24, 40:48], prob[..., 20:24, 40:48])  # < 0.85
    assert drop_small_range_regions(prob, 0.5, 0.02)[..., 20:24, 40:48].max() == 0  # 1.6% < 2%

    model = create_model("dap_tiny", default_resolution=(32, 64)).eval()
    base = predict(_pano(), model, seam_pad=0)
    threshold = float(np.quantile(base.out_of_range_prob, 0.9))  # random weights: a tenth of the pixels, scattered
    model.cfg = dataclasses.replace(model.cfg, range_threshold=threshold, range_min_region=0.01)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg.range_min_region == 0.01
    pred = predict(_pano(), loaded, seam_pad=0)
    assert pred.range_mask.mean() < (base.out_of_range_prob >= threshold).mean()
    unmasked = predict(_pano(), model, seam_pad=0, threshold=math.inf).depth  # the depth head alone
    np.testing.assert_array_equal(pred.depth[~pred.range_mask], unmasked[~pred.range_mask])
    with pytest.raises(ValueError, match="range_min_region is a share"):
        create_model("dap_tiny", range_min_region=1.0)


def test_depth_scale_travels_with_the_model_and_scales_every_output_path(tmp_path):
    """A calibrated depth_scale multiplies the depth the network gives (so predict, `dap eval`, training validation
    and ONNX export all see it), is saved and loaded with the model, and leaves the range head alone."""
    from dap.models import create_model, load_model

    model = create_model("dap_tiny", default_resolution=(32, 64)).eval()
    before = predict(_pano(), model, seam_pad=0, threshold=math.inf)
    model.cfg = dataclasses.replace(model.cfg, depth_scale=0.8)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg.depth_scale == 0.8 and create_model("dap_tiny").cfg.depth_scale == 1.0
    after = predict(_pano(), loaded, seam_pad=0, threshold=math.inf)
    np.testing.assert_allclose(after.depth, 0.8 * before.depth, rtol=1e-5)
    np.testing.assert_array_equal(after.out_of_range_prob, before.out_of_range_prob)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="depth_scale is a positive factor"):
            create_model("dap_tiny", depth_scale=bad)


def test_latitude_scale_scales_rows_by_latitude_and_travels_with_the_model(tmp_path):
    """latitude_scale multiplies each row's depth by its knots interpolated at the row's latitude (knot k at the
    centre of the k-th of K equal bands of rows, constant beyond the end knots); saved and loaded with the model;
    the range head is untouched; bad values are refused."""
    from dap.models import create_model, load_model

    model = create_model("dap_tiny", default_resolution=(32, 64)).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        before = model(x)
    model.cfg = dataclasses.replace(model.cfg, latitude_scale=(2.0, 1.0, 0.5, 1.0))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg.latitude_scale == (2.0, 1.0, 0.5, 1.0)
    with torch.inference_mode():
        after = loaded(x)
    row_factor = after["depth"][0, 0].mean(1) / before["depth"][0, 0].mean(1)
    want = np.interp(np.arange(32) + 0.5, (np.arange(4) + 0.5) * 8, [2.0, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(row_factor.numpy(), want, rtol=1e-5)
    assert want[0] == 2.0 and want[12] == 1.0 - 0.5 * 0.5 / 8  # the top rows keep the first knot; between: linear
    torch.testing.assert_close(after["out_of_range_prob"], before["out_of_range_prob"])
    assert create_model("dap_tiny").cfg.latitude_scale == ()
    for bad in ((1.0,), (1.0, 0.0), (1.0, math.nan), (-1.0, 1.0)):
        with pytest.raises(ValueError, match="latitude_scale is empty or two or more positive factors"):
            create_model("dap_tiny", latitude_scale=bad)


class BoxRoomNet(torch.nn.Module):
    """Whatever the image: the room of box_room_depth (camera 1.2 m above the floor) at `scale` times its size,
    everything out of range above `sky_from` degrees of latitude."""

    def __init__(self, scale: float, sky_from: float = 90.0):
        super().__init__()
        self.cfg, self.scale, self.sky_from = DapConfig(name="box"), scale, sky_from

    def forward(self, x):
        h, w = x.shape[-2:]
        depth = torch.from_numpy(self.scale * box_room_depth(h, w))[None, None].expand(len(x), 1, h, w)
        lat = 90.0 - (torch.arange(h) + 0.5) * 180.0 / h
        prob = (lat > self.sky_from).float()[:, None].expand(h, w)[None, None].expand(len(x), 1, h, w)
        return {"depth": depth.contiguous(), "out_of_range_prob": prob.contiguous()}


def test_level_predicts_a_tilted_panorama_as_if_level_and_turns_the_depth_back():
    """BoxRoomNet gives the room a level camera sees, whatever the image: on a tilted panorama, `level` must hand
    it the levelled panorama and turn its depth back to what the tilted camera sees of the same room."""
    sample = io.read_rgb(Path(__file__).resolve().parents[1] / "src/dap/assets/sample_indoor.jpg")
    tilt = geometry.rotation_matrix(pitch=12.0, roll=-8.0)
    tilted = np.clip(np.asarray(geometry.rotate_erp(sample, tilt), np.float32), 0, 1)
    truth = np.asarray(geometry.rotate_erp(box_room_depth(512, 1024), tilt, mode="nearest"))
    run = functools.partial(predict, model=BoxRoomNet(1.0), resolution=(128, 256), seam_pad=0)

    def error(depth):  # median relative error against the room the tilted camera sees
        return float(np.median(np.abs(depth - truth) / truth))

    with pytest.warns(InputWarning, match=r"tilted by about 14 degrees .* Level it: --level"):
        as_taken = run(tilted)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        levelled = run(tilted, level=True)
        run(sample)  # a level panorama: no warning
    assert error(as_taken.depth) > 0.05 and error(levelled.depth) < 0.01  # measured: 0.063 and 0.004
    assert np.array_equal(levelled.rgb, tilted)  # the outputs are in the input's frame, with its pixels


def test_predict_level_flag_is_recorded_and_silences_the_tilt_warning(checkpoint, tmp_path, capsys):
    sample = io.read_rgb(Path(__file__).resolve().parents[1] / "src/dap/assets/sample_indoor.jpg")
    io.write_rgb(tmp_path / "tilted.jpg", np.clip(np.asarray(geometry.rotate_erp(sample, pitch=15.0)), 0, 1))
    assert _predict_cli([tmp_path / "tilted.jpg"], tmp_path / "o", checkpoint, "--outputs", "npy") == 0
    err = capsys.readouterr().err
    assert re.search(rf"warning: {re.escape(str(tmp_path / 'tilted.jpg'))}: input panorama looks taken by a camera "
                     r"tilted by about 1[456] degrees", err)
    assert _predict_cli([tmp_path / "tilted.jpg"], tmp_path / "o2", checkpoint, "--outputs", "npy", "--level") == 0
    assert "tilted" not in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / ".tilted.dap.json").read_text())["settings"]["level"] is True
    assert _predict_cli([tmp_path / "tilted.jpg"], tmp_path / "o2", checkpoint, "--outputs", "npy") == 2
    assert "level was True, now not set" in capsys.readouterr().err  # made otherwise: not silently kept


def test_level_that_cannot_level_a_tilted_panorama_says_so(tiny_model, monkeypatch):
    """Edges that do not settle on one tilt: --level predicted the panorama as it was and said nothing, the tilt
    warning silenced by the flag."""
    monkeypatch.setattr(geometry, "level_rotation", lambda rgb: None)
    monkeypatch.setattr(geometry, "tilt_angle", lambda rgb: 14.8)
    with pytest.warns(InputWarning, match="tilted by about 15 degrees, but it could not be levelled .* predicted as "
                                          "it is"):
        predict(_pano(32, 64), tiny_model, level=True, resolution=(32, 64))


def test_camera_height_sets_the_metric_scale():
    run = functools.partial(predict, resolution=(64, 128), seam_pad=0)
    truth = box_room_depth(64, 128)
    half = run(_pano(64, 128), BoxRoomNet(0.5))
    np.testing.assert_allclose(half.depth, 0.5 * truth, rtol=1e-5)  # the model's own guess: half the size
    fixed = run(_pano(64, 128), BoxRoomNet(0.5), camera_height=1.2)
    np.testing.assert_allclose(fixed.depth, truth, rtol=2e-3)
    np.testing.assert_allclose(run(_pano(64, 128), BoxRoomNet(3.0), camera_height=2.4).depth, 2 * truth, rtol=2e-3)
    # out-of-range pixels keep the cap and are not used: an open sky above 10 degrees changes nothing below it
    sky = run(_pano(64, 128), BoxRoomNet(0.5, sky_from=10.0), camera_height=1.2)
    assert (sky.depth[sky.range_mask] == 100.0).all() and sky.range_mask[:25].all()
    np.testing.assert_allclose(sky.depth[~sky.range_mask], truth[~sky.range_mask], rtol=2e-3)
    with pytest.raises(DapError, match="no floor or ground found in the input panorama"):
        run(_pano(64, 128), BoxRoomNet(0.5, sky_from=-80.0), camera_height=1.2)  # all sky
    with pytest.raises(DapError, match="no floor or ground found in batch image 1"):
        run([_pano(64, 128), _pano(16, 128)], BoxRoomNet(0.5), camera_height=1.2, pad_to_erp=True)  # +-22.5 deg
    with pytest.raises(DapError, match="positive number of metres"):
        run(_pano(64, 128), BoxRoomNet(0.5), camera_height=-1.0)


def test_scale_smoothing_follows_moving_average_of_medians():
    from dap.inference import ScaleSmoother

    def frame(scale, blank=False):
        d = np.full((4, 8), 2.0 * scale, np.float32)
        rgb = np.zeros((4, 8, 3), np.float32) if blank else _pano(4, 8)
        return Prediction(rgb=rgb, depth=d, range_mask=np.zeros((4, 8), bool),
                          out_of_range_prob=np.zeros((4, 8), np.float32))

    smooth = ScaleSmoother(0.5)
    a, b = frame(1.0), frame(4.0)
    black = frame(50.0, blank=True)
    smooth(black, "v.mp4")  # a fade from black: left as it is, and not the average's start
    np.testing.assert_allclose(black.depth, 100.0)
    smooth(a, "v.mp4")
    smooth(b, "v.mp4")
    np.testing.assert_allclose(a.depth, 2.0)
    np.testing.assert_allclose(b.depth, 4.0, rtol=1e-6)  # exp(0.5 log 2 + 0.5 log 8) = 4
    c = frame(4.0)
    smooth(c, "other.mp4")  # a new video starts afresh
    np.testing.assert_allclose(c.depth, 8.0)


def test_video_input_frames_are_predicted(checkpoint, tmp_path, capsys):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    for i in range(3):
        writer.write((_pano(32, 64, i) * 255).astype(np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution",
                 "32x64", "--outputs", "npy", "--smooth-scale", "0.8"]) == 0
    frames = [f"clip_{i:06d}" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted([f".{f}.dap.json" for f in frames]
                                                           + [f"{f}.npy" for f in frames])
    # resumed after frame 0 (as a run killed then leaves it): the smoothing goes on from frame 0's recorded state
    whole = {f: io.read_depth(out / f"{f}.npy") for f in frames}
    for f in frames[1:]:
        (out / f"{f}.npy").unlink()
    assert main(["predict", str(path), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution",
                 "32x64", "--outputs", "npy", "--smooth-scale", "0.8"]) == 0
    for f in frames:
        np.testing.assert_allclose(io.read_depth(out / f"{f}.npy"), whole[f], rtol=1e-6)
    # a second video that starts with black frames: their records held the first video's average, which a resumed
    # run handed on to the second video's first real frame (its depth about 2x off)
    second = tmp_path / "second.avi"
    writer = cv2.VideoWriter(str(second), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    for i in range(4):
        writer.write(np.zeros((32, 64, 3), np.uint8) if i < 2 else (_pano(32, 64, 10 + i) * 0.3 * 255).astype(np.uint8))
    writer.release()
    both = tmp_path / "both"
    argv = ["predict", str(path), str(second), "--out", str(both), "--checkpoint", str(checkpoint), "--resolution",
            "32x64", "--outputs", "npy", "--smooth-scale", "0.8"]
    assert main(argv) == 0
    whole = {f.name: np.load(f) for f in both.glob("second_*.npy")}
    for name in ("second_000002.npy", "second_000003.npy"):
        (both / name).unlink()
    assert main(argv) == 0
    for name, depth in whole.items():
        np.testing.assert_array_equal(np.load(both / name), depth, err_msg=name)
    # the video changed since: its frames' outputs are refused in one line and a count, not a line per frame
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main(["predict", str(path), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution",
                 "32x64", "--outputs", "npy", "--smooth-scale", "0.8"]) == 2
    printed = capsys.readouterr()
    err = printed.err
    assert err.count("error:") == 2 and f"error: {path} frame 0: {out} already holds outputs named clip_000000" in err
    assert f"error: {path}: also 2 later frame(s), for the same reason" in err
    assert "; 3 failed." in printed.out  # frames, not message lines (was 2)
    # a name too long for the file system fails the video once too, not once a frame
    long = tmp_path / ("v" * 240 + ".avi")
    shutil.copy(path, long)
    assert main(["predict", str(long), "--out", str(tmp_path / "long"), "--checkpoint", str(checkpoint),
                 "--resolution", "32x64", "--outputs", "npy"]) == 2
    printed = capsys.readouterr()
    assert printed.err.count("error:") == 2 and "also 2 later frame(s), for the same reason" in printed.err
    assert "; 3 failed." in printed.out


def test_overwrite_with_a_shorter_video_removes_the_old_later_frames(checkpoint, tmp_path, capsys):
    """They stayed, with their records: the folder read as one sequence mixing two videos, and reruns skipped them."""
    import cv2

    path, out = tmp_path / "clip.avi", tmp_path / "out"
    for count in (4, 2):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
        for i in range(count):
            writer.write((_pano(32, 64, count + i) * 255).astype(np.uint8))
        writer.release()
        assert main(["predict", str(path), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution",
                     "32x64", "--outputs", "npy,cubemap", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p}clip_{i:06d}{s}" for i in range(2) for p, s in (
        (".", ".dap.json"), ("", ".npy"), ("", ".cube")))
    assert "clip.avi: removed the outputs of 2 frame(s) that an earlier version of the file left (frame 2 on)" in \
        capsys.readouterr().err


def test_overwrite_removes_an_old_videos_frames_and_kinds_where_names_have_folders(checkpoint, tmp_path, capsys):
    """Videos from two folders are named a/clip_000000...: a shorter re-export's old later frames stayed (the records
    were looked for in a folder '.a'); and an --overwrite with fewer --outputs kept the old video's other kinds (its
    PLYs) beside the new video's depth, listed by no record."""
    out = tmp_path / "out"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clip, other = tmp_path / "a" / "clip.avi", _video(tmp_path / "b" / "other.avi", 1)
    argv = ["predict", str(clip), str(other), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution",
            "32x64", "--overwrite"]
    _video(clip, 4)
    assert main([*argv, "--outputs", "npy,ply"]) == 0
    _video(clip, 2, seed=50)  # another video under the same name
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main([*argv, "--outputs", "npy"]) == 0
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted(
        f"{p}clip_{i:06d}{s}" for i in range(2) for p, s in ((".", ".dap.json"), ("", ".npy")))
    assert "a/clip.avi: removed the outputs of 2 frame(s) that an earlier version of the file left (frame 2 on)" in \
        capsys.readouterr().err
    assert sorted(p.name for p in (out / "b").glob("*.ply")) == ["other_000000.ply"]  # not another version: kept


def _video(path: Path, count: int, seed: int = 0, fps: float = 5) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 32))
    for i in range(count):
        writer.write((_pano(32, 64, seed + i) * 255).astype(np.uint8))
    writer.release()
    return path


def test_every_predicts_a_videos_frames_at_that_interval_by_their_numbers(checkpoint, tmp_path, capsys):
    clip = _video(tmp_path / "clip.avi", 10)  # 5 fps: --every 0.4 is every second frame
    out = tmp_path / "out"
    argv = ["predict", str(clip), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution", "32x64",
            "--outputs", "npy"]
    assert main([*argv, "--every", "0.4"]) == 0
    assert sorted(p.name for p in out.glob("*.npy")) == [f"clip_{i:06d}.npy" for i in (0, 2, 4, 6, 8)]
    sampled = {p.name: np.load(p) for p in out.glob("*.npy")}
    capsys.readouterr()
    # every frame afterwards: the sampled ones are the same frames made the same way, so they are kept
    assert main(argv) == 0
    assert "predicted 5 panorama(s)" in capsys.readouterr().out
    assert len(list(out.glob("*.npy"))) == 10
    for name, depth in sampled.items():
        np.testing.assert_array_equal(np.load(out / name), depth)
    # with --smooth-scale a frame's scale depends on the frames before it: another sampling is another setting
    smoothed = tmp_path / "smoothed"
    assert main([*argv[:3], str(smoothed), *argv[4:], "--smooth-scale", "0.5"]) == 0
    assert main([*argv[:3], str(smoothed), *argv[4:], "--smooth-scale", "0.5", "--every", "0.4"]) == 2
    assert "every_s was not set, now 0.4" in capsys.readouterr().err


def test_a_videos_frames_failing_alike_in_the_network_or_the_writer_are_one_line(checkpoint, tmp_path, capsys,
                                                                                   monkeypatch):
    """Only failures found before decoding were folded: a clip without a floor for --camera-height, or whose point
    clouds were empty, printed one identical line per frame (900 for 30 s)."""
    import dap.cli.predict as command
    from dap.errors import DapError

    clip = _video(tmp_path / "clip.avi", 4)
    argv = ["predict", str(clip), str(_video(tmp_path / "other.avi", 2)), "--checkpoint", str(checkpoint),
            "--resolution", "32x64", "--outputs", "npy"]

    def no_floor(*args, **kwargs):
        raise DapError("--camera-height: no floor found below the horizon (0.0% of the lower half)")

    monkeypatch.setattr(command, "predict", no_floor)
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    printed = capsys.readouterr()
    assert printed.err.count("no floor found") == 2 and printed.err.count("error:") == 4  # one line per video
    assert f"error: {clip}: also 3 later frame(s), for the same reason" in printed.err
    assert "; 6 failed." in printed.out
    monkeypatch.undo()

    def empty(pred, paths, **kwargs):
        raise DapError(f"no points for {paths['npy']} at this stride")

    monkeypatch.setattr(command, "write_outputs", empty)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    printed = capsys.readouterr()
    lines = [line for line in printed.err.splitlines() if "error:" in line]
    assert lines == [f"dap predict: error: {clip} frame 0: no points for {tmp_path / 'b' / 'clip_000000.npy'} at this "
                     "stride", f"dap predict: error: {clip}: also 3 later frame(s), for the same reason",
                     f"dap predict: error: {tmp_path / 'other.avi'} frame 0: no points for "
                     f"{tmp_path / 'b' / 'other_000000.npy'} at this stride",
                     f"dap predict: error: {tmp_path / 'other.avi'}: also 1 later frame(s), for the same reason"]


def test_every_takes_the_first_frame_at_or_after_each_interval_by_the_frames_times(tmp_path):
    """At 2.5 fps, --every 1 took every second frame (round(2.5) = 2: one every 0.8 s, 13 frames of a 10 s clip); a
    variable frame rate was sampled by the nominal one. And a huge interval overflowed."""
    from dap.io import sample_video_frames

    clip = _video(tmp_path / "clip.avi", 25, fps=2.5)
    taken = [(i, round(t, 3)) for i, t, _ in sample_video_frames(clip, 1.0)]
    assert taken == [(0, 0.0), (3, 1.2), (5, 2.0), (8, 3.2), (10, 4.0), (13, 5.2), (15, 6.0), (18, 7.2), (20, 8.0),
                     (23, 9.2)]
    assert [i for i, _, _ in sample_video_frames(clip, 1e308)] == [0]


def test_every_with_overwrite_removes_the_frames_an_earlier_version_left_between(checkpoint, tmp_path, capsys):
    clip, out = tmp_path / "clip.avi", tmp_path / "out"
    argv = ["predict", str(clip), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution", "32x64",
            "--outputs", "npy", "--overwrite"]
    _video(clip, 6)
    assert main(argv) == 0
    _video(clip, 6, seed=50)  # another video under the same name
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main([*argv, "--every", "0.4"]) == 0
    assert sorted(p.name for p in out.glob("*.npy")) == [f"clip_{i:06d}.npy" for i in (0, 2, 4)]
    assert "removed the outputs of 3 frame(s) that an earlier version of the file left (frame 1 on)" in \
        capsys.readouterr().err


def test_every_refuses_what_is_no_interval_and_notes_when_nothing_is_a_video(checkpoint, tmp_path, capsys):
    image = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray((_pano(32, 64) * 255).astype(np.uint8)).save(image)
    base = ["predict", str(image), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint), "--resolution",
            "32x64", "--outputs", "npy"]
    for bad in ("0", "-1", "abc", "nan"):
        with pytest.raises(SystemExit) as e:
            main([*base, "--every", bad])
        assert e.value.code == 2
    assert main([*base, "--every", "1"]) == 0
    assert "--every samples a video's frames; no input is a video, so it does nothing" in capsys.readouterr().err


def test_a_video_without_frames_fails(checkpoint, tmp_path, capsys):
    import cv2

    writer = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    writer.release()
    assert main(["predict", str(tmp_path / "empty.avi"), "--out", str(tmp_path / "o"), "--checkpoint",
                 str(checkpoint), "--resolution", "32x64", "--outputs", "npy"]) == 2
    assert f"{tmp_path / 'empty.avi'}: the video holds no frames" in capsys.readouterr().err


def test_a_videos_repeated_warning_is_printed_once_with_a_count(checkpoint, tmp_path, capsys):
    import cv2

    path = tmp_path / "fade.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    for i in range(4):  # three black frames, then the scene
        writer.write((_pano(32, 64) * 255 * (i == 3)).astype(np.uint8))
    writer.release()
    assert main(["predict", str(path), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                 "--resolution", "32x64", "--outputs", "npy"]) == 0
    err = capsys.readouterr().err
    assert err.count("dap predict: warning") == 2 and f"warning: {path} frame 0: input panorama is blank" in err
    assert f"warning: {path}: also on 2 later frame(s): input panorama is blank (one flat colour, no detail)" in err


def test_a_video_whose_frames_are_not_panoramas_fails_once(checkpoint, tmp_path, capsys):
    import cv2

    for name, (w, h) in {"phone.avi": (96, 54), "strip.avi": (128, 32)}.items():
        writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
        for i in range(5):
            writer.write((np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8))
        writer.release()
    args = ["--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint), "--resolution", "32x64", "--outputs", "npy"]
    assert main(["predict", str(tmp_path / "phone.avi"), str(tmp_path / "strip.avi"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("error") == 2  # one line per video, not one per frame
    assert f"error: {tmp_path / 'phone.avi'}: each of its frames is 96x54 (width x height)" in err
    assert "ordinary photograph" in err and not (tmp_path / "o" / "phone_000000.npy").exists()
    # frames wider than 2:1 are partial panoramas: padded with --pad-to-erp, every frame predicted
    assert main(["predict", str(tmp_path / "strip.avi"), "--pad-to-erp", *args]) == 0
    assert len(list((tmp_path / "o").glob("strip_*.npy"))) == 5


def test_unreadable_video_fails_alone(checkpoint, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    io.write_rgb(tmp_path / "ok.png", _pano(32, 64))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "bad.mp4"), str(tmp_path / "ok.png"), "--out", str(out),
                 "--checkpoint", str(checkpoint), "--resolution", "32x64", "--outputs", "npy"]) == 1
    assert (out / "ok.npy").exists()


# --- output names, partial outputs, our own files as inputs (issue 11, item 3) ---------------------------

def _predict_cli(inputs, out, checkpoint, *extra):
    return main(["predict", *map(str, inputs), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--resolution", "32x64", *extra])


def _files(folder):
    """Outputs in a folder, without `dap predict`'s hidden records (.<name>.dap.json)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.endswith(".dap.json"))


def test_output_names_keep_sub_folders_and_extensions_only_where_stems_collide():
    from dap.inference import output_names

    assert output_names([Path("x/a.jpg"), Path("x/b.png")]) == ["a", "b"]
    assert output_names([Path("x/a/pano.jpg"), Path("x/a/pano.png"), Path("x/b/pano.jpg")]) == [
        "a/pano.jpg", "a/pano.png", "b/pano"]
    assert output_names([Path("/data/a.jpg"), Path("/home/b.jpg")]) == ["data/a", "home/b"]
    # a.jpg.png's stem is a.jpg, the name a.jpg keeps beside a.png: it keeps its extension too (it failed as taken)
    assert output_names([Path("x/a.jpg"), Path("x/a.png"), Path("x/a.jpg.png")]) == ["a.jpg", "a.png", "a.jpg.png"]


def test_inputs_with_the_same_stem_never_overwrite_each_other(checkpoint, tmp_path, tiny_model, capsys):
    inputs = [tmp_path / "a" / "pano.jpg", tmp_path / "a" / "pano.png", tmp_path / "b" / "pano.jpg"]
    for seed, path in enumerate(inputs):
        io.write_rgb(path, _pano(32, 64, seed))
    out = tmp_path / "o"
    # The same file twice (named and inside its folder) is predicted once.
    assert _predict_cli([*inputs, tmp_path / "b"], out, checkpoint, "--outputs", "npy") == 0
    assert "predicted 3 panorama(s)" in capsys.readouterr().out
    assert _files(out) == ["a/pano.jpg.npy", "a/pano.png.npy", "b/pano.npy"]
    for path, name in zip(inputs, ["a/pano.jpg", "a/pano.png", "b/pano"], strict=True):
        pred = predict(path, tiny_model, resolution=(32, 64))
        np.testing.assert_allclose(io.read_depth(out / f"{name}.npy"), np.where(pred.range_mask, 0, pred.depth),
                                   atol=1e-5)
    # --overwrite replaces outputs made otherwise, and keeps those made this way: an interrupted --overwrite run
    # rerun goes on where it stopped (it recomputed everything before)
    assert _predict_cli(inputs, out, checkpoint, "--outputs", "npy", "--seam-pad", "0.25", "--overwrite") == 0
    assert "predicted 3" in capsys.readouterr().out and len(_files(out)) == 3
    (out / "b" / ".pano.dap.json").unlink()
    (out / "b" / "pano.npy").write_bytes(b"not ours")  # as if killed before writing b's record
    assert _predict_cli(inputs, out, checkpoint, "--outputs", "npy", "--overwrite") == 0
    assert "predicted 3 panorama(s), " in capsys.readouterr().out  # made with other settings: all redone
    (out / "b" / ".pano.dap.json").unlink()
    assert _predict_cli(inputs, out, checkpoint, "--outputs", "npy", "--overwrite") == 0
    printed = capsys.readouterr().out
    assert "predicted 1 panorama(s), " in printed and "skipped 2 with existing outputs" in printed
    assert _predict_cli(inputs, out, checkpoint, "--outputs", "npy") == 0
    assert "predicted 0 panorama(s); skipped 3" in capsys.readouterr().out


def test_a_killed_runs_record_does_not_vouch_for_outputs_it_never_wrote(checkpoint, tmp_path, capsys):
    """A run killed between its npy and its ply leaves a record listing both, incomplete. A rerun with --outputs npy
    carried the ply into its complete record, and a later file of that name (not dap's) passed as a finished
    output."""
    import json

    io.write_rgb(tmp_path / "pano.jpg", _pano(32, 64, 1))
    out = tmp_path / "out"
    assert _predict_cli([tmp_path / "pano.jpg"], out, checkpoint, "--outputs", "npy,ply,exr") == 0
    record = json.loads((out / ".pano.dap.json").read_text())
    (out / ".pano.dap.json").write_text(json.dumps({**record, "complete": False}))  # as the kill leaves it
    (out / "pano.ply").unlink()
    assert _predict_cli([tmp_path / "pano.jpg"], out, checkpoint, "--outputs", "npy") == 0
    assert json.loads((out / ".pano.dap.json").read_text())["outputs"] == ["exr", "npy"]  # the exr was written
    (out / "pano.ply").write_text("the user's own cloud")
    capsys.readouterr()
    assert _predict_cli([tmp_path / "pano.jpg"], out, checkpoint, "--outputs", "npy,ply") == 2
    assert "pano.ply already exists but is not among the outputs recorded" in capsys.readouterr().err
    assert (out / "pano.ply").read_text() == "the user's own cloud"


def test_rerun_skips_only_outputs_made_from_the_same_file_model_and_settings(checkpoint, tiny_model, tmp_path,
                                                                              capsys):
    """Outputs record what made them (.<name>.dap.json): a rerun skips them only if the input file, the model and
    every setting match; otherwise the input fails with what differs, and the old outputs stay, unless --overwrite.
    A run killed while writing leaves a record that says so: its outputs are made again. Files at the output paths
    with no record were not written by dap predict: they stay, and the input fails, unless --overwrite."""
    import json

    from dap.models import save_model

    io.write_rgb(tmp_path / "in" / "pano.jpg", _pano(32, 64, 1))
    io.write_rgb(tmp_path / "other" / "pano.png", _pano(32, 64, 2))
    out = tmp_path / "out"
    assert _predict_cli([tmp_path / "in" / "pano.jpg"], out, checkpoint, "--outputs", "npy") == 0
    record = json.loads((out / ".pano.dap.json").read_text())
    assert record["input"]["file"] == str(tmp_path / "in" / "pano.jpg")
    assert record["settings"]["resolution"] == [32, 64] and record["outputs"] == ["npy"]
    first = (out / "pano.npy").read_bytes()
    capsys.readouterr()
    assert _predict_cli([tmp_path / "in" / "pano.jpg"], out, checkpoint, "--outputs", "npy") == 0
    assert "predicted 0 panorama(s); skipped 1" in capsys.readouterr().out

    other = {k: v + 0.01 for k, v in tiny_model.state_dict().items()}
    changed = type(tiny_model)(tiny_model.cfg)
    changed.load_state_dict(other)
    runs = [
        (["--resolution", "64x128"], "resolution was [32, 64], now [64, 128]", tmp_path / "in" / "pano.jpg"),
        (["--checkpoint", str(save_model(changed, tmp_path / "changed"))], "by another model",
         tmp_path / "in" / "pano.jpg"),
        ([], f"they were made from {tmp_path / 'in' / 'pano.jpg'}", tmp_path / "other" / "pano.png"),
    ]
    for extra, difference, source in runs:
        assert _predict_cli([source], out, checkpoint, "--outputs", "npy", *extra) == 2
        err = capsys.readouterr().err
        assert difference in err and "--overwrite" in err, err
        assert (out / "pano.npy").read_bytes() == first
    io.write_rgb(tmp_path / "in" / "pano.jpg", _pano(32, 64, 3))  # the input re-exported
    assert _predict_cli([tmp_path / "in" / "pano.jpg"], out, checkpoint, "--outputs", "npy") == 2
    assert "the input file changed since" in capsys.readouterr().err

    assert _predict_cli([tmp_path / "in" / "pano.jpg"], out, checkpoint, "--outputs", "npy", "--overwrite") == 0
    assert (out / "pano.npy").read_bytes() != first
    record = json.loads((out / ".pano.dap.json").read_text())
    assert record["complete"] is True
    record["complete"] = False  # as a run killed between its first record and its last leaves it
    (out / ".pano.dap.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert _predict_cli([tmp_path / "in" / "pano.jpg"], out, checkpoint, "--outputs", "npy") == 0
    assert "predicted 1 panorama(s)" in capsys.readouterr().out
    assert json.loads((out / ".pano.dap.json").read_text())["complete"] is True
    (out / ".pano.dap.json").unlink()  # now pano.npy is a file of unknown origin (the user's ground truth, say)
    (out / "pano.npy").write_bytes(b"the user's")
    assert _predict_cli([tmp_path / "in" / "pano.jpg"], out, checkpoint, "--outputs", "npy") == 2
    err = capsys.readouterr().err
    assert "pano.npy already exists and was not written by dap predict" in err and "--overwrite" in err
    assert (out / "pano.npy").read_bytes() == b"the user's"


@pytest.mark.parametrize("kwargs, problem", [
    ({"resolution": 256}, "resolution 256 must be (height, width)"),
    ({"resolution": (32.0, 64.0)}, "resolution (32.0, 64.0) must be"),
    ({"camera_height": "1.6"}, "camera_height must be a positive number of metres below 1000, got '1.6'"),
    ({"camera_height": 1e30}, "camera_height must be a positive number of metres below 1000"),
    ({"pad_to_erp": True, "pad_top": 1.5}, "pad_top is a row number (an int), got 1.5"),
    ({"threshold": "0.5"}, "threshold is a probability from 0 to 1 (above 1: nothing is masked), got '0.5'"),
    ({"seam_pad": "0.1"}, "seam padding is a fraction of the width from 0 (off) to 0.5, got '0.1'"),
    ({"pad_top": 3}, "pad_top places a partial panorama's rows: it needs pad_to_erp=True"),
])
def test_arguments_of_the_wrong_type_are_named(tiny_model, kwargs, problem):
    with pytest.raises(DapError, match=re.escape(problem)):
        predict(_pano(32, 64), tiny_model, **kwargs)


def test_a_path_as_bytes_is_read_and_a_tilde_is_named(tiny_model, tmp_path, monkeypatch):
    io.write_rgb(tmp_path / "p.png", _pano(32, 64))
    expected = predict(tmp_path / "p.png", tiny_model, resolution=(32, 64)).depth
    np.testing.assert_array_equal(predict(os.fsencode(tmp_path / "p.png"), tiny_model, resolution=(32, 64)).depth,
                                  expected)
    with pytest.raises(DapError, match="got 9 bytes of a file, not an image"):
        predict(b"\x89PNG\r\n\x1a\n\0", tiny_model)  # a file's contents still are not an image
    with pytest.raises(UnreadableFileError, match="cannot read typo.jpg: no such file"):
        predict(b"typo.jpg", tiny_model)  # a bytes path that is wrong: was "got 8 bytes of a file"
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UnreadableFileError, match=r"no such file \('~' is not expanded \(in quotes, or from "
                                                   rf"Python\): write {tmp_path}/p.png\)"):
        predict("~/p.png", tiny_model)
    # as the CLI says them: a URL (Path would also collapse its //), a path with a space at an end, stdin
    for spec, says in [("https://example.com/x.jpg", "cannot read https://example.com/x.jpg: no such file (a URL: "
                                                      "files are not downloaded"),
                       (f"{tmp_path / 'p.png'} ", "(it has spaces at an end;"),
                       ("-", "(standard input is not read; save the image to a file")]:
        with pytest.raises(UnreadableFileError) as err:
            predict(spec, tiny_model)
        assert says in str(err.value)


def test_a_model_that_is_not_one_is_named(tiny_model):
    import copy

    for image in (_pano(32, 64), "pano.jpg"):  # swapped arguments; a path was loaded as a checkpoint ("download it")
        with pytest.raises(DapError, match=r"the first argument is a model \(DAP\); the panorama comes first"):
            predict(tiny_model, image)
    with pytest.raises(DapError, match=r"got ndarray \(the panorama comes first: dap.predict\(image, model\)\)"):
        predict([_pano(32, 64)], _pano(32, 64))  # both images
    with pytest.raises(DapError, match="model must be a loaded DAP model .* got OrderedDict"):
        predict(_pano(32, 64), tiny_model.state_dict())
    with pytest.raises(DapError, match="model is a Linear, not a DAP model"):
        predict(_pano(32, 64), torch.nn.Linear(2, 2))
    half = copy.deepcopy(tiny_model).half()  # was a torch error from the first convolution
    with pytest.raises(DapError, match=r"weights are float16; predict needs float32 weights .* call model.float\(\)"):
        predict(_pano(32, 64), half)


def test_a_point_cloud_with_no_points(tiny_model, tmp_path):
    from dap.inference import output_paths, write_outputs

    pred = predict(_pano(32, 64), tiny_model, resolution=(32, 64), threshold=0.0)  # every pixel out of range
    paths = output_paths(tmp_path, "p", ["ply", "glb"])
    with pytest.raises(DapError, match=r"no points for p.glb: every pixel that point_stride 1 keeps is out of range"):
        write_outputs(pred, paths)
    assert b"element vertex 0" in (tmp_path / "p.ply").read_bytes()  # PLY can hold an empty cloud, and does
    assert not (tmp_path / "p.glb").exists()


def test_a_rerun_asking_for_more_outputs_keeps_files_the_record_does_not_list(checkpoint, tmp_path, capsys):
    io.write_rgb(tmp_path / "in" / "pano.png", _pano(32, 64, 3))
    src, out = tmp_path / "in" / "pano.png", tmp_path / "o"
    assert _predict_cli([src], out, checkpoint, "--outputs", "npy") == 0
    (out / "pano.exr").write_bytes(b"my ground truth")  # the user's, beside dap's outputs
    (out / "pano.cube").mkdir()
    (out / "pano.cube" / "notes.json").write_text("precious")
    capsys.readouterr()
    for kinds in ("npy,exr,color", "npy,cubemap"):  # replaced the EXR / deleted the folder
        assert _predict_cli([src], out, checkpoint, "--outputs", kinds) == 2
        err = capsys.readouterr().err
        assert "already exists but is not among the outputs recorded in .pano.dap.json" in err and "--overwrite" in err
    assert (out / "pano.exr").read_bytes() == b"my ground truth"
    assert (out / "pano.cube" / "notes.json").read_text() == "precious"
    # an output a run with other settings made is removed by the --overwrite that replaces them (it stayed, unlisted,
    # beside the new npy), so asking for it again makes it
    ply = tmp_path / "p"
    assert _predict_cli([src], ply, checkpoint, "--outputs", "npy,ply") == 0
    assert _predict_cli([src], ply, checkpoint, "--outputs", "npy", "--camera-height", "1.6", "--overwrite") == 0
    assert not (ply / "pano.ply").exists()
    assert _predict_cli([src], ply, checkpoint, "--outputs", "npy,ply", "--camera-height", "1.6") == 0
    assert json.loads((ply / ".pano.dap.json").read_text())["outputs"] == ["npy", "ply"]
    # a new kind next to recorded ones, made the same way: added, and the record lists all of them
    assert _predict_cli([src], ply, checkpoint, "--outputs", "mask", "--camera-height", "1.6") == 0
    assert json.loads((ply / ".pano.dap.json").read_text())["outputs"] == ["mask", "npy", "ply"]
    capsys.readouterr()
    assert _predict_cli([src], ply, checkpoint, "--outputs", "npy,ply,mask", "--camera-height", "1.6") == 0
    assert "skipped 1 with existing outputs" in capsys.readouterr().out


def test_settings_that_do_nothing_do_not_block_a_rerun(checkpoint, tmp_path, capsys):
    io.write_rgb(tmp_path / "in" / "pano.png", _pano(32, 64, 3))
    src, out = tmp_path / "in" / "pano.png", tmp_path / "o"
    assert _predict_cli([src], out, checkpoint, "--outputs", "npy", "--smooth-scale", "0.8", "--point-stride", "4") == 0
    assert "--smooth-scale smooths over a video's frames; no input is a video" in capsys.readouterr().err
    assert _predict_cli([src], out, checkpoint, "--outputs", "npy") == 0  # was refused: smooth_scale was 0.8
    assert "skipped 1 with existing outputs" in capsys.readouterr().out
    # the same file through a symbolic link is the same input
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert _predict_cli([tmp_path / "link" / "pano.png"], out, checkpoint, "--outputs", "npy") == 0
    assert "skipped 1 with existing outputs" in capsys.readouterr().out
    # a known camera height and scale smoothing would fight over each frame's scale
    assert _predict_cli([src], out, checkpoint, "--camera-height", "1.6", "--smooth-scale", "0.5") == 2
    assert "--camera-height sets each frame's scale from its floor and --smooth-scale" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _predict_cli([src], out, checkpoint, "--camera-height", "1e6")  # at parsing, as 0 and nan are
    assert "expected a number of metres > 0 and below 1000, got '1e6'" in capsys.readouterr().err


def test_point_stride_counts_only_between_point_clouds(checkpoint, tmp_path, capsys):
    """A strided PLY added to a folder of depth maps was refused ("point_stride was 1, now 4"), and depth maps added
    beside it again; --overwrite, as the message said, only moved the refusal to the next run."""
    import json

    io.write_rgb(tmp_path / "in" / "pano.png", _pano(32, 64, 3))
    src, out = tmp_path / "in" / "pano.png", tmp_path / "o"
    record = lambda: json.loads(next(out.glob("*.json")).read_text())  # noqa: E731
    assert _predict_cli([src], out, checkpoint, "--outputs", "npy") == 0
    assert _predict_cli([src], out, checkpoint, "--outputs", "ply", "--point-stride", "4") == 0
    assert record()["settings"]["point_stride"] == 4 and record()["outputs"] == ["npy", "ply"]
    assert _predict_cli([src], out, checkpoint, "--outputs", "npy,color") == 0  # the PLY stays listed, with its 4
    assert record()["settings"]["point_stride"] == 4 and record()["outputs"] == ["color", "npy", "ply"]
    assert _predict_cli([src], out, checkpoint, "--outputs", "ply", "--point-stride", "4") == 0
    assert "skipped 1 with existing outputs" in capsys.readouterr().out
    assert _predict_cli([src], out, checkpoint, "--outputs", "ply", "--point-stride", "2") == 2  # another cloud
    assert "point_stride was 4, now 2" in capsys.readouterr().err


def test_no_output_replaces_an_input_of_the_run(checkpoint, tmp_path, capsys):
    io.write_rgb(tmp_path / "m" / "x.png", _pano(32, 64, 1))
    io.write_rgb(tmp_path / "m" / "x.mask.png", _pano(32, 64, 2))  # x's mask output would land on this input
    before = (tmp_path / "m" / "x.mask.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        code = _predict_cli([tmp_path / "m" / "x.png", tmp_path / "m" / "x.mask.png"], tmp_path / "m", checkpoint,
                            "--outputs", "npy,mask", *extra)
        assert code == 1  # x fails, x.mask is predicted
        assert f"its mask output would overwrite the input {tmp_path / 'm' / 'x.mask.png'}" in capsys.readouterr().err
        assert (tmp_path / "m" / "x.mask.png").read_bytes() == before


def test_input_that_vanished_after_listing_fails_alone(checkpoint, tmp_path, capsys):
    io.write_rgb(tmp_path / "in" / "a.png", _pano(32, 64))
    (tmp_path / "in" / "b.png").symlink_to(tmp_path / "in" / "gone.png")  # listed, but nothing to read
    assert _predict_cli([tmp_path / "in"], tmp_path / "out", checkpoint, "--outputs", "npy") == 1
    err = capsys.readouterr().err
    assert f"cannot read {tmp_path / 'in' / 'b.png'}: it is a symbolic link to {tmp_path / 'in' / 'gone.png'}, " \
           "which does not exist" in err
    assert _files(tmp_path / "out") == ["a.npy"]
    (tmp_path / "in" / "c.png").symlink_to("d.png")  # two links that point at each other
    (tmp_path / "in" / "d.png").symlink_to("c.png")
    assert _predict_cli([tmp_path / "in"], tmp_path / "out", checkpoint, "--outputs", "npy") == 1
    err = capsys.readouterr().err
    assert f"cannot read {tmp_path / 'in' / 'c.png'}: it is a symbolic link to d.png, which leads back to itself" in err


def test_partial_cubemap_folder_is_not_counted_as_done(checkpoint, tmp_path, capsys):
    io.write_rgb(tmp_path / "in" / "a.png", _pano(32, 64))
    out = tmp_path / "o"
    io.write_rgb(out / "a.cube" / "+x.rgb.png", _pano(16, 16))  # what a killed run of an old version left
    (out / ".a.cube.tmp").mkdir()  # a killed run's temporary folder
    # no record beside it: not known to be ours, so kept unless --overwrite
    assert _predict_cli([tmp_path / "in"], out, checkpoint, "--outputs", "cubemap") == 2
    assert "a.cube already exists and was not written by dap predict" in capsys.readouterr().err
    assert _predict_cli([tmp_path / "in"], out, checkpoint, "--outputs", "cubemap", "--overwrite") == 0
    printed = capsys.readouterr().out
    assert "predicted 1 panorama(s)" in printed and "skipped 0" in printed
    faces = [f"a.cube/{axis}.{part}" for axis in geometry.CUBE_FACES for part in ("depth.npy", "rgb.png")]
    assert _files(out) == sorted(faces)  # complete, and no temporary left behind
    assert _predict_cli([tmp_path / "in"], out, checkpoint, "--outputs", "cubemap") == 0
    assert "skipped 1" in capsys.readouterr().out


def test_an_input_reached_through_a_link_is_never_its_own_output(checkpoint, tmp_path, capsys):
    """Inputs and outputs were compared as spelt: an HDR panorama given through a linked folder (or predicted into
    a link to its own folder) was replaced by its own depth map with --overwrite, which the message advised."""
    (tmp_path / "hx").mkdir()
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {"RGB": _pano(32, 64)}).write(str(tmp_path / "hx" / "pano.exr"))
    before = (tmp_path / "hx" / "pano.exr").read_bytes()
    (tmp_path / "link").symlink_to(tmp_path / "hx")
    for inputs, out in (([tmp_path / "link" / "pano.exr"], tmp_path / "hx"), ([tmp_path / "hx"], tmp_path / "link")):
        assert _predict_cli(inputs, out, checkpoint, "--outputs", "exr", "--overwrite") == 2
        assert "its exr output would overwrite the input itself" in capsys.readouterr().err
        assert (tmp_path / "hx" / "pano.exr").read_bytes() == before


def test_a_folder_in_the_way_of_one_output_fails_that_input_only(checkpoint, tmp_path, capsys):
    """A folder where an output file goes ended the whole run ("check that the disk is healthy"), left a record
    saying the outputs were being written, and every rerun ended there again."""
    for name in "abc":
        io.write_rgb(tmp_path / "in" / f"{name}.png", _pano(32, 64))
    (tmp_path / "out" / "b.npy").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        assert _predict_cli([tmp_path / "in"], tmp_path / "out", checkpoint, "--outputs", "npy", *extra) == 1
        captured = capsys.readouterr()
        assert f"a folder is in the way of its npy output, {tmp_path / 'out' / 'b.npy'}" in captured.err
        assert "predicted 2 panorama(s)" in captured.out or "skipped 2" in captured.out
    assert sorted(_files(tmp_path / "out")) == ["a.npy", "c.npy"]
    # one input's output folder in the way of another's output file, made while the run goes
    io.write_rgb(tmp_path / "r" / "a.png", _pano(32, 64))
    io.write_rgb(tmp_path / "r" / "a.npy" / "b.png", _pano(32, 64))
    assert _predict_cli([tmp_path / "r" / "**" / "*.png"], tmp_path / "o2", checkpoint, "--outputs", "npy") == 1
    assert f"{tmp_path / 'o2' / 'a.npy'}" in capsys.readouterr().err
    assert _files(tmp_path / "o2") == ["a.npy/b.npy"]


def test_two_writers_of_one_cubemap_do_not_share_a_temporary_folder(tmp_path, monkeypatch):
    """The cubemap was written into a fixed ".<name>.cube.tmp", which a second writer of the same path removed
    first: the first writer's faces went with it (a FileNotFoundError mid-write)."""
    from dap.inference import _write_cubemap

    rgb, depth = _pano(32, 64), np.full((32, 64), 2.0, np.float32)
    write_depth, nested = io.write_depth, []

    def second_writer_meanwhile(path, *args, **kwargs):
        if not nested:  # while the first writer is half-way, another writes the same cubemap
            nested.append(True)
            _write_cubemap(tmp_path / "a.cube", rgb, depth * 2)
        return write_depth(path, *args, **kwargs)

    monkeypatch.setattr(io, "write_depth", second_writer_meanwhile)
    _write_cubemap(tmp_path / "a.cube", rgb, depth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cube"]  # one folder, no temporaries
    faces = sorted(p.name for p in (tmp_path / "a.cube").iterdir())
    assert faces == sorted(f"{axis}.{part}" for axis in geometry.CUBE_FACES for part in ("depth.npy", "rgb.png"))
    assert np.allclose(np.load(tmp_path / "a.cube" / "+x.depth.npy"), 2.0)  # the last writer's, whole


def test_out_folder_equal_to_input_folder_skips_our_outputs(checkpoint, tmp_path, capsys):
    src = tmp_path / "panos"
    io.write_rgb(src / "pano.png", _pano(32, 64))
    outputs = ["--outputs", "npy,png16,color,mask,normals"]
    assert _predict_cli([src], src, checkpoint, *outputs) == 0
    (src / ".pano.mask.png.1234.tmp.png").write_bytes(b"")  # a killed writer's temporary
    capsys.readouterr()
    assert _predict_cli([src], src, checkpoint, *outputs) == 0
    printed = capsys.readouterr()
    assert "predicted 0 panorama(s); skipped 1 with existing outputs; 0 failed" in printed.out
    assert "ignoring" not in printed.err  # our outputs, records and temporaries are not "other files"
    assert _predict_cli([str(src / "*.png")], src, checkpoint, *outputs) == 0  # globs too
    assert "skipped 1 with existing outputs; 0 failed" in capsys.readouterr().out
    # a cubemap's folder and its faces are ours too: '*' and '**' took them as inputs (6 faces failed, not 2:1)
    assert _predict_cli([src], src, checkpoint, "--outputs", "cubemap") == 0
    for pattern in ("*", "**"):
        capsys.readouterr()
        assert _predict_cli([str(src / pattern)], src, checkpoint, "--outputs", "cubemap") == 0, pattern
        assert "predicted 0 panorama(s); skipped 1 with existing outputs; 0 failed" in capsys.readouterr().out
    # an --out inside the input folder is no sub-folder to search
    assert _predict_cli([src], src / "depth", checkpoint, "--outputs", "npy") == 0
    assert "not searching" not in capsys.readouterr().err


def test_links_to_one_file_and_link_loops_give_each_file_once(checkpoint, tmp_path, capsys):
    """'dir/**' over a folder holding a link to itself predicted one image 81 times, ~40 folders deep; a video the
    pattern matched was also listed as "ignored, not an image" from its folder's listing."""
    import cv2

    src = tmp_path / "sl"
    io.write_rgb(src / "real" / "p.png", _pano(32, 64))
    (src / "real" / "loop").symlink_to(".")
    (src / "linkdir").symlink_to("real")
    writer = cv2.VideoWriter(str(src / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    writer.write((_pano(32, 64, 1) * 255).astype(np.uint8))
    writer.release()
    capsys.readouterr()
    assert _predict_cli([str(src / "**")], tmp_path / "out", checkpoint, "--outputs", "npy") == 0
    printed = capsys.readouterr()
    assert "predicted 2 panorama(s)" in printed.out and "ignoring" not in printed.err


def test_a_pattern_going_round_two_link_loops_is_refused_not_run_forever(tmp_path):
    """'dir/**' over a folder with two links back into it ran for ever (2^40 paths: glob follows links until the
    system's 40 hops), its memory growing; one loop gives each file ~40 paths, which the listing folds."""
    from dap.inference import expand_inputs

    io.write_rgb(tmp_path / "L" / "p.png", _pano(32, 64))
    (tmp_path / "L" / "self").symlink_to("../L")
    (tmp_path / "L" / "sub").mkdir()
    (tmp_path / "L" / "sub" / "up").symlink_to("..")
    with pytest.raises(DapError, match=r"the pattern '.*L/\*\*' reaches .* over and over through symbolic links"):
        expand_inputs([str(tmp_path / "L" / "**")])


def test_hidden_images_that_are_all_there_is_are_named(tmp_path):
    """'hid/.*.jpg' matched .secret.jpg and said "matches no panorama", a folder of it "no images found", neither
    saying the file was seen and left out for its dot."""
    from dap.inference import expand_inputs

    io.write_rgb(tmp_path / "hid" / ".secret.jpg", _pano(32, 64))
    for spec in (str(tmp_path / "hid" / ".*.jpg"), str(tmp_path / "hid")):
        with pytest.raises(DapError, match=r"1 hidden image\(s\) \(\.secret\.jpg\) are left out, as names beginning "
                                           "with a dot are"):
            expand_inputs([spec])


def test_folder_files_that_are_not_images_are_named_not_silently_dropped(checkpoint, tmp_path, capsys):
    src = tmp_path / "panos"
    io.write_rgb(src / "pano.png", _pano(32, 64))
    Image.fromarray((_pano(32, 64) * 255).astype(np.uint8)).save(src / "anim.gif")
    (src / "notes.txt").write_text("shot on a monopod")
    (src / "IMG_1.insp").write_bytes(b"raw")  # formats people have panoramas in, named with what to do
    (src / "IMG_2.insp").write_bytes(b"raw")
    (src / "sub").mkdir()
    (src / "dir.jpg").mkdir()  # a folder, whatever its name: was also listed as an image, and failed
    assert _predict_cli([src], tmp_path / "o", checkpoint, "--outputs", "npy") == 0
    printed = capsys.readouterr()
    assert "predicted 2 panorama(s)" in printed.out  # a GIF is an image, as when passed by its own path
    assert "ignoring 3 file(s) in the input folder(s) that are not images" in printed.err
    assert "IMG_1.insp, IMG_2.insp, notes.txt" in printed.err and "video" not in printed.err
    assert "note: IMG_1.insp, IMG_2.insp: an Insta360 photo, the camera's two unstitched fisheye images" in printed.err
    assert "not searching 2 sub-folder(s) of the input folder(s): dir.jpg, sub; pass them too" in printed.err
    assert "error" not in printed.err and _files(tmp_path / "o") == ["anim.npy", "pano.npy"]
    (src / "pano.png").unlink()
    (src / "anim.gif").unlink()
    assert _predict_cli([src], tmp_path / "o3", checkpoint, "--outputs", "npy") == 2
    assert "its sub-folders (dir.jpg, sub) are not searched: pass them, or a pattern such as" in capsys.readouterr().err


def test_a_double_star_pattern_matches_every_depth(checkpoint, tmp_path):
    for rel in ("top.png", "a/mid.png", "a/b/deep.png"):
        io.write_rgb(tmp_path / "in" / rel, _pano(32, 64))
    # Python's glob took ** as * (only in/a/mid.png, without a word) unless told to recurse, as shells with globstar do
    assert _predict_cli([str(tmp_path / "in" / "**" / "*.png")], tmp_path / "o", checkpoint, "--outputs", "npy") == 0
    assert sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.npy")) == [
        "a/b/deep.npy", "a/mid.npy", "top.npy"]
    # folders a ** pattern matches are searched themselves: not named as sub-folders left out
    from dap.inference import expand_inputs

    items, ignored = expand_inputs([str(tmp_path / "in" / "**")])
    assert len(items) == 3 and ignored == []


@pytest.mark.skipif(".avif" not in io.IMAGE_SUFFIXES, reason="this Pillow does not decode AVIF")
def test_a_folder_lists_the_formats_this_pillow_decodes(checkpoint, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    Image.fromarray((_pano(32, 64) * 255).astype(np.uint8)).save(tmp_path / "in" / "p.avif")
    assert _predict_cli([tmp_path / "in"], tmp_path / "o", checkpoint, "--outputs", "npy") == 0
    assert "ignoring" not in capsys.readouterr().err and _files(tmp_path / "o") == ["p.npy"]


def test_a_named_pipe_in_a_folder_fails_alone_and_does_not_hang_the_listing(checkpoint, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    io.write_rgb(tmp_path / "in" / "a.png", _pano(32, 64))
    os.mkfifo(tmp_path / "in" / "q.exr")  # the listing opened it to tell a depth EXR: it waited for a writer
    assert _predict_cli([tmp_path / "in"], tmp_path / "o", checkpoint, "--outputs", "npy") == 1  # 1 input failed
    assert "q.exr: not a regular file" in capsys.readouterr().err and _files(tmp_path / "o") == ["a.npy"]


def test_hdr_panoramas_are_inputs_and_depth_exrs_are_not(checkpoint, tmp_path, capsys):
    src = tmp_path / "panos"
    src.mkdir()
    linear = (_pano(32, 64) ** 2.2 * 25).astype(np.float32)  # an HDR file's linear radiance
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {"RGB": linear}).write(str(src / "hdri.exr"))
    cv2.imwrite(str(src / "room.hdr"), linear[..., ::-1].copy())
    io.write_depth(src / "old.exr", np.ones((32, 64), np.float32))  # a depth map: no input, and no "other file"
    assert _predict_cli([src], src, checkpoint, "--outputs", "npy,mask") == 0
    printed = capsys.readouterr()
    assert "predicted 2 panorama(s)" in printed.out and "ignoring" not in printed.err
    assert _files(src) == ["hdri.exr", "hdri.mask.png", "hdri.npy", "old.exr", "room.hdr", "room.mask.png",
                           "room.npy"]
    # the same HDR as its tone-mapped image gives the same depth
    model = load_model(checkpoint)
    tone_mapped = predict(io.tonemap_hdr(linear.copy()), model, resolution=(32, 64)).depth
    np.testing.assert_allclose(np.load(src / "hdri.npy"), tone_mapped, rtol=1e-5)
    # an .exr output in the input's own folder would overwrite the input: that input fails, the file is kept
    before = (src / "hdri.exr").read_bytes()
    assert _predict_cli([src / "hdri.exr"], src, checkpoint, "--outputs", "exr", "--overwrite") == 2
    assert "hdri.exr: its exr output would overwrite the input itself; predict into another --out" \
        in capsys.readouterr().err
    assert (src / "hdri.exr").read_bytes() == before
    assert _predict_cli([src / "hdri.exr"], tmp_path / "o", checkpoint, "--outputs", "exr") == 0
    assert io.is_depth_exr(tmp_path / "o" / "hdri.exr")


def test_file_names_with_glob_characters_are_files_first(checkpoint, tmp_path, capsys):
    for name in ("pano[1].png", "what?.png"):
        io.write_rgb(tmp_path / name, _pano(32, 64))
    assert _predict_cli([tmp_path / "pano[1].png", tmp_path / "what?.png"], tmp_path / "o", checkpoint,
                        "--outputs", "npy") == 0
    assert _files(tmp_path / "o") == ["pano[1].npy", "what?.npy"]
    assert _predict_cli([str(tmp_path / "*[[]1].png")], tmp_path / "o2", checkpoint, "--outputs", "npy") == 0
    assert _files(tmp_path / "o2") == ["pano[1].npy"]  # a pattern still globs; [[] is a literal [
    assert _predict_cli([str(tmp_path / "pano[1].pn*")], tmp_path / "o3", checkpoint, "--outputs", "npy") == 2
    assert "write [[] for a literal [" in capsys.readouterr().err


def test_an_input_whose_output_names_would_be_too_long_fails_alone(checkpoint, tmp_path, capsys):
    long_name = "p" * 240 + ".png"  # fine as a file name; its outputs' temporary names are not
    io.write_rgb(tmp_path / "in" / "ok.png", _pano(32, 64))
    Image.fromarray((_pano(32, 64) * 255).astype(np.uint8)).save(tmp_path / "in" / long_name)  # no temporary
    assert _predict_cli([tmp_path / "in"], tmp_path / "o", checkpoint, "--outputs", "npy,color") == 1
    printed = capsys.readouterr()
    assert "predicted 1 panorama(s)" in printed.out and _files(tmp_path / "o") == ["ok.color.png", "ok.npy"]
    assert "its output files would have names of up to 273 bytes" in printed.err and "rename the input" in printed.err
    deep = tmp_path / "/".join(["d" * 200] * 19)
    out = deep / ("o" * (4060 - len(os.fsencode(str(deep))) - 1))  # 4,060 bytes: fits; its outputs' paths do not
    assert _predict_cli([tmp_path / "in" / "ok.png"], out, checkpoint, "--outputs", "npy") == 2
    assert "its output paths would be up to" in capsys.readouterr().err


def test_a_file_where_an_output_folder_goes_fails_that_input_alone(checkpoint, tmp_path, capsys):
    for part in ("a", "b"):
        io.write_rgb(tmp_path / part / "pano.png", _pano(32, 64))  # outputs a/pano.*, b/pano.*
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a").write_text("the user's notes")  # was a write error that ended the run, b unpredicted
    argv = [tmp_path / "a" / "pano.png", tmp_path / "b" / "pano.png"]
    assert _predict_cli(argv, tmp_path / "o", checkpoint, "--outputs", "npy") == 1
    err = capsys.readouterr().err
    assert f"its outputs go in the folder {tmp_path / 'o' / 'a'}, but {tmp_path / 'o' / 'a'} is a file" in err
    assert (tmp_path / "o" / "a").read_text() == "the user's notes" and (tmp_path / "o" / "b" / "pano.npy").exists()


def test_missing_input_is_reported_before_the_model_is_loaded(tmp_path, capsys):
    # the model path does not exist either: the input is checked first (a ViT-L load would take a while)
    assert main(["predict", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path / "no_model")]) == 2
    assert f"no such file or folder: {tmp_path / 'nope.jpg'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")  # a dangling link says where it points
    assert main(["predict", str(tmp_path / "link.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'link.jpg'} (a symbolic link to {tmp_path / 'gone.jpg'}, which does not exist)" \
        in capsys.readouterr().err
    # what a missing path most likely is, where that can be told
    io.write_rgb(tmp_path / "pano.jpg", _pano(32, 64))
    for spec, says in [("https://example.com/pano.jpg", "(a URL: files are not downloaded; download it"),
                       ("~/pano.jpg", "('~' is not expanded (in quotes, or from Python): write "
                        + os.path.expanduser("~/pano.jpg")),
                       (f"{tmp_path / 'pano.jpg'} ", f"(it has spaces at an end; '{tmp_path / 'pano.jpg'}' exists)"),
                       ("-", "(standard input is not read; save the image to a file and pass its path)")]:
        assert main(["predict", spec, "--out", str(tmp_path / "o")]) == 2
        assert " ".join(f"no such file or folder: {spec} {says}".split()) in capsys.readouterr().err


def test_video_frame_name_taken_by_an_image_fails_instead_of_overwriting(checkpoint, tmp_path, capsys):
    import cv2

    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    writer.write((_pano(32, 64, 1) * 255).astype(np.uint8))
    writer.release()
    io.write_rgb(tmp_path / "clip_000000.png", _pano(32, 64, 2))
    out = tmp_path / "o"
    assert _predict_cli([tmp_path / "clip_000000.png", tmp_path / "clip.avi"], out, checkpoint,
                        "--outputs", "npy") == 1
    assert "its output name 'clip_000000' is taken by" in capsys.readouterr().err
    assert _files(out) == ["clip_000000.npy"]


def test_video_cut_short_is_reported_as_failed(checkpoint, tmp_path, capsys):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    for i in range(12):
        writer.write((_pano(32, 64, i) * 255).astype(np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])  # a copy interrupted mid-way
    out = tmp_path / "o"
    capsys.readouterr()
    assert _predict_cli([path], out, checkpoint, "--outputs", "npy") == 1
    captured = capsys.readouterr()
    done = len(_files(out))
    assert 0 < done < 12 and f"predicted {done} panorama(s)" in captured.out and "1 failed" in captured.out
    assert f"cannot read {path}: frame {done} of 12 cannot be decoded" in captured.err


def test_a_bug_raising_value_error_is_not_reported_as_a_bad_input(checkpoint, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("a bug in our code")

    monkeypatch.setattr("dap.cli.predict.predict", bug)
    io.write_rgb(tmp_path / "pano.png", _pano(32, 64))
    with pytest.raises(ValueError, match="a bug in our code"):  # keeps its traceback: not "pano.png failed"
        _predict_cli([tmp_path / "pano.png"], tmp_path / "o", checkpoint)


# --- input ranges, NaN pixels, bad checkpoints (issue 11, item 4) -----------------------------------------

def test_input_range_and_layout_follow_the_dtype():
    u8 = (_pano(32, 64) * 255).round().astype(np.uint8)
    want = u8.astype(np.float32) / 255
    same = [u8, torch.from_numpy(u8).permute(2, 0, 1), torch.from_numpy(u8), want, torch.from_numpy(want),
            torch.from_numpy(want).permute(2, 0, 1), torch.from_numpy(want).half().permute(2, 0, 1),
            u8.astype(np.uint16) * 257, np.concatenate([u8, np.full_like(u8[..., :1], 255)], axis=-1)]
    for image in same:
        np.testing.assert_allclose(to_rgb(image), want, atol=1e-3)
    np.testing.assert_array_equal(to_rgb(u8[..., 0]), np.repeat(want[..., :1], 3, axis=-1))  # grey
    np.testing.assert_array_equal(to_rgb(torch.from_numpy(u8[None, ..., 0])), to_rgb(u8[..., 0]))  # (1, H, W)
    np.testing.assert_array_equal(to_rgb(u8), want)  # exactly /255 (scaled in place, not approximately)
    # (3, 2, 4) reads as a 2x4 RGB panorama (channels first) or a 3x2 RGBA image: the panorama wins; (2, 4, 3) and
    # (4, 8, 4) have one reading
    tiny = u8[:2, :4]
    np.testing.assert_array_equal(to_rgb(tiny.transpose(2, 0, 1)), to_rgb(tiny))
    assert to_rgb(np.full((4, 8, 4), 255, np.uint8)).shape == (4, 8, 3)
    grey = Image.fromarray(u8[..., 0]).convert("LA").convert("La")  # premultiplied alpha: Pillow's RGB needs LA
    np.testing.assert_array_equal(to_rgb(grey), to_rgb(u8[..., 0]))


@pytest.mark.filterwarnings("ignore:input panorama is blank")  # it is, nearly: that is the point
def test_8_bit_values_in_16_bits_get_a_warning_at_the_callers_line(tiny_model):
    u8 = (_pano(32, 64) * 255).round().astype(np.uint8)
    for image in (u8.astype(np.uint16), Image.fromarray(u8[..., 0]).convert("I")):
        with pytest.warns(InputWarning, match="its 16-bit pixels reach only 2.. of 65535, so it reads as almost black; "
                                              "if it holds 8-bit") as caught:
            predict(image, tiny_model, resolution=(32, 64))
        assert [Path(w.filename).name for w in caught if "16-bit" in str(w.message)] == ["test_inference.py"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full-range 16-bit: no warning
        to_rgb(u8.astype(np.uint16) * 257)


def test_input_warnings_point_at_the_callers_line(tiny_model, tmp_path):
    """Each warning had a fixed depth: a file's note pointed into inference.py, to_rgb called directly one frame
    past the caller."""
    rgba = np.concatenate([(_pano(32, 64) * 255).astype(np.uint8), np.zeros((32, 64, 1), np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "hole.png")
    holes = _pano(32, 64)
    holes[0, 0] = np.nan
    calls = [lambda: predict(tmp_path / "hole.png", tiny_model, resolution=(32, 64)),
             lambda: to_rgb(tmp_path / "hole.png"), lambda: to_rgb(rgba), lambda: to_rgb(holes),
             lambda: predict([holes], tiny_model, resolution=(32, 64)),
             lambda: predict(np.full((32, 64, 3), 0.5, np.float32), tiny_model, resolution=(32, 64))]  # blank
    for call in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            call()
        assert caught and {Path(w.filename).name for w in caught if w.category is InputWarning} == \
            {"test_inference.py"}, [(w.filename, str(w.message)) for w in caught]


def test_a_float32_image_is_used_without_a_copy(tiny_model):
    """What dap.io decodes (float32, (H, W, 3)) goes through as it is: a 16K panorama is 1.6 GB a copy."""
    from dap.inference import to_rgb

    rgb = _pano(32, 64).astype(np.float32)
    assert to_rgb(rgb) is rgb or np.shares_memory(to_rgb(rgb), rgb)
    assert np.shares_memory(predict(rgb, tiny_model, resolution=(32, 64)).rgb, rgb)
    grey = rgb[..., 0]  # broadcast to 3 channels: read-only, so copied into an array of its own
    assert to_rgb(grey).flags.writeable and not np.shares_memory(to_rgb(grey), grey)
    rgba = np.concatenate([rgb, np.ones_like(rgb[..., :1])], axis=-1)
    assert to_rgb(rgba).flags.c_contiguous and to_rgb(rgba).shape == (32, 64, 3)


@pytest.mark.parametrize("image, message", [
    (np.full((32, 64, 3), 200.0), r"float pixels must be in \[0, 1\], got 200..200; divide 0-255 images by 255"),
    (np.full((32, 64, 3), -0.5, np.float32), r"got -0.5..-0.5"),
    (np.full((32, 64, 3), 37.5, np.float32), r"got 37.5..37.5; .*expose linear HDR radiance with dap.io.tonemap_hdr"),
    (np.zeros((32, 64, 3), np.int32), "pixels of type int32 are not supported; pass uint8"),
    (np.zeros((32, 64, 2), np.uint8), r"one image array of shape .* got shape \(32, 64, 2\)"),
    (np.zeros((2, 32, 64, 3, 1), np.uint8), "expected a path, a PIL image or one image array of shape"),
    ([np.zeros((2, 32, 64, 3), np.uint8)], r"batch image 0: .* got shape \(2, 32, 64, 3\); a list of batches: pass one "
                                           "list of images, or one 4-D array"),
    (None, "got NoneType None"),
    ({"rgb": 1}, "got dict {'rgb': 1}"),
    (b"\xff\xd8\xff\xe0", r"got 4 bytes of a file, not an image; pass its path, or decode it first"),
    ("", "the path is empty"),
])
def test_bad_input_values_are_explained(tiny_model, image, message):
    with pytest.raises(DapError, match=message):
        predict(image, tiny_model, resolution=(32, 64))


def test_pil_images_in_16_bit_and_float_modes_keep_their_range(tmp_path):
    grey = _pano(32, 64)[..., 0]
    for image in (Image.fromarray((grey * 65535).round().astype(np.uint16)), Image.fromarray(grey)):  # I;16, F
        np.testing.assert_allclose(to_rgb(image), np.repeat(grey[..., None], 3, axis=2), atol=2e-5)
        image.save(tmp_path / "g.tif")  # the same as a file of that mode reads
        np.testing.assert_allclose(to_rgb(image), to_rgb(tmp_path / "g.tif"), atol=2e-5)
    assert to_rgb(Image.fromarray((grey * 255).astype(np.uint8)).convert("P")).shape == (32, 64, 3)


def test_uint8_chw_tensor_is_not_clipped_to_white(tiny_model):
    u8 = (_pano(32, 64) * 255).round().astype(np.uint8)
    with pytest.warns(InputWarning, match="blank"):
        white = predict(np.ones((32, 64, 3), np.float32), tiny_model, resolution=(32, 64)).depth
    got = predict(torch.from_numpy(u8).permute(2, 0, 1), tiny_model, resolution=(32, 64)).depth
    np.testing.assert_allclose(got, predict(u8.astype(np.float32) / 255, tiny_model, resolution=(32, 64)).depth,
                               atol=1e-5)
    assert np.abs(got - white).max() > 1e-3


def test_nan_pixels_become_black_with_a_warning(tiny_model):
    rgb = _pano(32, 64)
    holes = rgb.copy()
    holes[5, 7] = np.nan
    holes[20, 30, 1] = np.inf
    with pytest.warns(InputWarning, match="input image: 2 of its pixels are NaN or infinite; they are set to 0"):
        got = predict(holes, tiny_model, resolution=(32, 64))
    assert np.isfinite(got.depth).all()
    black = rgb.copy()
    black[5, 7] = 0
    black[20, 30, 1] = 0
    np.testing.assert_array_equal(got.depth, predict(black, tiny_model, resolution=(32, 64)).depth)


def test_training_samples_use_the_same_range_rule():
    from dap.train import to_training_sample

    u8 = (_pano(8, 16) * 255).round().astype(np.uint8)
    depth = np.ones((8, 16), np.float32)
    s = to_training_sample({"rgb": torch.from_numpy(u8).permute(2, 0, 1), "depth": depth})
    torch.testing.assert_close(s["rgb"], torch.from_numpy(u8).permute(2, 0, 1).float() / 255)
    # A dark uint8 image (max <= 1.5) used to be taken as [0, 1] floats; the dtype decides now.
    dark = to_training_sample({"rgb": np.ones((8, 16, 3), np.uint8), "depth": depth})["rgb"]
    torch.testing.assert_close(dark, torch.full((3, 8, 16), 1 / 255))
    with pytest.raises(DapError, match="training sample: float pixels must be in"):
        to_training_sample({"rgb": u8.astype(np.float32), "depth": depth})


@pytest.mark.parametrize("kwargs, message", [
    ({"resolution": (64, 64)}, r"resolution \(64, 64\) must be \(height, width\) of a 2:1 panorama in multiples of 16"),
    ({"resolution": (-16, -32)}, "must be .* of a 2:1 panorama"),
    ({"resolution": (40, 80)}, "in multiples of 16"),
    ({"threshold": -0.5}, r"threshold is a probability from 0 to 1 \(above 1: nothing is masked\), got -0.5"),
    ({"threshold": math.nan}, "threshold is a probability"),
    ({"device": "tpu"}, "unknown device 'tpu'; use cpu, cuda, cuda:N or mps"),
    ({"device": "cuda:7"}, "device 'cuda:7': "),  # no CUDA here, or too few devices
    ({"device": "meta"}, "device 'meta' is not supported; use cpu, cuda, cuda:N or mps"),  # emptied the model
    ({"resolution": np.array([32, 60])}, r"resolution \(32, 60\) must be"),  # was numpy's "truth value ... ambiguous"
    ({"resolution": ()}, r"resolution \(\) must be"),
    ({"level": "no"}, "level is True or False, got 'no'"),  # was taken as True
    ({"pad_to_erp": 1.5}, "pad_to_erp is True or False, got 1.5"),
])
def test_bad_predict_arguments_are_explained(tiny_model, kwargs, message):
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with pytest.raises(DapError, match=message):
        predict(_pano(32, 64), tiny_model, **kwargs)
    for key, value in tiny_model.state_dict().items():  # the caller's model is as it was
        torch.testing.assert_close(value, weights[key])


def test_infer_refuses_integer_pixels(tiny_model):
    """A uint8 image given to infer (documented as a step of its own) came back as NaN depth."""
    from dap.inference import infer, to_rgb

    u8 = (_pano(32, 64) * 255).astype(np.uint8)
    with pytest.raises(DapError, match="the network's input must be float RGB in .0, 1., got uint8; convert images "
                                       "with dap.inference.to_rgb first"):
        infer(tiny_model, u8, (32, 64))
    assert torch.isfinite(infer(tiny_model, to_rgb(u8), (32, 64))["depth"]).all()


def test_a_closed_pil_image_is_explained(tiny_model, tmp_path):
    io.write_rgb(tmp_path / "a.jpg", _pano(32, 64))
    with Image.open(tmp_path / "a.jpg") as image:
        pass
    with pytest.raises(DapError, match=r"input image: the PIL image was closed before its pixels were read; call "
                                       r"image.load\(\) inside"):
        predict(image, tiny_model, resolution=(32, 64))  # was a bare AssertionError
    with Image.open(tmp_path / "a.jpg") as image:
        image.load()
    assert predict(image, tiny_model, resolution=(32, 64)).depth.shape == (32, 64)  # loaded, then closed: fine


def test_resolution_may_be_an_array(tiny_model):
    np.testing.assert_array_equal(predict(_pano(32, 64), tiny_model, resolution=np.array([32, 64])).depth,
                                  predict(_pano(32, 64), tiny_model, resolution=(32, 64)).depth)


@pytest.mark.parametrize("spec", [None, "", 5])
def test_load_model_names_what_it_was_given(spec):
    with pytest.raises(DapError, match=r"expected a model name \(dap-tiny-synth, dap-vitl\), a folder or a "
                                       rf"checkpoint file, got {re.escape(repr(spec))}; dap.load_model"):
        load_model(spec)


def test_load_model_of_a_loaded_model_is_short(tiny_model):
    with pytest.raises(DapError, match=r"^got a DAP module: it is loaded already, use it as it is") as err:
        load_model(tiny_model)  # was the module's repr: 165 lines
    assert len(str(err.value)) < 200
    with pytest.raises(DapError, match=r"got array\(\[\[0\.") as err:
        load_model(np.zeros((100, 100)))
    assert len(str(err.value)) < 300


def test_bad_seam_pad_is_refused(tiny_model, checkpoint, tmp_path, capsys):
    with pytest.raises(DapError, match="seam padding is a fraction of the width from 0"):
        predict(_pano(32, 64), tiny_model, seam_pad=5)
    io.write_rgb(tmp_path / "a.png", _pano(32, 64))
    assert _predict_cli([tmp_path / "a.png"], tmp_path / "o", checkpoint, "--seam-pad", "-1") == 2
    assert "got -1.0" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_says_once_when_it_uses_the_bundled_model(tmp_path, capsys):
    from dap.cli import main

    rgb = np.random.default_rng(0).random((32, 64, 3)).astype(np.float32)
    io.write_rgb(tmp_path / "a.png", rgb)
    io.write_rgb(tmp_path / "b.png", rgb[:, ::-1])
    assert main(["predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "o"),
                 "--outputs", "npy", "--resolution", "32x64"]) == 0
    err = capsys.readouterr().err
    assert err.count("bundled dap-tiny-synth") == 1 and "--model dap-vitl" in err
    # not its own working resolution (256x512): said once per run, not per input
    assert err.count("working resolution 32x64 is not the one this model was calibrated at, 256x512") == 1
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o2"), "--outputs", "npy",
                 "--resolution", "256x512", "--model", "dap-tiny-synth"]) == 0
    err = capsys.readouterr().err
    assert "bundled" not in err  # a model chosen by name is not announced
    assert "calibrated at" not in err  # its own resolution, given explicitly: nothing to say


def test_a_calibrated_model_at_another_working_resolution_gets_a_note():
    """The bundled model's depth scale and latitude profile were fitted at 256x512 (its AbsRel on held-out rooms
    rises 13%-4x elsewhere): another --resolution gets a note; its own, none given, or an uncalibrated model (a
    random one, the official release) none."""
    import dataclasses

    from dap.inference import other_resolution_note
    from dap.models.registry import MODELS

    bundled = MODELS["dap-tiny-synth"].config
    note = other_resolution_note((512, 1024), bundled)
    assert note is not None and "512x1024 is not the one this model was calibrated at, 256x512" in note
    assert other_resolution_note((256, 512), bundled) is None and other_resolution_note(None, bundled) is None
    assert other_resolution_note((512, 1024), dataclasses.replace(bundled, latitude_scale=())) is not None  # scale
    raw = dataclasses.replace(bundled, depth_scale=1.0, latitude_scale=())
    assert other_resolution_note((512, 1024), raw) is None
    assert other_resolution_note((256, 512), MODELS["dap-vitl"].config) is None


def test_the_python_api_warns_once_per_line_for_a_calibrated_model_off_its_resolution(tmp_path):
    """`dap predict` says it in a note; `dap.predict(img, resolution=...)` said nothing while the bundled model's
    depth scale was 13% to 4x off. A SettingWarning at the caller's line (once per line, as Python shows warnings);
    its own resolution or an uncalibrated model, none."""
    import warnings

    from dap.errors import SettingWarning
    from dap.models import create_model

    bundled = load_model("dap-tiny-synth")
    rgb = np.random.default_rng(0).random((128, 256, 3)).astype(np.float32)
    with pytest.warns(SettingWarning, match=r"working resolution 128x256 is not the one this model was calibrated "
                                            r"at, 256x512.*Leave resolution out") as caught:
        predict(rgb, bundled, resolution=(128, 256))
    assert caught[0].filename == __file__  # the caller's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingWarning)
        predict(rgb, bundled)
        predict(rgb, bundled, resolution=(256, 512))
        predict(rgb, create_model("dap_tiny").eval(), resolution=(32, 64))  # uncalibrated


def test_tta_averages_the_panorama_its_mirror_and_their_half_turns(tmp_path):
    """`tta`: four forwards (the panorama, its mirror image, each turned half a turn about the vertical), each
    output turned back; each view weighted down towards its own seam (the turned views have theirs in the middle:
    averaged evenly, half of the seam's jump moved there), depth averaged in log space, the range probability in
    logit space (averaged as probabilities, one view a little below a calibrated 0.999 unmasked a pixel that three
    views mask)."""
    from dap.inference import infer

    torch.manual_seed(0)
    model = LocalNet().eval()
    rgb = np.random.default_rng(1).random((64, 128, 3), dtype=np.float32)
    with torch.inference_mode():  # as predict runs it
        views = []
        for mirror in (False, True):
            for turn in (0, 64):
                x = np.roll(rgb[:, ::-1] if mirror else rgb, turn, axis=1)
                out = {k: np.roll(v[0, 0].numpy(), -turn, axis=1) for k, v in infer(model, x, (64, 128)).items()}
                views.append({k: v[:, ::-1] if mirror else v for k, v in out.items()})
        got = {k: v[0, 0].numpy() for k, v in infer(model, rgb, (64, 128), tta=True).items()}
    middle = 1 - np.abs(2 * (np.arange(128) + 0.5) / 128 - 1)  # 0 at the seam, 1 in the middle
    weights = [middle, 1 - middle, middle[::-1], (1 - middle)[::-1]]  # as the views above: plain, turned, mirrored
    weights = [w / 2 for w in weights]  # each column's four weights sum to 1

    def mean(values):
        return sum(w * v for w, v in zip(weights, values, strict=True))

    logit = [np.log(v["out_of_range_prob"] / (1 - v["out_of_range_prob"])) for v in views]
    np.testing.assert_allclose(got["depth"], np.exp(mean([np.log(v["depth"]) for v in views])), rtol=1e-5)
    np.testing.assert_allclose(got["out_of_range_prob"], 1 / (1 + np.exp(-mean(logit))), atol=1e-6)
    assert np.abs(got["depth"] - views[0]["depth"]).max() > 1e-3  # the views differ: the test can fail
    pred = predict(rgb, model, resolution=(64, 128), tta=True)
    np.testing.assert_allclose(pred.out_of_range_prob, got["out_of_range_prob"], atol=1e-6)
    with pytest.raises(DapError, match="tta is True or False"):
        predict(rgb, model, resolution=(64, 128), tta="yes")


def test_tta_leaves_no_seam_in_the_middle_of_a_real_panorama():
    """Averaged evenly, the turned views put half of the 0/360 seam's jump into the middle column, which had none."""
    from dap.inference import infer

    rgb = cv2.resize(io.read_rgb(Path(dap.__file__).parent / "assets" / "samples" / "indoor_lebombo.jpg"), (256, 128),
                     interpolation=cv2.INTER_AREA)
    model = dap.load_model("dap-tiny-synth")
    with torch.inference_mode():
        plain, tta = (infer(model, rgb, (128, 256), tta=t)["depth"][0, 0].numpy() for t in (False, True))

    def jump(d):  # mean |log| step from each column to the one before it, the seam's at column 0
        return np.abs(np.log(d / np.roll(d, 1, axis=1))).mean(0)

    typical = np.median(jump(plain))
    assert jump(plain)[0] > 5 * typical  # the seam this network leaves
    assert jump(tta)[128] < 2 * typical and jump(tta)[0] < jump(plain)[0] / 2


def test_cli_tta_is_recorded_and_reaches_eval(checkpoint, tmp_path, tiny_model, capsys):
    io.write_rgb(tmp_path / "in" / "a.png", _pano(32, 64, 1))
    common = [str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--resolution", "32x64", "--outputs", "npy",
              "--out", str(tmp_path / "out")]
    assert main(["predict", *common, "--tta", "--precision", "fp32"]) == 0
    want = predict(io.read_rgb(tmp_path / "in" / "a.png"), tiny_model, resolution=(32, 64), tta=True, precision="fp32")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a.npy"), np.where(want.range_mask, 0, want.depth),
                               rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["predict", *common, "--precision", "fp32"]) == 2  # made otherwise: refused without --overwrite
    assert "tta was True, now not set" in capsys.readouterr().err
    # dap eval --tta scores what dap predict --tta wrote, and caches it apart from the plain predictions
    io.write_depth(tmp_path / "data" / "depth" / "a.npy", np.full((32, 64), 2.0, np.float32))
    io.write_rgb(tmp_path / "data" / "rgb" / "a.png", io.read_rgb(tmp_path / "in" / "a.png"))
    scored = {}
    for how, extra in (("saved", ["--predictions", str(tmp_path / "out")]),
                       ("tta", ["--checkpoint", str(checkpoint), "--resolution", "32x64", "--tta"]),
                       ("plain", ["--checkpoint", str(checkpoint), "--resolution", "32x64"])):
        out = tmp_path / f"eval_{how}"
        assert main(["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out), *extra]) == 0
        scored[how] = json.loads((out / "metrics.json").read_text())["protocols"]["metric"]["per_image_mean"]
    assert scored["tta"]["abs_rel"] == pytest.approx(scored["saved"]["abs_rel"], rel=1e-5)
    assert scored["tta"]["abs_rel"] != scored["plain"]["abs_rel"]


def test_api_arguments_of_the_wrong_kind_say_what_to_pass(tmp_path):
    """Tracebacks from inside a library (IndexError, TypeError, Pillow's ValueError, torch's RuntimeError) where a
    user passed an argument of another kind than meant."""
    model = dap.load_model("dap-tiny-synth")
    pred = predict(_pano(128, 256), model)
    with pytest.raises(DapError, match=r"no output kind given; choose from npy, exr"):
        pred.save(tmp_path / "x", [])  # was IndexError
    with pytest.raises(DapError, match=r"outputs is an output kind or a list of them"):
        pred.save(tmp_path / "x", None)  # was TypeError
    written = pred.save(os.fsencode(tmp_path / "b"), ["npy"])  # a bytes stem, as predict takes bytes paths
    assert written == [tmp_path / "b.npy"]
    np.testing.assert_array_equal(io.read_depth(os.fsencode(tmp_path / "b.npy")), io.read_depth(tmp_path / "b.npy"))
    io.write_rgb(tmp_path / "p.png", _pano())
    assert io.read_rgb(os.fsencode(tmp_path / "p.png")).shape == (48, 96, 3)
    image = Image.open(tmp_path / "p.png")
    image.close()
    with pytest.raises(DapError, match="the PIL image was closed before its pixels were read"):
        predict(image, model)  # was "ValueError: Operation on closed image"
    io.write_depth(tmp_path / "g.npy", torch.full((4, 8), 2.0, requires_grad=True))  # was RuntimeError
    assert io.read_depth(tmp_path / "g.npy").tolist() == [[2.0] * 8] * 4
    with pytest.raises(ValueError, match=r"depth_to_points expects a distance map of shape \(\.\.\., H, W\)"):
        geometry.depth_to_points(np.ones(8))  # was IndexError
