"""Inference precisions (fp32 / bf16 / fp16 / int8 / auto), the DPT heads' memory-bounded output stage, and the
overlapped `dap predict` pipeline. No timings here: speed is measured by benchmarks/inference_speed.py."""

import argparse
import copy
import os

import numpy as np
import pytest
import torch

from dap.cli import main
from dap.errors import DapError
from dap.inference import (
    PRECISION_TOLERANCE,
    model_precision,
    predict,
    prepare_model,
    quantize_int8,
    resolve_precision,
    run_model,
)
from dap.models import create_model, load_model, save_model
from dap.models.dpt import Float32Conv2d, _upsample_then

CPU = torch.device("cpu")


def _absrel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = b > 0
    return float(np.mean(np.abs(a[ok] - b[ok]) / b[ok]))


@pytest.fixture(scope="module")
def scene():
    from dap.data.synthetic import make_scene, render

    return render(make_scene(900000, "indoor"), 128, 256, "clean")


@pytest.fixture(scope="module")
def bundled():
    return load_model("dap-tiny-synth")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_precision_drift_within_stated_tolerance(bundled, scene, precision):
    exact = predict(scene["rgb"], bundled, precision="fp32")
    fast = predict(scene["rgb"], bundled, precision=precision)
    tol = PRECISION_TOLERANCE[precision]
    valid = ~exact.range_mask & ~fast.range_mask
    assert _absrel(fast.depth[valid], exact.depth[valid]) <= tol
    gt = np.where(scene["range_mask"], 0, scene["depth"])
    assert abs(_absrel(fast.depth[valid], gt[valid]) - _absrel(exact.depth[valid], gt[valid])) <= tol
    assert (fast.range_mask != exact.range_mask).mean() <= tol


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_precision_drift_on_a_random_model(tiny_model, precision):
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact = run_model(tiny_model, x, precision="fp32")["depth"]
        fast = run_model(tiny_model, x, precision=precision)["depth"]
    assert _absrel(fast.numpy(), exact.numpy()) <= PRECISION_TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("weights16", [False, True])
def test_16bit_outputs_are_not_rounded_to_16_bit_steps(bundled, scene, precision, weights16):
    """The heads' last 1x1 convolution, sigmoid and scale ran in 16 bit: a bf16 depth map of the bundled model held
    287 distinct values (steps of 0.4% of the depth), half of neighbouring pixels equal, normals and point clouds
    terraced (9 degrees between neighbouring normals against 0.7 in fp32); a calibrated range threshold of 0.999
    could only fall between 0.996 and 1. Those layers run in float32 now, whatever the weights are stored in."""
    model = prepare_model(copy.deepcopy(bundled), precision) if weights16 else bundled
    x = torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = run_model(model, x, precision=precision)
        exact = run_model(bundled, x, precision="fp32")
    depth, prob = out["depth"].numpy(), out["out_of_range_prob"].numpy()
    assert depth.dtype == np.float32
    assert np.unique(depth).size > 0.5 * depth.size  # fp32: every pixel its own value
    assert np.mean(depth[..., 1:] == depth[..., :-1]) < 0.01
    assert np.unique(prob).size > 0.5 * prob.size
    assert _absrel(depth, exact["depth"].numpy()) <= PRECISION_TOLERANCE[precision]


def _roughness(depth: np.ndarray) -> float:
    """Mean |second difference along the rows| of log depth: what a normal map or point cloud shows as grain."""
    log = np.log(np.clip(np.asarray(depth, np.float64), 1e-3, None))
    return float(np.mean(np.abs(log[..., 2:] - 2 * log[..., 1:-1] + log[..., :-2])))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("weights16", [False, True])
