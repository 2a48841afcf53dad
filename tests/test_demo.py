"""`dap demo`: the page's handler on good and bad uploads, and the whole app driven in a headless Chromium."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import dual_fisheye, photo_sphere_xmp
from dap import geometry, io
from dap.demo import DOWNLOADS, respond, samples
from dap.inference import resolve_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [  # gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def _script():
    spec = importlib.util.spec_from_file_location("demo_screenshot", ROOT / "scripts" / "demo_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return resolve_model(None, "cpu")


@pytest.fixture(scope="module")
def small_panorama(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pano") / "small.jpg"
    Image.open(samples()[0]).resize((256, 128)).save(path)
    return path


def test_samples_ship_with_their_credits():
    names = sorted(p.name for p in samples())
    credits = (samples()[0].parent / "credits.csv").read_text()
    assert len(names) >= 2 and all(name in credits for name in names)
    for path in samples():
        h, w = io.read_rgb(path).shape[:2]
        assert w == 2 * h <= 1024


def test_the_page_gets_every_output(model, small_panorama, tmp_path):
    depth, mask, normals, glb, downloads, summary = respond(str(small_panorama), False, model, tmp_path)
    assert [Path(p).suffix for p in downloads] == [f".{k}" for k in DOWNLOADS]
    assert Image.open(depth).size[0] == 256 and Image.open(depth).size[1] > 128  # the legend strip below
    assert Image.open(mask).size == Image.open(normals).size == (256, 128)
    points = np.concatenate([g.vertices for g in trimesh.load(glb).geometry.values()])
    assert len(points) > 1000 and " m;" in summary and "256x128" in summary
    respond(str(small_panorama), False, model, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # a click clears the previous click's files


def test_what_predict_warns_of_is_shown_on_the_page(model, small_panorama, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("gradio.Warning", lambda text, *a, **k: shown.append(text))
    raw = tmp_path / "raw.jpg"
    io.write_rgb(raw, dual_fisheye(io.read_rgb(small_panorama)))
    respond(str(raw), False, model, tmp_path / "work")
    assert len(shown) == 1 and "looks like an unstitched dual-fisheye image" in shown[0]
    shown.clear()
    respond(str(small_panorama), False, model, tmp_path / "work")
    assert shown == []
    # what the file itself holds, as `dap predict` says it (the page showed nothing)
    rgba = np.asarray(Image.open(small_panorama).convert("RGBA")).copy()
    rgba[:64, :, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    respond(str(tmp_path / "clear.png"), False, model, tmp_path / "work")
    assert len(shown) == 1 and "50% of it is transparent" in shown[0]


def test_a_partial_photo_sphere_is_padded_where_its_xmp_puts_it(model, small_panorama, tmp_path):
    full = np.asarray(Image.open(small_panorama))  # 256x128
    Image.fromarray(full[:96]).save(tmp_path / "part.jpg", xmp=photo_sphere_xmp(256, 128, 0, 0, 256, 96))
    _, mask, *_ = respond(str(tmp_path / "part.jpg"), True, model, tmp_path / "work")
    masked = np.asarray(Image.open(mask).convert("L")) > 127  # white: out of range, as padding is
    assert masked.shape == (128, 256) and masked[96:].all() and not masked[:4].all()  # padded below, not around


def test_an_hdr_upload_is_tone_mapped_like_dap_predict(model, small_panorama, tmp_path):
    linear = (io.read_rgb(small_panorama) ** 2.2 * 80).astype(np.float32)
    hdr = tmp_path / "room.hdr"
    cv2.imwrite(str(hdr), linear[..., ::-1].copy())
    depth, *_, summary = respond(str(hdr), False, model, tmp_path / "work")
    assert "256x128" in summary and Image.open(depth).size[0] == 256


@pytest.mark.parametrize("content, expected", [
    (b"this is not an image", "cannot read bad.jpg"),
    ("square", "must be exactly 2:1"),
    ("wide", "is 4200x1000 (width x height)"),  # its own size: the error quoted the size it was downscaled to
    ("partial", "or use the \"Partial panorama\" box for a partial panorama"),  # the page's control, not --pad-to-erp
])
def test_a_bad_upload_gets_the_library_message(model, tmp_path, content, expected):
    import gradio as gr

    bad = tmp_path / "upload" / "bad.jpg"
    bad.parent.mkdir()
    if content in ("square", "wide", "partial"):
        Image.new("RGB", {"square": (64, 64), "wide": (4200, 1000), "partial": (96, 32)}[content]).save(bad)
    else:
        bad.write_bytes(content)
    with pytest.raises(gr.Error) as e:
        respond(str(bad), False, model, tmp_path / "work")
    assert expected in e.value.message and str(bad.parent) not in e.value.message  # named as the user knows it


def test_the_pages_messages_name_no_option_it_lacks():
    """A panorama without a pixel in range was told to "lower --point-stride, or leave glb out": the page has
    neither."""
    from dap.demo import _on_the_page

    text = _on_the_page("no points for panorama.glb: every pixel that point_stride 1 keeps is out of range or without "
                        "depth; lower --point-stride, or leave glb out")
    assert "--" not in text and text.endswith("the panorama has nothing in range to show in 3-D")


def test_a_host_that_does_not_resolve_is_named(capsys):
    pytest.importorskip("gradio")
    from dap.cli import main

    assert main(["demo", "--host", "bad host!", "--port", "7999"]) == 2
    err = capsys.readouterr()
    assert "cannot resolve --host 'bad host!'" in err.err and "serving on" not in err.out


def test_the_demo_prepares_its_model_once_for_the_precision_it_runs(monkeypatch):
    """Where "auto" is 16 bit (CUDA, a CPU with fast bf16), the demo cast every weight on every upload, as
    `dap predict` no longer does: its model is prepared once (bf16 weights)."""
    pytest.importorskip("gradio")
    from dap.cli import main
    from dap.inference import weights_precision

    monkeypatch.setattr("dap.inference.cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("dap.inference.cpu_bf16_speedup", lambda: 4.0)
    built = []
    monkeypatch.setattr("dap.demo.build_app", lambda model, **kwargs: built.append(model))
    assert main(["demo", "--host", "bad host!", "--port", "7999", "--device", "cpu"]) == 2  # stops after build_app
    assert [weights_precision(m) for m in built] == ["bf16"]


def test_sigterm_stops_the_server_as_ctrl_c_does_and_a_taken_port_is_named(tmp_path):
    """kill / docker stop send SIGTERM: the server shut down without its cleanup, leaving every cached upload
    and output in gradio's temporary folder (the samples' copies show it here)."""
    import signal
    import socket

    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "dap.cli", "demo", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("serving on" in line for line in lines):  # printed once the server is up, not before
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        assert any((tmp_path / "cache").rglob("*.jpg"))  # gradio's copies of the samples
        taken = subprocess.run([sys.executable, "-m", "dap.cli", "demo", "--port", str(port)], env=env,
                               capture_output=True, text=True, timeout=300)
        assert taken.returncode == 2 and "serving on" not in taken.stdout
        assert f"cannot serve on 127.0.0.1:{port}: the port is in use" in taken.stderr
        assert "GRADIO_SERVER_PORT" not in taken.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and err.strip().endswith("dap demo: terminated")
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_missing_gradio_says_how_to_install():
    code = ("import sys; sys.modules['gradio'] = None\nfrom dap.cli import main\n"
            "sys.exit(main(['demo', '--port', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "pip install 'depth-any-panoramas[demo]'" in proc.stderr and "Traceback" not in proc.stderr


def test_help_does_not_import_gradio():
    code = ("import sys\nfrom dap.cli import main\ntry: main(['demo', '--help'])\nexcept SystemExit: pass\n"
            "print('gradio' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stderr.strip().endswith("False") and "--share" in proc.stdout and "--port" in proc.stdout


def test_the_page_in_a_browser(small_panorama, tmp_path):
    """Start the app on a free local port, upload a panorama in headless Chromium, wait for the depth map and
    the 3-D view, then upload a broken file and read the page's error."""
    script = _script()
    if script.find_chromium() is None:
        pytest.skip("no Chromium here: .ci/run installs Debian's (`apt-get install chromium`, needs root); "
                    "elsewhere install it, or run `python -m playwright install chromium`")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a panorama")
    shot = tmp_path / "demo.png"
    found = script.capture(small_panorama, shot, bad_upload=bad, timeout_s=60)
    print(f"screenshot: {shot}")
    assert "256x128" in found["summary"] and " m;" in found["summary"]
    assert found["canvas_spread"] > script.DRAWN  # the 3-D view drew the point cloud
    assert all(f".{k}" in found["downloads"] for k in DOWNLOADS)
    assert "cannot read notes.jpg" in found["error"]
    assert Image.open(shot).size[0] >= 1000


