import os

import numpy as np
import pytest
import torch
from PIL import Image

import dap
from conftest import box_room_depth
from dap import geometry, io
from dap.cli import main
from dap.errors import DapError, NotPanoramaError
from dap.inference import Prediction, predict, seam_pad_columns
from dap.models import save_model


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


def test_wrong_aspect_is_an_error_unless_padded(tiny_model):
    with pytest.raises(NotPanoramaError, match="2:1"):
        predict(_pano(40, 64), tiny_model, resolution=(32, 64))
    res = predict(_pano(24, 64), tiny_model, resolution=(32, 64), pad_to_erp=True)
    assert res.depth.shape == (32, 64) and res.valid_rows == slice(4, 28)
    assert res.range_mask[:4].all() and res.range_mask[28:].all() and (res.depth[:4] == 0).all()
    with pytest.raises(NotPanoramaError, match="too tall"):
        predict(_pano(40, 64), tiny_model, resolution=(32, 64), pad_to_erp=True)


def test_seam_padding_width():
    assert seam_pad_columns(1024, 1 / 16) == 64 and seam_pad_columns(64, 1 / 16) == 0
    assert seam_pad_columns(256, 1 / 8) == 32


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
    ply = io.read_ply(out / "a.ply")
    assert len(ply["points"]) == int((valid > 0).sum())
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
    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    assert main(["predict", str(empty), "--out", str(locked / "sub"), "--checkpoint", str(checkpoint)]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    io.write_rgb(tmp_path / "ok.png", _pano(32, 64))
    assert main(["predict", str(tmp_path / "ok.png"), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                 "--outputs", "npy,bogus"]) == 2
    assert "unknown output kind" in capsys.readouterr().err


def test_geometry_of_prediction_matches_geometry_module(tiny_model):
    res = predict(_pano(32, 64), tiny_model, resolution=(32, 64))
    np.testing.assert_allclose(res.points, geometry.depth_to_points(res.depth), rtol=1e-6)


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


def test_scale_smoothing_follows_moving_average_of_medians():
    from dap.inference import ScaleSmoother

    def frame(scale):
        d = np.full((4, 8), 2.0 * scale, np.float32)
        return Prediction(rgb=np.zeros((4, 8, 3), np.float32), depth=d, range_mask=np.zeros((4, 8), bool),
                          out_of_range_prob=np.zeros((4, 8), np.float32))

    smooth = ScaleSmoother(0.5)
    a, b = frame(1.0), frame(4.0)
    smooth(a, "v.mp4")
    smooth(b, "v.mp4")
    np.testing.assert_allclose(a.depth, 2.0)
    np.testing.assert_allclose(b.depth, 4.0, rtol=1e-6)  # exp(0.5 log 2 + 0.5 log 8) = 4
    c = frame(4.0)
    smooth(c, "other.mp4")  # a new video starts afresh
    np.testing.assert_allclose(c.depth, 8.0)


def test_video_input_frames_are_predicted(checkpoint, tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 32))
    for i in range(3):
        writer.write((_pano(32, 64, i) * 255).astype(np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), "--checkpoint", str(checkpoint), "--resolution",
                 "32x64", "--outputs", "npy", "--smooth-scale", "0.8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_000000.npy", "clip_000001.npy", "clip_000002.npy"]


def test_unreadable_video_fails_alone(checkpoint, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    io.write_rgb(tmp_path / "ok.png", _pano(32, 64))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "bad.mp4"), str(tmp_path / "ok.png"), "--out", str(out),
                 "--checkpoint", str(checkpoint), "--resolution", "32x64", "--outputs", "npy"]) == 1
    assert (out / "ok.npy").exists()
