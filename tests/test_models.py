"""Model construction, the official checkpoint's parity fixture, and our checkpoint format."""

import contextlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dap.errors import CheckpointError
from dap.models import MODEL_CONFIGS, count_parameters, create_model, load_model, save_model
from dap.models.official import OfficialTokenAdapter

PARITY = Path(__file__).parent / "data" / "parity"  # copied from shared/parity (fixture of the official model)


def _make_weights():
    sys.path.insert(0, str(PARITY))
    try:
        import make_weights
    finally:
        sys.path.pop(0)
    return make_weights


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory) -> Path:
    """The 1.46 GB pseudo-random checkpoint in the official format, `module.`-prefixed as released. The tests
    that use it are marked slow (`pytest -m slow`; .ci/run runs them after the default suite)."""
    mw = _make_weights()
    path = tmp_path_factory.mktemp("official") / "model.pth"
    torch.save(mw.make_state_dict(prefix="module."), path)
    yield path
    path.unlink()  # CI's disk holds few of these; do not leave one behind for the session's end


@contextlib.contextmanager
def _saved(obj: dict, path: Path) -> Iterator[Path]:
    """`obj` saved at `path` for the duration of the block, then removed: each checkpoint the slow tests write is
    as large as the official one, so they exist one at a time."""
    torch.save(obj, path)
    try:
        yield path
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def expected():
    return np.load(PARITY / "expected_a.npz")


@pytest.fixture(scope="module")
def official_model(official_pth):
    return load_model(official_pth)


def _normalised_outputs(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return (out["depth"] / model.cfg.max_depth).numpy(), out["out_of_range_prob"].numpy()


@pytest.mark.slow
def test_official_checkpoint_parity(official_model, expected):
    assert official_model.cfg.name == "dap_vitl" and official_model.cfg.token_adapter == "official"
    depth, oor = _normalised_outputs(official_model, expected["a_input"])
    assert depth.shape == (2, 1, 64, 128)
    assert np.abs(depth - expected["a_pred_depth"]).max() <= 1e-4
    assert np.abs(oor - expected["a_pred_mask"]).max() <= 1e-4
    # The official post-processing: out-of-range pixels (prob >= 0.5) take the 100 m cap.
    final = np.where(oor >= 0.5, 1.0, depth)
    assert np.abs(final - expected["a_final_depth"]).max() <= 1e-4


@pytest.mark.slow
def test_official_round_trip_through_our_format(official_model, expected, tmp_path):
    folder = save_model(official_model, tmp_path / "ours", training={"converted_from": "fixture"})
    ours = load_model(folder)
    shutil.rmtree(folder)  # 1.46 GB; the model is in memory now
    assert ours.cfg == official_model.cfg
    x = expected["a_input"][:1]
    a, b = _normalised_outputs(official_model, x), _normalised_outputs(ours, x)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.slow
def test_official_model_runs_square_branch_size(official_model):
    # 80x160 -> 5x10 patches -> 49 tokens after the adapter's drop: the square-reshape branch.
    x = _make_weights().make_inputs()["c"]
    depth, oor = _normalised_outputs(official_model, x.numpy())
    assert depth.shape == (1, 1, 80, 160) and np.isfinite(depth).all()
    assert 0 < depth.min() and depth.max() < 1 and 0 < oor.min() and oor.max() < 1


@pytest.mark.slow
def test_unprefixed_and_nested_official_checkpoints_load(official_pth, tmp_path):
    sd = torch.load(official_pth, weights_only=True)
    plain = {k.removeprefix("module."): v for k, v in sd.items()}
    with _saved({"model": plain}, tmp_path / "nested.pth") as path:
        model = load_model(path)
    # 365.1 M unique values in the official file = our parameters + the 16 RoPE periods.
    assert count_parameters(model)["total"] + 16 == sum(
        v.numel() for k, v in plain.items() if not k.startswith("core.pretrained.blocks.")
        and not k.endswith("bias_mask")
    )


@pytest.mark.slow
def test_strict_loading_lists_missing_and_extra_keys(official_pth, tmp_path):
    sd = torch.load(official_pth, weights_only=True)
    del sd["module.core.depth_head.scratch.output_conv1.bias"]
    sd["module.core.depth_head.extra.weight"] = torch.zeros(1)
    with _saved(sd, tmp_path / "bad.pth") as path, pytest.raises(
        CheckpointError, match=r"1 missing keys: depth_head\.scratch\.output_conv1\.bias; "
        r"1 unexpected keys: depth_head\.extra\.weight"
    ):
        load_model(path)
    sd["module.vendor.head.weight"] = torch.zeros(1)
    with _saved(sd, tmp_path / "foreign.pth") as path, pytest.raises(
        CheckpointError, match=r"1 keys outside the DAP layout.*vendor\.head\.weight"
    ):
        load_model(path)


@pytest.mark.slow
def test_bias_mask_and_alias_are_checked(official_pth, tmp_path):
    sd = torch.load(official_pth, weights_only=True)
    sd["module.core.pretrained.model.blocks.3.attn.qkv.bias_mask"] = torch.full((3072,), float("nan"))
    with _saved(sd, tmp_path / "nan.pth") as path, pytest.raises(CheckpointError, match="key-bias mask"):
        load_model(path)


def test_float16_weights_load_as_float32(tmp_path):
    from safetensors.torch import load_file

    model = create_model("dap_tiny")
    save_model(model, tmp_path / "m", dtype=torch.float16)
    assert {v.dtype for v in load_file(tmp_path / "m" / "model.safetensors").values()} == {torch.float16}
    loaded = load_model(tmp_path / "m")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert b.dtype == torch.float32, k
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)  # exactly the float16 rounding
    x = torch.rand(1, 3, 64, 128)
    with torch.inference_mode():
        assert (loaded(x)["depth"] - model(x)["depth"]).abs().max() < 0.05 * model.cfg.max_depth