def test_16bit_depth_is_not_streaked(bundled, scene, precision, weights16):
    """With only the 1x1 layer in float32, the 3x3 convolution before it rounded its 32 channels to 16 bit at every
    pixel, and the CPU's bf16 resizes between the fusion stages erred alike along whole columns: bf16 depth of the
    bundled model was 7x as rough as fp32's from pixel to pixel on this scene (vertical streaks over the ceiling in
    the demo's normal map), though its mean drift was under 0.5%. That convolution and every resize in the heads run
    in float32."""
    from dap.inference import prepare_input

    model = prepare_model(copy.deepcopy(bundled), precision) if weights16 else bundled
    x = prepare_input(scene["rgb"], (256, 512))
    with torch.inference_mode():
        exact = run_model(bundled, x, precision="fp32")["depth"].numpy()
        fast = run_model(model, x, precision=precision)["depth"].numpy()
    assert _roughness(fast) <= 2 * _roughness(exact)  # 1.4x now, in bf16; fp16 1.0x


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it(monkeypatch):
    assert resolve_precision("auto", CPU) == "fp32"  # conftest: no native bf16
    monkeypatch.setattr("dap.inference.cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("dap.inference.cpu_bf16_speedup", lambda: 4.3)  # an EPYC with AVX-512 BF16
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr("dap.inference.cpu_bf16_speedup", lambda: 0.56)  # the flag, but bf16 slower (a Xeon VM)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(DapError, match="int8.*CPU only"):
        resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(DapError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)


def test_the_bf16_speedup_is_measured_once_per_machine(tmp_path, monkeypatch):
    """Timed in each process, "auto" was bf16 in one run and fp32 in the next on a loaded machine: a resumed dap
    predict refused its own outputs as made differently. Kept per CPU, torch version and thread count."""
    import json

    from dap import inference

    monkeypatch.setenv("DAP_CACHE", str(tmp_path))
    inference.cpu_bf16_speedup.cache_clear()
    speedup = inference.cpu_bf16_speedup()
    assert 0.01 < speedup < 100  # a ratio of two timings of the same matmul, whatever this CPU
    assert inference.cpu_bf16_speedup() == speedup and inference.cpu_bf16_speedup.cache_info().hits >= 1
    kept = json.loads((tmp_path / "cpu_bf16.json").read_text())
    assert list(kept.values()) == [round(speedup, 3)] and "threads" in next(iter(kept))

    def timed_again():
        raise AssertionError("measured again")

    monkeypatch.setattr(inference, "_measure_bf16_speedup", timed_again)
    inference.cpu_bf16_speedup.cache_clear()  # another process
    assert inference.cpu_bf16_speedup() == round(speedup, 3)
    monkeypatch.setattr(inference, "_measure_bf16_speedup", lambda: 3.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # another thread count: its own measure
    try:
        inference.cpu_bf16_speedup.cache_clear()
        assert inference.cpu_bf16_speedup() == 3.0
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads((tmp_path / "cpu_bf16.json").read_text())) == 2
    (tmp_path / "cpu_bf16.json").write_text("{not json")  # damaged: measured again and rewritten
    inference.cpu_bf16_speedup.cache_clear()
    assert inference.cpu_bf16_speedup() == 3.0 and len(json.loads((tmp_path / "cpu_bf16.json").read_text())) == 1
    inference.cpu_bf16_speedup.cache_clear()

    # two processes measuring at once: the one that writes second wrote over the first's figure, and the two (and
    # every later one) could decide "auto" differently; the second now takes the figure kept by the first
    (tmp_path / "cpu_bf16.json").unlink()

    def another_process_keeps_its_figure_meanwhile():
        key = f"{inference._cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
        (tmp_path / "cpu_bf16.json").write_text(json.dumps({key: 1.2}))
        return 1.7

    monkeypatch.setattr(inference, "_measure_bf16_speedup", another_process_keeps_its_figure_meanwhile)
    assert inference.cpu_bf16_speedup() == 1.2
    assert list(json.loads((tmp_path / "cpu_bf16.json").read_text()).values()) == [1.2]
    inference.cpu_bf16_speedup.cache_clear()


def test_onnx_like_models_run_fp32_only():
    class NotTorch:
        pass

    assert model_precision(NotTorch(), "auto", CPU) == "fp32"
    with pytest.raises(DapError, match="ONNX models run in fp32"):
        model_precision(NotTorch(), "bf16", CPU)


def test_int8_copy_leaves_the_model_alone(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    q = quantize_int8(tiny_model)
    assert q is not tiny_model and quantize_int8(q) is q
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert type(tiny_model.backbone.blocks[0].attn.qkv) is torch.nn.Linear
    # The heads' convolutions are shared, not copied.
    assert q.depth_head.scratch.output_conv1.weight is tiny_model.depth_head.scratch.output_conv1.weight


def test_a_quantised_model_runs_int8_and_says_so_for_other_precisions(tiny_model):
    """A prepare_model(m, "int8") model ran int8 under precision="fp32" and failed deep in torch under "bf16"."""
    q = quantize_int8(tiny_model)
    x = np.random.default_rng(0).random((32, 64, 3), dtype=np.float32)
    want = predict(x, q, resolution=(32, 64), precision="int8").depth
    np.testing.assert_array_equal(predict(x, q, resolution=(32, 64)).depth, want)  # auto: int8
    for precision in ("fp32", "bf16"):
        with pytest.raises(DapError, match=f"quantised to int8 .* pass precision='int8' or 'auto', or the float32 "
                                           f"model for {precision}"):
            predict(x, q, resolution=(32, 64), precision=precision)


def test_prepare_model_refuses_a_precision_it_would_ignore(tiny_model):
    """prepare_model(m, "bfloat16") returned the float32 model: predictions ran in float32, unknown to the caller."""
    for precision in ("bfloat16", "auto", "xx"):
        with pytest.raises(DapError, match=rf"resolved precision, one of fp32, bf16, fp16, int8; got '{precision}'"):
            prepare_model(tiny_model, precision)
    assert prepare_model(tiny_model, "fp32") is tiny_model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_16bit_weights_give_autocasts_outputs_in_half_the_memory(tiny_model, precision):
    """prepare_model stores in 16 bit the weights that autocast casts on every call: the same outputs, bit for
    bit, from half the weights' bytes; the float32 model is left as it was."""
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    q = prepare_model(tiny_model, precision)
    assert q is not tiny_model and prepare_model(q, precision) is q
    assert all(torch.equal(v, tiny_model.state_dict()[k]) and v.dtype == torch.float32 for k, v in before.items())
    assert q.backbone.blocks[0].attn.qkv.weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert q.backbone.norm.weight.dtype == torch.float32  # autocast runs norms in float32 from float32 weights
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = run_model(tiny_model, x, precision=precision), run_model(q, x, precision=precision)
    assert all(torch.equal(got[k], want[k]) for k in want)

    def size(m):
        return sum(p.numel() * p.element_size() for p in m.parameters())

    assert size(q) < 0.52 * size(tiny_model)
    # in place (dap predict's own model): the same weights, never both versions of them in memory at once
    own = copy.deepcopy(tiny_model)
    assert prepare_model(own, precision, in_place=True) is own and size(own) == size(q)
    with torch.inference_mode():
        assert all(torch.equal(run_model(own, x, precision=precision)[k], want[k]) for k in want)
    image = np.random.default_rng(0).random((32, 64, 3), dtype=np.float32)
    np.testing.assert_array_equal(predict(image, q, resolution=(32, 64)).depth,  # auto: its precision
                                  predict(image, tiny_model, resolution=(32, 64), precision=precision).depth)
    with pytest.raises(DapError, match=f"stored in {precision} .* or the float32 model for fp32"):
        predict(image, q, resolution=(32, 64), precision="fp32")
    with pytest.raises(DapError, match="float32 weights"):  # a model.half() is not a prepared model
        predict(image, copy.deepcopy(tiny_model).half(), resolution=(32, 64), precision=precision)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_model_prepared_in_place_lets_its_weights_file_go(ckpt, precision):
    """A loaded model's tensors live in the weights file as safetensors maps it. Prepared for bf16 (or int8) by
    dap predict, the float32 norms left (the biases packed with the int8 weights) kept the whole mapping: a ViT-L
    held 2.4 GB where 1.0 was needed (docs/performance.md)."""
    import gc

    weights = os.path.realpath(ckpt / "model.safetensors")

    def mapped() -> bool:
        with open("/proc/self/maps") as f:
            return any(line.rstrip().endswith(weights) for line in f)

    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        want = run_model(load_model(ckpt), x, precision=precision)["depth"]
        exact = run_model(load_model(ckpt), x, precision="fp32")["depth"]
    model = load_model(ckpt)
    assert mapped()
    prepared = prepare_model(model, precision, in_place=True)
    with torch.inference_mode():  # for int8 the float model stays whole: pages given back are read from the file
        assert torch.equal(run_model(prepared, x, precision=precision)["depth"], want)
        if precision == "int8":
            assert torch.equal(run_model(model, x, precision="fp32")["depth"], exact)
    del model
    gc.collect()
    assert not mapped()


def test_predict_keeps_16bit_weights_of_models_it_loads_only(tiny_model, ckpt, monkeypatch):
    """A model predict loads itself is converted (its float32 weights are let go); a caller's model runs under
    autocast, since a converted copy would sit beside the caller's float32 weights on every call."""
    import dap.inference

    converted = []
    real = dap.inference.with_16bit_weights
    monkeypatch.setattr(dap.inference, "with_16bit_weights",
                        lambda m, p, **kw: converted.append((p, kw)) or real(m, p, **kw))
    image = np.random.default_rng(0).random((32, 64, 3), dtype=np.float32)
    from_path = predict(image, ckpt, resolution=(32, 64), precision="bf16", device="cpu").depth
    assert converted == [("bf16", {"in_place": True})]  # nobody else holds it: no second copy of the weights
    from_module = predict(image, load_model(ckpt), resolution=(32, 64), precision="bf16", device="cpu").depth
    assert len(converted) == 1
    np.testing.assert_array_equal(from_path, from_module)


def test_prepared_model_stays_trainable(tiny_model):
    with torch.inference_mode():
        model = prepare_model(tiny_model, "fp32")
    assert not any(p.is_inference() for p in model.parameters())
    model(torch.randn(1, 3, 32, 64))["depth"].mean().backward()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])  # the heads run channels-last
