"""`dap export onnx`: onnxruntime reproduces PyTorch (both heads), fixed and dynamic sizes, the onnxruntime
backend of `dap predict`, and the errors."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dap.cli import main
from dap.errors import DapError, UnreadableFileError
from dap.export import OUTPUTS, OnnxModel, export_onnx
from dap.io import write_rgb
from dap.models import create_model, load_model, save_model


def torch_outputs(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model(x).items()}


def assert_same(onnx_model: OnnxModel, model, x: torch.Tensor) -> None:
    """Both heads within 1e-4 in the network's own units (the parity criterion): the sigmoid outputs, i.e. depth in
    units of max_depth (1e-4 = 1 cm) and the probability."""
    got, want = onnx_model(x), torch_outputs(model, x)
    for name, unit in zip(OUTPUTS, (model.cfg.max_depth, 1.0), strict=True):
        assert got[name].shape == want[name].shape
        assert np.abs(got[name].numpy() - want[name]).max() / unit <= 1e-4, name


def test_fixed_size_export_matches_torch(tiny_model, tmp_path):
    export_onnx(tiny_model, tmp_path / "m.onnx", resolution=(128, 256))  # + 16 seam columns each side
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    assert onnx_model.cfg.default_resolution == (128, 256) and onnx_model.cfg.max_depth == tiny_model.cfg.max_depth
    assert onnx_model.input_size == (128, 288)
    assert_same(onnx_model, tiny_model, torch.randn(2, 3, 128, 288))  # batch is dynamic
    with pytest.raises(DapError, match=r"takes inputs of 128x288 only \(128x256 plus 32 seam columns\), got 32x64: "
                                       r".*the --seam-pad it was exported with \(0.0625\)"):
        onnx_model(torch.randn(1, 3, 32, 64))
    with pytest.raises(DapError, match=r"resolution 64x256 must be a 2:1 panorama size .* in multiples of 16"):
        export_onnx(tiny_model, tmp_path / "wide.onnx", resolution=(64, 256))


def test_dynamic_export_runs_any_multiple_of_16(tiny_model, tmp_path):
    export_onnx(tiny_model, tmp_path / "m.onnx", dynamic=True)
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    for shape in [(1, 3, 32, 64), (2, 3, 64, 160), (1, 3, 48, 96)]:
        assert_same(onnx_model, tiny_model, torch.randn(shape))


def test_latitude_scale_is_in_the_graph_at_every_height(tmp_path):
    """A calibrated latitude_scale is part of the forward pass, so the exported graph applies it, interpolated to
    whatever height a dynamic graph is given."""
    model = create_model("dap_tiny", latitude_scale=(1.2, 0.9, 1.1)).eval()
    export_onnx(model, tmp_path / "m.onnx", dynamic=True)
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    for shape in [(1, 3, 32, 64), (1, 3, 64, 128)]:
        assert_same(onnx_model, model, torch.randn(shape))


def test_official_adapter_square_branch(tmp_path):
    """The official adapter takes a different branch when h*w - 1 patches is a perfect square (80x160): a fixed
    graph traced there is exact, a dynamic graph (traced elsewhere) refuses that size instead of being wrong."""
    torch.manual_seed(0)
    model = create_model("dap_tiny", token_adapter="official").eval()
    x = torch.randn(1, 3, 80, 160)
    export_onnx(model, tmp_path / "fixed.onnx", resolution=(80, 160), seam_pad=0)
    assert_same(OnnxModel(tmp_path / "fixed.onnx"), model, x)
    export_onnx(model, tmp_path / "dynamic.onnx", resolution=(64, 128), dynamic=True)
    dynamic = OnnxModel(tmp_path / "dynamic.onnx")
    assert_same(dynamic, model, torch.randn(1, 3, 64, 128))
    with pytest.raises(DapError, match="square branch"):
        dynamic(x)
    # the fix it names works from the command line, where --resolution and --dynamic exclude each other
    with pytest.raises(DapError, match=r"square branch.*resolution=\(h, w\)\) in Python.*fixed-size graph"):
        export_onnx(model, tmp_path / "bad.onnx", resolution=(80, 160), seam_pad=0, dynamic=True)


def test_onnx_model_errors_say_what_the_path_is(tmp_path):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(UnreadableFileError, match="m.onnx is a folder, not a file"):  # was "does not exist"
        OnnxModel(tmp_path / "m.onnx")
    (tmp_path / "model.pth").write_bytes(b"PK\x03\x04 a checkpoint")
    with pytest.raises(UnreadableFileError, match="cannot load .*model.pth.*a checkpoint runs with the default torch"):
        OnnxModel(tmp_path / "model.pth")


def test_cli_export_and_predict_with_onnxruntime(tiny_model, tmp_path, capsys):
    from PIL import Image

    save_model(tiny_model, tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 128, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx"),
                 "--resolution", "32x64"]) == 0
    assert "opset 17): input image (batch, 3, 32, 64), outputs depth, out_of_range_prob" in capsys.readouterr().out
    # exporting again over its own earlier export replaces it (it once was refused as "a file, not a folder")
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx"),
                 "--resolution", "64x128"]) == 0
    assert "input image (batch, 3, 64, 128)" in capsys.readouterr().out
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx"),
                 "--resolution", "32x64"]) == 0
    capsys.readouterr()
    common = [str(tmp_path / "p.png"), "--resolution", "32x64", "--outputs", "npy,mask"]
    assert main(["predict", *common, "--out", str(tmp_path / "ort"), "--backend", "onnxruntime",
                 "--model", str(tmp_path / "m.onnx")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "pt"), "--checkpoint", str(tmp_path / "ckpt")]) == 0
    ort, pt = np.load(tmp_path / "ort" / "p.npy"), np.load(tmp_path / "pt" / "p.npy")
    assert np.abs(ort - pt).max() <= 1e-4
    assert (tmp_path / "ort" / "p.mask.png").read_bytes() == (tmp_path / "pt" / "p.mask.png").read_bytes()
    # a graph exported without seam columns runs with the seam padding it was exported with, not the default
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m0.onnx"),
                 "--resolution", "32x64", "--seam-pad", "0"]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "ort0"), "--backend", "onnxruntime",
                 "--model", str(tmp_path / "m0.onnx")]) == 0
    # a working size the fixed graph does not take: one error before any input is read, not one per input
    Image.fromarray((rng.random((64, 128, 3)) * 255).astype(np.uint8)).save(tmp_path / "q.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "p.png"), str(tmp_path / "q.png"), "--resolution", "64x128", "--out",
                 str(tmp_path / "ort1"), "--backend", "onnxruntime", "--model", str(tmp_path / "m0.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("takes inputs of 32x64 only (32x64, no seam columns), got 64x128") == 1, err


def test_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(UnreadableFileError, match=r"nope.onnx does not exist; write one with `dap export onnx"):
        OnnxModel(tmp_path / "nope.onnx")
    with pytest.raises(UnreadableFileError, match=r"--backend onnxruntime needs an .onnx file, got dap-tiny-synth"):
        OnnxModel("dap-tiny-synth")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(UnreadableFileError, match="onnxruntime cannot load"):
        OnnxModel(tmp_path / "junk.onnx")
    write_rgb(tmp_path / "x.png", np.zeros((32, 64, 3), np.float32))
    assert main(["predict", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--backend", "onnxruntime"]) == 2
    assert "--backend onnxruntime needs --model model.onnx" in capsys.readouterr().err
    with pytest.raises(DapError, match="seam padding is a fraction of the width"):
        export_onnx(create_model("dap_tiny"), tmp_path / "m.onnx", seam_pad=-1)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(DapError, match=r"needs the onnxruntime package: pip install 'depth-any-panoramas\[onnx\]'"):
        OnnxModel(tmp_path / "junk.onnx")


@pytest.mark.slow
def test_vitl_official_layout_exports_exactly(tmp_path):
    """The released architecture (ViT-L, official adapter) from a full-size official-format checkpoint."""
    parity = Path(__file__).parent / "data" / "parity"
    sys.path.insert(0, str(parity))
    try:
        import make_weights
    finally:
        sys.path.pop(0)
    torch.save(make_weights.make_state_dict(prefix="module."), tmp_path / "model.pth")
    model = load_model(tmp_path / "model.pth")
    (tmp_path / "model.pth").unlink()  # 1.46 GB, and the ONNX graph is as large: one at a time on CI's disk
    export_onnx(model, tmp_path / "vitl.onnx", resolution=(64, 128), seam_pad=0)
    expected = np.load(parity / "expected_a.npz")
    x = torch.from_numpy(expected["a_input"])
    onnx_model = OnnxModel(tmp_path / "vitl.onnx")
    assert_same(onnx_model, model, x)
    out = onnx_model(x)
    assert np.abs(out["depth"].numpy() / model.cfg.max_depth - expected["a_pred_depth"]).max() <= 1e-4
    assert np.abs(out["out_of_range_prob"].numpy() - expected["a_pred_mask"]).max() <= 1e-4


def test_a_calibrated_model_exported_at_another_size_says_so_where_it_runs(tmp_path, capsys):
    """Exporting the bundled model at 64x128 recorded 64x128 as its own resolution: depth about 2x off, no note."""
    from dap.inference import other_resolution_note

    save_model(create_model("dap_tiny", depth_scale=0.9, default_resolution=(32, 64)).eval(), tmp_path / "ckpt")
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx"),
                 "--resolution", "64x128"]) == 0
    assert "dap export: note: working resolution 64x128 is not the one this model was calibrated at, 32x64" in \
        capsys.readouterr().err
    graph = OnnxModel(tmp_path / "m.onnx")
    assert graph.calibrated_resolution == (32, 64) and graph.cfg.default_resolution == (64, 128)
    assert "Export the graph again at 32x64 (dap export onnx --model <the model it came from> --resolution 32x64)" in \
        other_resolution_note(None, graph)
    rng = np.random.default_rng(0)
    write_rgb(tmp_path / "p.png", rng.random((64, 128, 3)))
    assert main(["predict", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--backend", "onnxruntime",
                 "--model", str(tmp_path / "m.onnx"), "--outputs", "npy"]) == 0
    assert "calibrated at, 32x64" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "own.onnx")]) == 0
    assert "note" not in capsys.readouterr().err
    assert other_resolution_note(None, OnnxModel(tmp_path / "own.onnx")) is None
    # a dynamic graph runs at its calibrated size when --resolution is left out: no new export needed (was said)
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "d.onnx"),
                 "--dynamic"]) == 0
    note = other_resolution_note((64, 128), OnnxModel(tmp_path / "d.onnx"))
    assert "Leave --resolution out" in note and "Export" not in note


def test_python_predict_takes_a_graphs_own_seam_padding_as_dap_predict_does(tiny_model, tmp_path):
    """A dynamic graph exported with --seam-pad 0: `dap predict` ran it with 0, `dap.predict` with 0.0625 (depth
    differing by up to 5x between the two)."""
    from dap.inference import predict

    export_onnx(tiny_model, tmp_path / "m.onnx", dynamic=True, seam_pad=0.0)
    image = np.random.default_rng(0).random((32, 64, 3)).astype(np.float32)
    graph = OnnxModel(tmp_path / "m.onnx")
    own = predict(image, graph, resolution=(32, 64)).depth
    np.testing.assert_array_equal(own, predict(image, graph, resolution=(32, 64), seam_pad=0.0).depth)
    assert not np.array_equal(own, predict(image, graph, resolution=(32, 64), seam_pad=0.25).depth)
    np.testing.assert_allclose(own, predict(image, tiny_model, resolution=(32, 64), seam_pad=0.0).depth, rtol=1e-4)


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    """export_onnx called model.float().eval().cpu() on the caller's model: a check in a training loop left it in
    eval mode (on the CPU), and a model prepared for bf16 came back float32 without a word."""
    from dap.inference import prepare_model

    torch.manual_seed(0)
    model = create_model("dap_tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", resolution=(32, 64))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(DapError, match="prepared for bf16 inference .* export the float32 model"):
        export_onnx(prepare_model(model.eval(), "bf16"), tmp_path / "b.onnx", resolution=(32, 64))


def test_export_replaces_an_earlier_export_and_nothing_else(tiny_model, tmp_path, capsys, monkeypatch):
    """`--out` over any existing .onnx was replaced without a word: another tool's graph, or a file that only had
    the name. And a bad --seam-pad or a missing onnx package were said only after the model was loaded (for a named
    model not yet cached: a 1.4 GB download first)."""
    save_model(tiny_model, tmp_path / "ckpt")
    export = ["export", "onnx", "--model", str(tmp_path / "ckpt"), "--resolution", "32x64", "--out"]
    (tmp_path / "theirs.onnx").write_bytes(b"precious bytes")
    assert main([*export, str(tmp_path / "theirs.onnx")]) == 2
    assert "not a graph `dap export` wrote" in capsys.readouterr().err
    assert (tmp_path / "theirs.onnx").read_bytes() == b"precious bytes"
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])  # a real graph, not ours
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "theirs", [value], [result])
    onnx.save(helper.make_model(graph), str(tmp_path / "linear.onnx"))
    before = (tmp_path / "linear.onnx").read_bytes()
    assert main([*export, str(tmp_path / "linear.onnx")]) == 2
    assert (tmp_path / "linear.onnx").read_bytes() == before
    assert main([*export, str(tmp_path / "m.onnx")]) == 0 and main([*export, str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("dap.cli.export.load_model", no_loading)
    assert main(["export", "onnx", "--model", "dap-vitl", "--out", str(tmp_path / "n.onnx"), "--seam-pad", "0.9"]) == 2
    assert "seam padding is a fraction of the width" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "onnx", "--model", "dap-vitl", "--out", str(tmp_path / "n.onnx")]) == 2
    assert "needs the onnx package" in capsys.readouterr().err