def test_our_format_strict_errors(tmp_path):
    model = create_model("dap_tiny")
    save_model(model, tmp_path / "m")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "m" / "model.safetensors")
    # whole numbers where the network has a float weight: torch's "Only Tensors of floating point ... can require
    # gradients" traceback
    save_file({**sd, "backbone.cls_token": sd["backbone.cls_token"].int()}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 tensors of the wrong type: backbone.cls_token int32, not a float"):
        load_model(tmp_path / "m")
    sd.pop("range_head.projects.0.bias")
    sd["range_head.unknown"] = torch.zeros(2)
    save_file(sd, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match="1 missing keys.*1 unexpected keys: range_head.unknown"):
        load_model(tmp_path / "m")


def test_missing_checkpoint_and_non_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "junk.pth")


def test_a_broken_model_folder_says_what_is_wrong_and_to_fetch_it_again(tmp_path):
    torch.manual_seed(0)
    good = save_model(create_model("dap_tiny"), tmp_path / "good")
    cases = {
        "no_weights": (lambda d: (d / "model.safetensors").unlink(), r"no_weights has config.json but no model"),
        "cut_short": (lambda d: (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:5000]),
                      r"cut_short/model.safetensors: .*damaged or cut short"),
        "not_json": (lambda d: (d / "config.json").write_text('{"model": '), r"cannot read the model config"),
        "other_json": (lambda d: (d / "config.json").write_text('{"name": "dap_tiny"}'), r"has no 'model' section"),
        "bad_field": (lambda d: (d / "config.json").write_text(json.dumps({"model": {"vit": "x"}})),
                      r"the model config in .*bad_field/config.json is not valid"),
        # hand-edited fields fail on loading, naming the field, not in a later forward pass
        "adapter": (lambda d: _edit(d, token_adapter="bogus"), r"token_adapter is 'plain' or 'official'"),
        "features": (lambda d: _edit(d, features=-1), r"out_channels .* and features are positive"),
        "layers": (lambda d: _edit(d, layers=[1, 2, 4, 9]), r"layers are the 4 distinct blocks, in increasing order "
                                                            r"\(0 to 5, .*got \[1, 2, 4, 9\]"),
        "repeated_layers": (lambda d: _edit(d, layers=[1, 2, 2, 5]), r"4 distinct blocks.*got \[1, 2, 2, 5\]"),
        "resolution": (lambda d: _edit(d, default_resolution=[100, 200]), r"default_resolution is .* got \[100, 200\]"),
        # a ZeroDivisionError or a TypeError at save (tracebacks), or the field not named ("not all arguments
        # converted", "'<' not supported", a RoPE shape mismatch for heads that do not divide the width)
        "patch_zero": (lambda d: _edit_vit(d, patch_size=0), r"vit.patch_size is a positive whole number, got 0"),
        "heads_zero": (lambda d: _edit_vit(d, num_heads=0), r"vit.num_heads is a positive whole number, got 0"),
        "heads_odd": (lambda d: _edit_vit(d, num_heads=7), r"vit.embed_dim \(192\) must split into vit.num_heads \(7\) "
                                                            r"heads of a multiple of 4 channels"),
        "width_text": (lambda d: _edit_vit(d, embed_dim="64"), r"vit.embed_dim is a positive whole number, got '64'"),
        "name_null": (lambda d: _edit(d, name=None), r"name is the model's name \(text\), got None"),
        "latitude_text": (lambda d: _edit(d, latitude_scale=[1.0, "x"]), r"and latitude_scale are numbers, got .* "
                                                                        r"and \[1.0, 'x'\]"),
        "threshold_text": (lambda d: _edit(d, range_threshold="0.5"), r"range_threshold, .* are numbers, got '0.5'"),
    }
    for name, (damage, message) in cases.items():
        shutil.copytree(good, tmp_path / name)
        damage(tmp_path / name)
        with pytest.raises(CheckpointError, match=message) as err:
            load_model(tmp_path / name)
        assert "copy or download the model folder again" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_names_a_device_it_cannot_use():
    from dap.errors import DapError

    with pytest.raises(DapError, match=r"unknown device 'gpu9'; use cpu, cuda, cuda:N or mps"):
        load_model("dap-tiny-synth", device="gpu9")
    with pytest.raises(DapError, match=r"device 'cuda': no CUDA device is visible .*; use cpu"):
        load_model("dap-tiny-synth", device="cuda")  # said before the weights load
    with pytest.raises(DapError, match=r"device 'meta' is not supported"):
        load_model("dap-tiny-synth", device="meta")
    assert next(load_model("dap-tiny-synth", device=None).parameters()).device.type == "cpu"  # as predict: auto