@pytest.mark.parametrize("size", [(64, 128), (100, 250), (48, 40)])
@pytest.mark.parametrize("conv", [torch.nn.Conv2d, Float32Conv2d])
def test_strip_upsampling_equals_the_plain_stage(size, layout, conv):
    torch.manual_seed(0)
    head = torch.nn.Sequential(conv(8, 4, 3, padding=1), torch.nn.ReLU(), Float32Conv2d(4, 1, 1))
    x = torch.randn(2, 8, 17, 33).contiguous(memory_format=layout)
    with torch.no_grad():
        plain = head(torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True))
        strips = _upsample_then(x, size, head, rows=7)
        torch.testing.assert_close(strips, plain, atol=1e-5, rtol=1e-5)
        if conv is Float32Conv2d:  # under 16-bit autocast too: the strips' resize and convolution in float32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                strips = _upsample_then(x.bfloat16(), size, head, rows=7)
            torch.testing.assert_close(strips, head(torch.nn.functional.interpolate(
                x.bfloat16().float(), size=size, mode="bilinear", align_corners=True)), atol=1e-5, rtol=1e-5)


# --- dap predict ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    return save_model(create_model("dap_tiny"), d / "model")


def _panos(folder, count: int) -> list:
    from dap import io

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(folder / f"p{i}.png")
        io.write_rgb(paths[-1], rng.uniform(0, 1, (32, 64, 3)))
    return paths