def test_the_camera_height_sets_the_scale(model, small_panorama, tmp_path):
    """The page's camera-height box does what --camera-height does; empty (None) or 0 means unknown."""
    def depth_npy(height):
        downloads = respond(str(small_panorama), False, model, tmp_path / str(height), camera_height=height)[4]
        return np.load(next(p for p in downloads if p.endswith(".npy")))

    guess, fixed = depth_npy(None), depth_npy(1.6)
    np.testing.assert_array_equal(depth_npy(0), guess)
    in_range = guess > 0  # files store 0 out of range
    ratio = fixed[in_range] / guess[in_range]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert geometry.floor_and_ceiling(fixed, in_range)[0] == pytest.approx(1.6, rel=0.02)


def test_the_level_box_does_what_level_does(model, small_panorama, tmp_path):
    """The page's level checkbox passes `level` to predict: a tilted upload comes out as `predict(level=True)`
    gives it, and without the box the page shows the tilt warning."""
    from dap.inference import predict

    tilted = np.clip(np.asarray(geometry.rotate_erp(io.read_rgb(small_panorama), pitch=15.0)), 0, 1)
    io.write_rgb(tmp_path / "tilted.png", tilted)
    downloads = respond(str(tmp_path / "tilted.png"), False, model, tmp_path / "on", level=True)[4]
    got = np.load(next(p for p in downloads if p.endswith(".npy")))
    want = predict(io.read_rgb(tmp_path / "tilted.png"), model, level=True)
    np.testing.assert_allclose(got, np.where(want.range_mask, 0, want.depth), rtol=1e-5)
    with pytest.warns(UserWarning, match="tilted by about"):  # gr.Warning outside a running app
        respond(str(tmp_path / "tilted.png"), False, model, tmp_path / "off")


def test_the_tta_box_does_what_tta_does(model, small_panorama, tmp_path):
    """The page's test-time augmentation checkbox passes `tta` to predict."""
    from dap.inference import predict

    downloads = respond(str(small_panorama), False, model, tmp_path / "on", tta=True)[4]
    got = np.load(next(p for p in downloads if p.endswith(".npy")))
    want = predict(io.read_rgb(small_panorama), model, tta=True)
    plain = predict(io.read_rgb(small_panorama), model)
    np.testing.assert_allclose(got, np.where(want.range_mask, 0, want.depth), rtol=1e-5)
    assert not np.allclose(got, np.where(plain.range_mask, 0, plain.depth), rtol=1e-5)