def _edit_vit(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    _edit(folder, vit={**config["model"]["vit"], **fields})


def _edit(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_weights_file_is_loaded_by_its_name_and_other_files_are_named(tmp_path):
    torch.manual_seed(0)
    folder = save_model(create_model("dap_tiny"), tmp_path / "run")
    zeroed = {k: torch.zeros_like(v) for k, v in load_file(folder / "model.safetensors").items()}
    save_file(zeroed, str(folder / "epoch5.safetensors"))
    assert all(float(p.detach().abs().sum()) == 0 for p in load_model(folder / "epoch5.safetensors").parameters())
    assert any(float(p.detach().abs().sum()) > 0 for p in load_model(folder / "model.safetensors").parameters())
    (tmp_path / "alone").mkdir()
    (folder / "epoch5.safetensors").rename(tmp_path / "alone" / "epoch5.safetensors")
    with pytest.raises(CheckpointError, match=r"alone/epoch5.safetensors has no config.json beside it"):
        load_model(tmp_path / "alone" / "epoch5.safetensors")
    (tmp_path / "alone" / "epoch5.safetensors").rename(tmp_path / "alone" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"alone has model.safetensors but no config.json: our weights are read"):
        load_model(tmp_path / "alone")
    with pytest.raises(CheckpointError, match=r"~/no-such-model does not exist .* \('~' is not expanded: pass /"):
        load_model("~/no-such-model")
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(CheckpointError, match=r"m.onnx is an ONNX graph.*--backend onnxruntime"):
        load_model(tmp_path / "m.onnx")
    meta = json.loads((folder / "config.json").read_text())
    meta["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"format_version 99; this dap reads up to 1. Upgrade dap"):
        load_model(folder)


@pytest.mark.parametrize("name", ["dap_tiny", "dap_vits"])
def test_variants_run_on_64x128(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 128))
    assert out["depth"].shape == (2, 1, 64, 128) == out["out_of_range_prob"].shape
    assert 0 < out["depth"].min() and out["depth"].max() < 100.0
    assert 0 < out["out_of_range_prob"].min() and out["out_of_range_prob"].max() < 1


def test_all_variants_build_with_expected_sizes():
    sizes = {}
    for name in MODEL_CONFIGS:
        with torch.device("meta"):
            sizes[name] = count_parameters(create_model(name))["total"]
    assert 365.0e6 < sizes["dap_vitl"] < 365.1e6  # the paper's model (365.1 M incl. buffers)
    assert sizes["dap_tiny"] < sizes["dap_vits"] < sizes["dap_vitb"] < sizes["dap_vitl"]
    assert sizes["dap_tiny"] * 4 < 40e6  # ships as fp32 under 40 MB


def test_gradient_flows_to_both_heads():
    model = create_model("dap_tiny")
    out = model(torch.randn(1, 3, 32, 64))
    (out["depth"].mean() + out["out_of_range_prob"].mean()).backward()
    for part in (model.depth_head, model.range_head, model.backbone.blocks[0]):
        # refinenet4 has no skip input, so its first residual unit is unused (as in Depth-Anything-V2).
        grads = {n: p.grad for n, p in part.named_parameters() if "refinenet4.resConfUnit1" not in n}
        assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "mask_token" not in n)


def test_bad_input_sizes_are_explained():
    model = create_model("dap_tiny")
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 3, 40, 80))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 64))