def test_precision_option_parsing(ckpt, tmp_path, capsys):
    pano = _panos(tmp_path / "in", 1)[0]
    with pytest.raises(SystemExit) as e:
        main(["predict", str(pano), "--model", str(ckpt), "--out", str(tmp_path / "o"), "--precision", "fp8"])
    assert e.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
    assert main(["predict", str(pano), "--backend", "onnxruntime", "--model", "m.onnx", "--precision", "bf16",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ONNX models run in fp32" in err
    code = main(["predict", str(pano), "--model", str(ckpt), "--resolution", "32x64", "--out", str(tmp_path / "q"),
                 "--outputs", "npy", "--precision", "int8"])
    assert code == 0
    exact = predict(pano, load_model(ckpt), resolution=(32, 64), precision="fp32")
    got = np.load(tmp_path / "q" / "p0.npy")
    assert _absrel(got, np.where(exact.range_mask, 0, exact.depth)) <= PRECISION_TOLERANCE["int8"]


def test_auto_says_once_when_it_picks_bf16(ckpt, tmp_path, capsys, monkeypatch):
    panos = _panos(tmp_path / "in", 2)
    argv = ["predict", str(tmp_path / "in"), "--model", str(ckpt), "--resolution", "32x64", "--outputs", "npy"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "bf16" not in capsys.readouterr().err
    monkeypatch.setattr("dap.inference.cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("dap.inference.cpu_bf16_speedup", lambda: 4.3)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert err.count("computing in bf16") == 1 and "--precision fp32" in err
    assert len(panos) == 2 and len(list((tmp_path / "b").glob("*.npy"))) == 2


def test_overlapped_folder_predict_equals_sequential(ckpt, tmp_path, capsys):
    panos = _panos(tmp_path / "in", 5)
    (tmp_path / "in" / "p2.png").write_bytes(b"not an image")  # fails alone, reported in input order
    (tmp_path / "in" / "p4.png").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["predict", str(tmp_path / "in"), "--model", str(ckpt), "--resolution", "32x64", "--out", str(out),
                 "--outputs", "npy,mask", "--precision", "fp32"])
    assert code == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "p2.png" in errors[0] and "p4.png" in errors[1]
    assert "predicted 3 panorama(s)" in captured.out
    model = load_model(ckpt)
    for pano in panos[:2] + panos[3:4]:
        want = predict(pano, model, resolution=(32, 64), precision="fp32")
        np.testing.assert_array_equal(np.load(out / f"{pano.stem}.npy"), np.where(want.range_mask, 0, want.depth))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"p{i}{s}" for i in (0, 1, 3) for s in (".npy", ".mask.png")] + [f".p{i}.dap.json" for i in (0, 1, 3)])


def test_speed_benchmark_merges_runs_and_plots_them(tmp_path):
    """benchmarks/inference_speed.py --from a.json --from b.json: b's rows replace a's rows of the same model,
    resolution, precision and batch (a rerun of a few rows), the others stay; the plot is written from the merge."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference_speed.py"
    spec = importlib.util.spec_from_file_location("inference_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(variant, resolution, peak):
        return {"variant": variant, "resolution": resolution, "precision": "fp32", "batch": 1, "latency_s": 0.1,
                "peak_gb": peak}

    first = {"machine": {"name": "GPU"}, "device": "cuda",
             "results": [row("tiny", "256x512", 2.0), row("tiny", "512x1024", 0.3), row("vits", "256x512", 1.2)]}
    rerun = {"machine": {"name": "GPU"}, "device": "cuda", "results": [row("tiny", "256x512", 0.1)]}
    # its options are checked as they are parsed (a variant typo was a ValueError from the model registry)
    assert bench.comma_list(bench.variant)("tiny, vits") == ["tiny", "vits"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown variant 'nosuch'; the variants are vitl"):
        bench.comma_list(bench.variant)("tiny,nosuch")
    merged = bench.merge_results([first, rerun])
    peaks = {(r["variant"], r["resolution"]): r["peak_gb"] for r in merged["results"]}
    assert peaks == {("tiny", "256x512"): 0.1, ("tiny", "512x1024"): 0.3, ("vits", "256x512"): 1.2}
    assert merged["machine"] == first["machine"]
    bench.plot(merged, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_pipeline_benchmark_says_where_dap_predict_spends_its_time(capsys):
    """benchmarks/inference_speed.py --pipeline: images/s of `dap predict` against the network alone, and the time
    per panorama of each stage (decode and write threads, the network, the main thread's waits), measured by
    wrapping dap.cli.predict's own functions for the run only (a renamed one fails here, not on a benchmark
    machine)."""
    import importlib.util
    import re
    from pathlib import Path

    from dap.cli import predict as command

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference_speed.py"
    spec = importlib.util.spec_from_file_location("inference_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    originals = (command.predict, command._write, command._decoded, command._background, command._Writer.put)
    bench.pipeline(3, "256x512", 1)
    out = capsys.readouterr().out
    assert re.search(r"3 panoramas 512x256, bundled model on cpu .*end to end / inference alone = \d\.\d\d", out)
    stages = dict(re.findall(r"(\w[\w ]*?) (\d+\.\d)(?:,|$)", out.splitlines()[-1].split(": ", 1)[1]))
    assert set(stages) == {"decode", "waiting for decode", "network", "waiting for writer", "write"}
    assert float(stages["network"]) > 5 and float(stages["write"]) > 0.5 and float(stages["decode"]) > 0.5
    assert (command.predict, command._write, command._decoded, command._background, command._Writer.put) == originals