def test_official_adapter_resamples_tokens_as_documented():
    adapter = OfficialTokenAdapter(4)
    torch.nn.init.ones_(adapter.norm.weight)
    # Non-square: 2x4 grid -> 8 tokens, 7 after dropping the first; linear resampling 7 -> 8 samples.
    seq = torch.arange(8, dtype=torch.float32)
    tokens = seq[None, :, None] * torch.tensor([1.0, -1.0, 2.0, -2.0])  # LayerNorm maps each token to ±const
    grid = adapter([tokens], 2, 4)[0]
    normed = F.layer_norm(tokens, (4,), eps=1e-5)[:, 1:]  # (1, 7, 4)
    src = (torch.arange(8) + 0.5) * 7 / 8 - 0.5  # align_corners=False source positions
    lo = src.floor().clamp(0, 6).long()
    hi = (lo + 1).clamp(max=6)
    w = (src - lo).clamp(0, 1)[:, None]
    want = normed[0, lo] * (1 - w) + normed[0, hi] * w  # (8, 4)
    torch.testing.assert_close(grid[0].permute(1, 2, 0).reshape(8, 4), want)
    # Square: 5x10 grid -> 50 tokens, 49 = 7x7 after the drop: reshaped to 7x7, resized to 5x10.
    tokens = torch.randn(1, 50, 4)
    grid = adapter([tokens], 5, 10)[0]
    square = F.layer_norm(tokens, (4,), eps=1e-5)[:, 1:].transpose(1, 2).reshape(1, 4, 7, 7)
    torch.testing.assert_close(grid, F.interpolate(square, size=(5, 10), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_official_adapter_resamples_a_token_column_as_the_official_code(dtype):
    """The adapter resizes (N, B*C) rows, faster on CUDA; the official code's (B, C, N, 1) column gives the same
    numbers: bit for bit in float32 (parity), within rounding in bf16."""
    torch.manual_seed(0)
    tokens = torch.randn(3, 1 + 287, 40).to(dtype)[:, 1:]  # 287 tokens to an 8x36 grid, as at 128x576
    official = F.interpolate(tokens.transpose(1, 2).unsqueeze(-1), size=(8 * 36, 1), mode="bilinear",
                             align_corners=False).reshape(3, 40, 8, 36)
    ours = OfficialTokenAdapter._to_grid(tokens, 8, 36)
    if dtype == torch.float32:
        assert torch.equal(ours, official)
    else:
        torch.testing.assert_close(ours, official)


def _official_format(model) -> dict[str, torch.Tensor]:
    """Our state dict under the official release's key names (without the aliases it also stores)."""
    from dap.models.official import _PREFIX_MAP

    to_official = {new: old for old, new in _PREFIX_MAP}
    return {next(to_official[p] + k[len(p):] for p in to_official if k.startswith(p)): v
            for k, v in model.state_dict().items()}


def test_non_finite_weights_are_refused_at_load_naming_the_file(tmp_path):
    from dap.models.official import OFFICIAL_LAYERS

    model = create_model("dap_tiny")
    with torch.no_grad():
        model.depth_head.projects[0].weight[0, 0] = float("nan")
        model.backbone.cls_token.fill_(float("inf"))
    save_model(model, tmp_path / "ours")
    with pytest.raises(CheckpointError, match=r"ours/model.safetensors: 2 weight tensors hold NaN or infinite "
                                              r"values \(backbone.cls_token, depth_head.projects.0.weight\)"):
        load_model(tmp_path / "ours")
    official = create_model("dap_tiny", vit={"depth": 12}, layers=OFFICIAL_LAYERS[12], token_adapter="official")
    torch.save(_official_format(official), tmp_path / "model.pth")
    assert load_model(tmp_path / "model.pth").cfg.token_adapter == "official"  # the official layout loads
    with torch.no_grad():
        official.range_head.scratch.output_conv1.bias.fill_(float("nan"))
    torch.save(_official_format(official), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=r"model.pth: 1 weight tensors hold NaN .*Use an earlier checkpoint"):
        load_model(tmp_path / "model.pth")


@pytest.mark.parametrize("max_depth", [0.0, -100.0, float("nan")])
def test_non_positive_max_depth_is_refused_at_load(tmp_path, max_depth, capsys):
    import json

    from dap.cli import main
    from dap.io import write_rgb

    save_model(create_model("dap_tiny"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["max_depth"] = max_depth
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"m/config.json is not valid: max_depth is a positive number of metres"):
        load_model(tmp_path / "m")
    write_rgb(tmp_path / "p.png", np.zeros((32, 64, 3), np.float32))
    argv = ["predict", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "max_depth is" in capsys.readouterr().err


def test_official_quirks_module_does_not_import_the_model_back():
    import ast

    import dap.models.official as official

    tree = ast.parse(Path(official.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    leaves = {"dap.errors", "dap.models.backbone", "dap.models.dinov3"}  # import nothing of dap.models back
    assert imported <= {"__future__", "collections", "pathlib", "torch", *leaves}, imported
    assert MODEL_CONFIGS["dap_vitl"].layers == official.OFFICIAL_LAYERS[24]


def test_release_file_pages_gives_back_a_mapped_tensors_memory_and_keeps_its_values(tmp_path):
    """The pages a weights tensor was read from stay in memory while any tensor of the file lives; released, they
    leave the process's memory and read back from the file unchanged."""
    from dap.models.checkpoint import release_file_pages

    path = tmp_path / "w.safetensors"
    save_file({"big": torch.arange(4 << 20, dtype=torch.float32), "small": torch.ones(3)}, str(path))
    tensors = load_file(str(path))
    total = float(tensors["big"].sum())  # reads every page

    def resident_kb() -> int:
        kb, inside = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    inside = line.rstrip().endswith(str(path))
                elif inside and line.startswith("Rss:"):
                    kb += int(line.split()[1])
        return kb

    assert resident_kb() >= 16 << 10  # 16 MiB of float32
    release_file_pages([tensors["big"]])
    assert resident_kb() < 64
    assert float(tensors["big"].sum()) == total and torch.equal(tensors["small"], torch.ones(3))


@pytest.mark.parametrize("key, shape", [("depth_head.scratch.layer1_rn.weight", (65, 48, 3, 3)),
                                        ("range_head.projects.2.weight", (191, 384, 1, 1)),
                                        ("backbone.cls_token", (1, 1, 385)),
                                        ("backbone.blocks.0.mlp.fc1.weight", (1535, 384))])
def test_one_damaged_tensor_of_an_official_checkpoint_is_the_one_mismatch_reported(key, shape):
    """The architecture is read from tensor shapes; read from the damaged tensor, every other tensor of the model
    mismatched it (94 "shape mismatches", none of them the culprit). Each size is now what most tensors agree on."""
    from dap.models.backbone import ViTConfig
    from dap.models.checkpoint import load_state_dict_strict
    from dap.models.dap import DAP, DapConfig
    from dap.models.official import OFFICIAL_LAYERS, official_config

    vit = ViTConfig(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, num_storage_tokens=4)
    cfg = DapConfig(name="dap_vits", vit=vit, layers=OFFICIAL_LAYERS[12], features=64, out_channels=(48, 96, 192, 384),
                    token_adapter="official")
    with torch.device("meta"):  # shapes only: no memory for the weights
        sd = DAP(cfg).state_dict()
    assert DapConfig(**official_config(sd)) == cfg
    damaged = {**sd, key: torch.empty(shape, device="meta")}
    assert DapConfig(**official_config(damaged)) == cfg
    with torch.device("meta"):
        model = DAP(DapConfig(**official_config(damaged)))
    with pytest.raises(CheckpointError, match=rf"^model\.pth does not match the dap_vits architecture: 1 shape "
                                              rf"mismatches: {re.escape(key)} \({', '.join(map(str, shape))}"):
        load_state_dict_strict(model, damaged, "model.pth")
