"""Bad input through `dap.cli.main`: one line on stderr that names the problem, the file and the fix; exit code 2
for bad arguments or input, 1 for a failed write, 130 for Ctrl-C; nothing left behind (issue 11, item 5)."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dap import geometry, io
from dap.cli import main
from dap.models import create_model, save_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """One folder of good and bad files shared by the corpus (read-only for the tests)."""
    import cv2

    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_model(create_model("dap_tiny"), d / "ckpt")
    rng = np.random.default_rng(0)
    io.write_rgb(d / "pano.png", rng.uniform(0, 1, (32, 64, 3)))
    cv2.imwrite(str(d / "pano16.png"), (rng.uniform(0, 1, (32, 64, 3)) * 65535).astype(np.uint16))
    (d / "empty.png").write_bytes(b"")
    (d / "empty.hdr").write_bytes(b"")  # OpenCV decodes .hdr, and asserted on an empty buffer (a traceback)
    (d / "noise.png").write_bytes(rng.bytes(500))
    (d / "pano.txt").write_text("a panorama, honestly")
    io.write_rgb(d / "one.png", np.zeros((1, 1, 3), np.uint8))
    io.write_rgb(d / "wide.png", rng.uniform(0, 1, (32, 96, 3)))
    (d / "folder").mkdir()
    (d / "zero.pth").write_bytes(b"")
    (d / "noise.pth").write_bytes(rng.bytes(500))
    (d / "text.pth").write_text("not a checkpoint")
    (d / "two").mkdir()
    for name in ("a.pth", "b.pth"):
        (d / "two" / name).write_bytes(b"")
    (d / "badcfg").mkdir()
    (d / "badcfg/config.json").write_text("{not json")
    (d / "badcfg/model.safetensors").write_bytes(b"")
    np.save(d / "nan.npy", np.full((32, 64), np.nan, np.float32))
    (d / "nan_gt").mkdir()
    (d / "nan_gt/manifest.csv").write_text(f"rgb,depth\n{d / 'pano.png'},{d / 'nan.npy'}\n")
    (d / "bad_manifest").mkdir()
    (d / "bad_manifest/manifest.csv").write_bytes(b"\x00\x01garbage,,\n\"unterminated\n")
    (d / "shards").mkdir()
    (d / "shards/manifest.parquet").write_bytes(b"PAR1 cut short")
    configs = {
        "typo": "run: {stepz: 3}\n",
        "type": "run: {steps: many}\n",
        "float_int": "data: {batch_size: 2.5}\n",
        "bool": "data: {augment: maybe}\n",
        "yaml": "run: {steps: 3\n  bad: [\n",
        "list": "- run\n- data\n",
        "model": "model: {name: dap_huge}\n",
        "override": "model: {overrides: {depth_hed: 3}}\n",
        "steps0": "run: {steps: 0}\n",
        "height": "data: {height: 40, width: 80}\n",
        "ratio": "data: {height: 48, width: 64}\n",
        "sources": "data: {sources: rooms}\n",
        "shards": f"data: {{sources: [{{kind: shards, path: {d / 'shards'}}}], height: 32, width: 64}}\n"
                  "model: {name: dap_tiny}\nrun: {steps: 1, device: cpu, progress: false, val_every: 0}\n",
    }
    for name, text in configs.items():
        (d / f"{name}.yaml").write_text(text)
    return d


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exit for argument errors
        code = e.code
    return code, capsys.readouterr().err


def _check_one_line(err: str, command: str, needles) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"dap {command}: " if command else "dap: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    assert "Traceback" not in err and "weights_only" not in err
    return line


P = ["--checkpoint", "{d}/ckpt", "--resolution", "32x64", "--out", "{out}"]  # the rest of a predict command
E = ["--dataset", "folder", "--root", "{d}/nan_gt", "--out", "{out}"]  # eval with the rest of its arguments

# (argv with {d} = the inputs folder and {out} = a fresh output path, exit code, words the message must hold)
CORPUS = {
    # --- argument values (argparse types from dap.cli) --------------------------------------------------------
    "synth count 0": (["synth", "--count", "0", "--out", "{out}"], 2, ["--count", ">= 1", "'0'"]),
    "synth count negative": (["synth", "--count", "-3", "--out", "{out}"], 2, ["--count", ">= 1"]),
    "synth count not a number": (["synth", "--count", "ten", "--out", "{out}"], 2, ["--count", "'ten'"]),
    "synth workers 0": (["synth", "--count", "1", "--workers", "0", "--out", "{out}"], 2, ["--workers", ">= 1"]),
    "synth shard size 0": (["synth", "--count", "1", "--shard-size", "0", "--out", "{out}"], 2, ["--shard-size"]),
    "synth supersample 0": (["synth", "--count", "1", "--supersample", "0", "--out", "{out}"], 2, ["--supersample"]),
    "synth device cuda without one": (["synth", "--count", "1", "--device", "cuda", "--out", "{out}"], 2,
                                      ["--device", "'cuda'", "no CUDA device"]),
    "synth device unknown": (["synth", "--count", "1", "--device", "gpu9", "--out", "{out}"], 2,
                             ["--device", "'gpu9'", "cpu, cuda"]),
    "demo port too large": (["demo", "--port", "70000"], 2, ["--port", "'70000'", "1 to 65535"]),
    "curate label device": (["curate", "label", "--pool", "{d}", "--model", "x", "--device", "gpu"], 2,
                            ["--device", "'gpu' is not auto, cpu or cuda"]),
    "curate label sky share": (["curate", "label", "--pool", "{d}", "--model", "x", "--outdoor-sky-fraction", "-1"],
                               2, ["--outdoor-sky-fraction", "a share from 0 to 1, got '-1'"]),
    "curate ingest odd width": (["curate", "ingest", "{d}/pano.png", "--pool", "{out}", "--max-width", "101"], 2,
                                ["--max-width must be an even number"]),
    "curate ingest tilt nan": (["curate", "ingest", "{d}/pano.png", "--pool", "{out}", "--max-tilt", "nan"], 2,
                               ["--max-tilt must be >= 0 degrees, got nan"]),
    "curate step unknown option": (["curate", "ingest", "{d}", "--pool", "{out}", "--bogus"], 2,
                                   ["unrecognized arguments: --bogus", "see dap curate ingest --help"]),
    "synth seed negative": (["synth", "--count", "1", "--seed", "-1", "--out", "{out}"], 2, ["--seed", ">= 0"]),
    "synth resolution 0x0": (["synth", "--count", "1", "--resolution", "0x0", "--out", "{out}"], 2,
                             ["--resolution", "positive", "512x1024"]),
    "synth resolution negative": (["synth", "--count", "1", "--resolution=-8x-16", "--out", "{out}"], 2,
                                  ["positive"]),
    "synth resolution square": (["synth", "--count", "1", "--resolution", "16x16", "--out", "{out}"], 2,
                                ["not 2:1", "16x32"]),
    "synth resolution odd 3:1": (["synth", "--count", "1", "--resolution", "15x45", "--out", "{out}"], 2,
                                 ["not 2:1", "15x30"]),
    "synth resolution text": (["synth", "--count", "1", "--resolution", "big", "--out", "{out}"], 2,
                              ["HEIGHTxWIDTH", "'big'"]),
    "synth unknown kind": (["synth", "--count", "1", "--kind", "space", "--out", "{out}"], 2, ["--kind", "space"]),
    "predict resolution 0x0": (["predict", "{d}/pano.png", *P, "--resolution", "0x0"], 2, ["--resolution", "positive"]),
    "predict resolution not /16": (["predict", "{d}/pano.png", *P, "--resolution", "40x80"], 2,
                                   ["multiples of 16", "48x96"]),
    "predict resolution 3:1": (["predict", "{d}/pano.png", *P, "--resolution", "32x96"], 2, ["not 2:1"]),
    "predict seam pad 5": (["predict", "{d}/pano.png", *P, "--seam-pad", "5"], 2, ["seam padding", "0.5", "got 5"]),
    "predict seam pad nan": (["predict", "{d}/pano.png", *P, "--seam-pad", "nan"], 2, ["seam padding", "nan"]),
    "eval seam pad negative": (["eval", *E, "--checkpoint", "{d}/ckpt", "--seam-pad=-1"], 2, ["seam padding"]),
    "predict device foo": (["predict", "{d}/pano.png", *P, "--device", "foo"], 2, ["--device", "'foo'", "cpu"]),
    "predict point stride 0": (["predict", "{d}/pano.png", *P, "--point-stride", "0"], 2, ["--point-stride"]),
    "predict smooth scale 2": (["predict", "{d}/pano.png", *P, "--smooth-scale", "2"], 2,
                               ["--smooth-scale", "from 0 up to (not including) 1"]),
    "predict smooth scale 1": (["predict", "{d}/pano.png", *P, "--smooth-scale", "1"], 2, ["--smooth-scale"]),
    "predict unknown output kind": (["predict", "{d}/pano.png", *P, "--outputs", "npy,bogus"], 2,
                                    ["bogus", "npy"]),
    "predict unknown upsample": (["predict", "{d}/pano.png", *P, "--upsample", "cubic"], 2, ["--upsample", "cubic"]),
    "predict unknown option": (["predict", "{d}/pano.png", *P, "--bogus"], 2, ["unrecognized", "--bogus"]),
    "predict no inputs": (["predict", "--out", "{out}"], 2, ["INPUT"]),
    "eval max depth 0": (["eval", *E, "--checkpoint", "{d}/ckpt", "--max-depth", "0"], 2, ["--max-depth", "> 0"]),
    "eval min above max": (["eval", *E, "--checkpoint", "{d}/ckpt", "--min-depth", "5", "--max-depth", "1"], 2,
                           ["--min-depth", "--max-depth"]),
    "eval limit 0": (["eval", *E, "--checkpoint", "{d}/ckpt", "--limit", "0"], 2, ["--limit"]),
    "eval device foo": (["eval", *E, "--checkpoint", "{d}/ckpt", "--device", "foo"], 2, ["--device", "'foo'"]),
    "eval resolution 0x0": (["eval", *E, "--checkpoint", "{d}/ckpt", "--resolution", "0x0"], 2, ["--resolution"]),
    "eval unknown dataset": (["eval", "--dataset", "nope", "--root", "{d}", "--checkpoint", "{d}/ckpt", "--out",
                              "{out}"], 2, ["--dataset", "nope"]),
    "eval checkpoint and predictions": (["eval", *E, "--checkpoint", "{d}/ckpt", "--predictions", "{d}"], 2,
                                        ["not allowed with"]),
    "train stop at 0": (["train", "--config", "{d}/typo.yaml", "--out", "{out}", "--stop-at", "0"], 2, ["--stop-at"]),
    "train time limit negative": (["train", "--config", "{d}/typo.yaml", "--out", "{out}", "--time-limit", "-1"], 2,
                                  ["--time-limit"]),
    "export resolution 0x0": (["export", "onnx", "--out", "{out}.onnx", "--resolution", "0x0"], 2, ["--resolution"]),
    "export resolution square": (["export", "onnx", "--out", "{out}.onnx", "--resolution", "64x64"], 2,
                                 ["--resolution", "not 2:1"]),
    "eval size square": (["eval", "--dataset", "folder", "--root", "{d}", "--checkpoint", "{d}/ckpt", "--out", "{out}",
                          "--eval-size", "64x64"], 2, ["--eval-size", "not 2:1"]),
    "unknown command": (["paint", "--out", "{out}"], 2, ["invalid choice", "paint"]),
    # --- training configs ---------------------------------------------------------------------------------------
    "config typo key": (["train", "--config", "{d}/typo.yaml", "--out", "{out}"], 2,
                        ["typo.yaml", "unknown keys ['stepz']", "steps"]),
    "config wrong type": (["train", "--config", "{d}/type.yaml", "--out", "{out}"], 2,
                          ["type.yaml", "run.steps", "integer", "'many'"]),
    "config float for int": (["train", "--config", "{d}/float_int.yaml", "--out", "{out}"], 2,
                             ["data.batch_size", "integer", "2.5"]),
    "config bool": (["train", "--config", "{d}/bool.yaml", "--out", "{out}"], 2, ["data.augment", "true or false"]),
    "config bad yaml": (["train", "--config", "{d}/yaml.yaml", "--out", "{out}"], 2,
                        ["yaml.yaml", "not valid YAML", "line 2"]),
    "config not a mapping": (["train", "--config", "{d}/list.yaml", "--out", "{out}"], 2, ["list.yaml", "mapping"]),
    "config unknown model": (["train", "--config", "{d}/model.yaml", "--out", "{out}"], 2,
                             ["model.yaml", "dap_huge", "dap_tiny"]),
    "config unknown override": (["train", "--config", "{d}/override.yaml", "--out", "{out}"], 2,
                                ["model.overrides", "depth_hed"]),
    "config zero steps": (["train", "--config", "{d}/steps0.yaml", "--out", "{out}"], 2, ["run.steps", "at least 1"]),
    "config height not /16": (["train", "--config", "{d}/height.yaml", "--out", "{out}"], 2,
                              ["data.height", "multiple of 16"]),
    "config not 2:1": (["train", "--config", "{d}/ratio.yaml", "--out", "{out}"], 2, ["ratio.yaml", "2:1"]),
    "config list expected": (["train", "--config", "{d}/sources.yaml", "--out", "{out}"], 2,
                             ["data.sources", "list"]),
    "config missing": (["train", "--config", "{d}/missing.yaml", "--out", "{out}"], 2,
                       ["missing.yaml", "no such file"]),
    "config is a folder": (["train", "--config", "{d}/folder", "--out", "{out}"], 2, ["folder", "directory"]),
    "config binary": (["train", "--config", "{d}/noise.png", "--out", "{out}"], 2, ["noise.png", "not valid YAML"]),
    "config set without =": (["train", "--config", "{d}/steps0.yaml", "--out", "{out}", "--set", "lr"], 2,
                             ["--set", "key=value"]),
    "config set unknown entry": (["train", "--config", "{d}/steps0.yaml", "--out", "{out}", "--set", "run.x.y=1"], 2,
                                 ["--set run.x.y", "config run: unknown keys ['x']"]),
    "config set bad yaml": (["train", "--config", "{d}/steps0.yaml", "--out", "{out}", "--set", "run.steps=[1"], 2,
                            ["--set", "not valid YAML"]),
    "config set unknown key": (["train", "--config", "{d}/steps0.yaml", "--out", "{out}", "--set", "optim.lr=1"], 2,
                               ["steps0.yaml with --set optim.lr=1: ", "unknown keys ['lr']", "lr_head"]),
    "curate config missing": (["curate", "run", "--config", "{d}/missing.yaml", "--work", "{out}"], 2,
                              ["curation config", "missing.yaml", "no such file"]),
    "curate config bad yaml": (["curate", "run", "--config", "{d}/yaml.yaml", "--work", "{out}"], 2,
                               ["curation config", "not valid YAML", "line 2", "curate_tiny.yaml"]),
    "curate config set unknown key": (["curate", "run", "--config", "{d}/steps0.yaml", "--work", "{out}", "--set",
                                       "label.batchsize=3"], 2,
                                      ["steps0.yaml with --set label.batchsize=3: ", "unknown keys ['run']"]),
    "corrupt shard manifest": (["train", "--config", "{d}/shards.yaml", "--out", "{out}"], 2,
                               ["manifest.parquet", "dap synth"]),
    # --- input files ----------------------------------------------------------------------------------------------
    "missing file": (["predict", "{d}/missing.png", *P], 2, ["missing.png", "no such file"]),
    "folder without images": (["predict", "{d}/folder", *P], 2, ["no images", "folder"]),
    "empty file": (["predict", "{d}/empty.png", *P], 2, ["empty.png", "cannot read", "empty (0 bytes)"]),
    "empty hdr": (["predict", "{d}/empty.hdr", *P], 2, ["empty.hdr", "cannot read", "empty (0 bytes)"]),
    "wrong extension": (["predict", "{d}/pano.txt", *P], 2, ["pano.txt", "cannot read"]),
    "non-image bytes": (["predict", "{d}/noise.png", *P], 2, ["noise.png", "cannot read"]),
    "1x1 image": (["predict", "{d}/one.png", *P], 2, ["one.png", "2:1", "over-under"]),
    "3:1 image": (["predict", "{d}/wide.png", *P], 2, ["wide.png", "96x32", "2:1"]),
    "glob matching nothing": (["predict", "{d}/*.jpeg", *P], 2, ["*.jpeg", "matches no"]),
    # --- checkpoints ----------------------------------------------------------------------------------------------
    "zero-byte pth": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/zero.pth"], 2,
                      ["zero.pth", "empty (0 bytes)", "download it again"]),
    "random-bytes pth": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/noise.pth"], 2,
                         ["noise.pth", "not a PyTorch checkpoint", "damaged", "download it again"]),
    "text pth": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/text.pth"], 2,
                 ["text.pth", "not a PyTorch checkpoint"]),
    "several pth in a folder": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/two"], 2,
                                ["2 .pth files", "a.pth", "b.pth", "pass the one"]),
    "folder without checkpoint": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/folder"], 2,
                                  ["folder", "neither"]),
    "missing checkpoint": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/gone"], 2, ["gone", "does not exist"]),
    "corrupt checkpoint config": (["predict", "{d}/pano.png", *P, "--checkpoint", "{d}/badcfg"], 2,
                                  ["config.json", "cannot read"]),
    "export corrupt checkpoint": (["export", "onnx", "--model", "{d}/noise.pth", "--out", "{out}.onnx"], 2,
                                  ["noise.pth", "not a PyTorch checkpoint"]),
    # --- evaluation data --------------------------------------------------------------------------------------------
    "NaN depth file": (["eval", *E, "--checkpoint", "{d}/ckpt"], 2, ["nan_gt", "valid ground truth", "metrics.json"]),
    "missing dataset root": (["eval", *E, "--root", "{d}/nowhere", "--checkpoint", "{d}/ckpt"], 2,
                             ["nowhere", "does not exist"]),
    "corrupt dataset manifest": (["eval", *E, "--root", "{d}/bad_manifest", "--checkpoint", "{d}/ckpt"], 2,
                                 ["manifest.csv", "rgb and depth"]),
    "missing predictions folder": (["eval", *E, "--predictions", "{d}/nowhere"], 2,
                                   ["--predictions", "nowhere", "not a folder"]),
    # --- outputs ----------------------------------------------------------------------------------------------------
    "predict out is a file": (["predict", "{d}/pano.png", *P, "--out", "{d}/pano.png"], 2,
                              ["output folder", "pano.png", "is a file"]),
    "predict out under a file": (["predict", "{d}/pano.png", *P, "--out", "{d}/pano.png/o"], 2,
                                 ["pano.png/o", "not a folder", "another --out"]),
    "eval out is a file": (["eval", *E, "--checkpoint", "{d}/ckpt", "--out", "{d}/pano.png"], 2, ["is a file"]),
    "synth out is a file": (["synth", "--count", "1", "--out", "{d}/pano.png"], 2, ["is a file"]),
    "train out is a file": (["train", "--config", "{d}/typo.yaml", "--out", "{d}/pano.png"], 2, ["is a file"]),
    "export out is a folder": (["export", "onnx", "--out", "{d}/folder"], 2, ["is a folder", "model.onnx"]),
    "convert out is a file": (["convert", "{d}/zero.pth", "{d}/pano.png"], 2, ["output folder", "is a file"]),
    "convert zero-byte pth": (["convert", "{d}/zero.pth", "{out}"], 2, ["zero.pth", "empty"]),
    "export out under a file": (["export", "onnx", "--out", "{d}/pano.png/m.onnx"], 2, ["not a folder"]),
    "export out not .onnx": (["export", "onnx", "--out", "{out}.png"], 2, ["give the onnx file a .onnx name"]),
    "export out hidden": (["export", "onnx", "--out", "{d}/.onnx"], 2, ["a .onnx name (e.g. ", "/model.onnx)"]),
    "predict resolution not 2:1": (["predict", "{d}/pano.png", "--resolution", "100x100", "--out", "{out}"], 2,
                                   ["use e.g. 112x224"]),
}


REPORTED_IN_OUT = {"NaN depth file"}  # found only by evaluating: metrics.json lists the samples it skipped


@pytest.mark.parametrize("case", CORPUS, ids=CORPUS)
def test_bad_input_is_one_line_and_exit_2(d, tmp_path, capsys, case):
    argv, code, needles = CORPUS[case]
    argv = [a.format(d=d, out=tmp_path / "out") for a in argv]
    got, err = _run(argv, capsys)
    assert got == code, err
    command = {"paint": "", "curate": " ".join(argv[:2])}.get(argv[0], argv[0])  # curate errors name their step
    _check_one_line(err, command, needles)
    if case not in REPORTED_IN_OUT:
        assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a rejected run left files behind"


def test_sixteen_bit_panorama_is_accepted(d, tmp_path, capsys):
    assert main(["predict", str(d / "pano16.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                 "--out", str(tmp_path), "--outputs", "npy"]) == 0
    assert (tmp_path / "pano16.npy").is_file()


def test_a_very_large_panorama_is_predicted_without_pillows_bomb_warning(d, tmp_path, capsys, monkeypatch):
    from PIL import Image

    # 32x64 = 2,048 pixels, over this limit and under twice it: Pillow's "decompression bomb" warning zone (89-179 MP
    # by default, where 16K panoramas are), which `dap predict` does not repeat to its user
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    code, err = _run(["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                      "--out", str(tmp_path), "--outputs", "npy"], capsys)
    assert code == 0 and (tmp_path / "pano.npy").is_file()
    assert "DecompressionBomb" not in err and "warning" not in err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice the limit: refused, with what to do
    code, err = _run(["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                      "--out", str(tmp_path / "refused"), "--outputs", "npy"], capsys)
    assert code == 2 and "Downscale it first" in err


def test_an_output_folder_that_is_a_broken_link_says_so(d, tmp_path, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    code, err = _run(["predict", str(d / "pano.png"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    _check_one_line(err, "predict", [f"it is a symbolic link to {tmp_path / 'gone'}, which does not exist"])


def test_no_write_permission(d, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dap.cli.os.access", lambda *a, **k: False)  # tests may run as root, who can write anywhere
    for argv in (["predict", str(d / "pano.png"), "--out", str(tmp_path / "o")],
                 ["synth", "--count", "1", "--out", str(tmp_path / "o")],
                 ["export", "onnx", "--out", str(tmp_path / "m.onnx")]):
        code, err = _run(argv, capsys)
        assert code == 2
        _check_one_line(err, argv[0], ["no write permission", str(tmp_path), "another --out"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("state, says", [
    ({"core.pretrained.model.cls_token": torch.zeros(1, 1, 8)}, "official checkpoint lacks 'backbone.blocks.<n>.*'"),
    ({1: torch.zeros(2)}, "is not a flat state dict of tensors (got a dict of other keys or values than names"),
])
def test_convert_of_a_malformed_checkpoint_is_one_line(tmp_path, capsys, state, says):
    """An official-layout file without backbone blocks ended in `max() arg is an empty sequence`, a dict with integer
    keys in `'int' object has no attribute 'removeprefix'`: tracebacks, exit 1."""
    torch.save(state, tmp_path / "model.pth")
    code, err = _run(["convert", str(tmp_path / "model.pth"), str(tmp_path / "out")], capsys)
    assert code == 2
    _check_one_line(err, "convert", [says])


def test_convert_replaces_an_earlier_conversion_whole_and_nothing_else(d, tmp_path, capsys):
    import json

    from dap.errors import CheckpointError
    from dap.models import load_model

    out = tmp_path / "converted"
    assert main(["convert", str(d / "ckpt"), str(out)]) == 0
    first = json.loads((out / "config.json").read_text())["save_id"]
    assert main(["convert", str(d / "ckpt"), str(out)]) == 0  # an earlier conversion is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no temporary folder left beside it
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["save_id"] != first
    # a save interrupted between its two files: the weights of one save beside the config of another
    save_model(create_model("dap_tiny"), tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", out / "model.safetensors")
    with pytest.raises(CheckpointError, match="were written by different saves"):
        load_model(out)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    capsys.readouterr()
    code, err = _run(["convert", str(d / "ckpt"), str(tmp_path / "mine")], capsys)
    assert code == 2 and "is not a model folder of ours" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    # a Hugging Face model folder has the same two file names as ours: its config says whose it is
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BertModel"]}')
    (hf / "model.safetensors").write_bytes(b"theirs")
    code, err = _run(["convert", str(d / "ckpt"), str(hf)], capsys)
    assert code == 2 and "is not a model folder of ours (config.json saying \"format\": \"dap\"" in err
    assert (hf / "model.safetensors").read_bytes() == b"theirs"
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(d / "ckpt"), str(tmp_path / "empty")]) == 0  # an empty folder made for it
    # a model folder of ours that is not a conversion (a trained model, `dap train`'s final/) was replaced by it
    trained = tmp_path / "trained"
    save_model(create_model("dap_tiny"), trained, training={"trainer": "dap.train", "steps": 10})
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    code, err = _run(["convert", str(d / "ckpt"), str(trained)], capsys)
    assert code == 2 and "is a model that `dap convert` did not write" in err
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before
    # and a conversion onto its own source lost the record of how it was made
    code, err = _run(["convert", str(out), str(out)], capsys)
    assert code == 2 and "is the model to convert" in err


def test_convert_into_this_folder_or_a_link_to_one(d, tmp_path, capsys, monkeypatch):
    """`dap convert x .` was a ValueError traceback; into a link to an empty folder it renamed the link aside (left
    as a hidden file) and wrote a new folder in its place, the link's target left empty."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert main(["convert", str(d / "ckpt"), "."]) == 0
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["config.json", "model.safetensors"]
    code, err = _run(["convert", str(d / "ckpt"), "."], capsys)  # replacing it would pull the folder from under us
    assert code == 2 and "is the folder this command runs in" in err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for _ in range(2):  # into the empty target, then replacing that conversion
        assert main(["convert", str(d / "ckpt"), "link"]) == 0
        assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["config.json", "model.safetensors"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "link", "target"]
        assert (tmp_path / "link").is_symlink()


def test_a_file_named_like_an_option_is_said_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    io.write_rgb(tmp_path / "-pano.png", np.zeros((32, 64, 3)))
    io.write_rgb(tmp_path / "b.png", np.zeros((32, 64, 3)))
    for argv in (["predict", "-pano.png", "--out", "o"], ["predict", "b.png", "-pano.png", "--out", "o"]):
        code, err = _run(argv, capsys)
        _check_one_line(err, "predict", ["-pano.png is a file, read as an option because of its leading '-': write "
                                         "it as ./-pano.png"])
        assert code == 2


def test_ctrl_c_exits_130_with_one_line(d, tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("dap.cli.synth.run", interrupted)
    code, err = _run(["synth", "--count", "1", "--out", str(tmp_path / "s")], capsys)
    assert code == 130 and err == "dap synth: interrupted\n"


def test_an_error_in_a_data_loader_worker_is_reported_without_its_traceback():
    from torch._utils import ExceptionWrapper

    from dap.cli import _without_worker_traceback
    from dap.errors import UnreadableFileError

    try:
        raise UnreadableFileError("cannot read shard a.tar: bad.\nDelete it")
    except UnreadableFileError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")  # as torch's worker loop does
    with pytest.raises(UnreadableFileError) as e:
        wrapped.reraise()
    assert "Original Traceback" in str(e.value)
    assert _without_worker_traceback(str(e.value)).strip() == "cannot read shard a.tar: bad.\nDelete it"


def test_a_config_error_is_said_by_rank_0_alone(d, tmp_path, capsys, monkeypatch):
    argv = ["train", "--config", str(d / "typo.yaml"), "--out", str(tmp_path / "r")]
    monkeypatch.setenv("RANK", "1")
    assert _run(argv, capsys) == (2, "")  # the same config fails the same way on every rank
    monkeypatch.setenv("RANK", "0")
    code, err = _run(argv, capsys)
    assert code == 2 and "unknown keys ['stepz']" in err


def test_a_torchrun_process_whose_peer_failed_says_so_in_one_line(d, tmp_path, capsys, monkeypatch):
    def cut_off(args):  # what gloo raises in a collective when the other process has died
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:29500")

    monkeypatch.setattr("dap.cli.synth.run", cut_off)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = _run(["synth", "--count", "1", "--out", str(tmp_path / "s")], capsys)
    assert code == 1
    _check_one_line(err, "synth", ["stopped: another process of this run failed (its error is printed above)"])
    monkeypatch.setenv("WORLD_SIZE", "1")  # alone, the same error is a bug: its traceback is kept
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(["synth", "--count", "1", "--out", str(tmp_path / "s")])


def test_a_folder_another_run_is_writing_is_refused(d, tmp_path, capsys):
    from dap.io import folder_lock

    config = tmp_path / "c.yaml"
    config.write_text("data: {height: 32, width: 64, batch_size: 1, sources: [{kind: rooms, size: 2}]}\n"
                      "run: {steps: 1, device: cpu, progress: false}\n")
    with folder_lock(tmp_path / "busy", "dap train (process 12345)"):
        for argv in (["synth", "--count", "1", "--resolution", "32x64", "--out", str(tmp_path / "busy")],
                     ["train", "--config", str(config), "--out", str(tmp_path / "busy")],
                     ["curate", "ingest", str(d / "pano.png"), "--pool", str(tmp_path / "busy")],
                     ["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64", "--out",
                      str(tmp_path / "busy")]):
            code, err = _run(argv, capsys)
            assert code == 2, err
            assert f"{tmp_path / 'busy'} is in use by dap train (process 12345)" in err, err
    assert _run(["synth", "--count", "1", "--resolution", "32x64", "--out", str(tmp_path / "busy")], capsys)[0] == 0


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_predict_writes_waits_for_that_write_and_begins_no_other(d, tmp_path, sig):
    """Ctrl-C or SIGTERM while the writer thread wrote a panorama's outputs aborted the process (SIGABRT, "terminate
    called without an active exception"): the interrupted join took the thread for finished and the interpreter
    exited under it, in torch code. Now the write in progress ends, the queued ones are dropped, exit 130 / 143."""
    import signal

    for name in "abc":
        io.write_rgb(tmp_path / "in" / f"{name}.png", np.full((32, 64, 3), 0.5))
    code = ("import sys, time\nimport dap.cli.predict as p\nfrom dap.cli import main\nwrite = p._write\n"
            "def slow(job, *args):\n    open(sys.argv[1] + '/writing-' + job[1].name, 'w').close()\n"
            "    time.sleep(2)\n    write(job, *args)\n"
            "p._write = slow\nsys.exit(main(sys.argv[2:]))\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    argv = [sys.executable, "-c", code, str(marks), "predict", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
            "--checkpoint", str(d / "ckpt"), "--resolution", "32x64", "--outputs", "npy"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (marks / "writing-a").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[sig], err
    assert (tmp_path / "o" / "a.npy").is_file()  # the write in progress ended
    assert sorted(p.name for p in marks.iterdir()) == ["writing-a"]  # and no other began


def test_sigterm_mid_write_cleans_up_and_exits_143(tmp_path):
    import signal

    out = tmp_path / "s"
    # a shard that takes hours: the signal cannot come after the run ended (a CI run rendered 400 before it came)
    cmd = [sys.executable, "-m", "dap.cli", "synth", "--count", "1000000", "--resolution", "32x64", "--shard-size",
           "1000000", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(out.glob(".shard-*.tmp.tar")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # until the shard's temporary file is being written
    assert list(out.glob(".shard-*.tmp.tar")), proc.poll()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().endswith("dap synth: terminated"), err
    assert not list(out.glob(".*.tmp*")) and not list(out.glob("shard-*.tar"))


@pytest.mark.parametrize("signum, code, says", [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_a_signal_to_the_process_group_of_synth_workers_says_one_line_and_cleans_up(tmp_path, signum, code, says):
    # a terminal's Ctrl-C (SIGINT), `timeout`, Slurm and systemd (SIGTERM) reach the workers too: only the parent
    # speaks, and their shards in progress are removed
    import signal

    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "dap.cli", "synth", "--count", "2000000", "--resolution", "32x64", "--shard-size",
           "1000000", "--workers", "2", "--out", str(out), "--no-progress"]
    # as from a terminal: a shell starts background jobs (pytest launched with `&`, say) with Ctrl-C ignored, and
    # the child would inherit that
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list(out.glob(".shard-*.tmp.tar"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # until both workers are writing their shard
    assert len(list(out.glob(".shard-*.tmp.tar"))) == 2, proc.poll()
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip() == f"dap synth: {says}", err
    assert not list(out.glob(".*.tmp*")) and not list(out.glob("shard-*.tar"))


def test_sigterm_to_the_process_group_of_a_labeling_with_workers_says_one_line(tmp_path):
    """`timeout` and Slurm signal the whole group: a DataLoader worker died of it first and the labeling failed with
    "DataLoader worker ... is killed by signal: Terminated" and tracebacks (sometimes exit 1)."""
    import signal

    from dap.curation.manifest import read_manifest

    src = tmp_path / "src"
    for i in range(60):
        io.write_rgb(src / f"p{i:02d}.png", np.random.default_rng(i).random((64, 128, 3), dtype=np.float32))
    assert main(["curate", "ingest", str(src), "--pool", str(tmp_path / "pool"), "--max-tilt", "90", "--min-width",
                 "64", "--no-progress"]) == 0
    assert len(read_manifest(tmp_path / "pool")) == 60
    cmd = [sys.executable, "-m", "dap.cli", "curate", "label", "--pool", str(tmp_path / "pool"), "--resolution",
           "256x512", "--model", "dap-tiny-synth", "--batch-size", "1", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)
    labels = tmp_path / "pool" / "labels" / "stage1"
    deadline = time.monotonic() + 120
    while len(list(labels.glob("*.npz")) if labels.is_dir() else []) < 2 and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)  # until its worker is feeding it
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and err.strip().endswith("terminated"), err


def test_ctrl_c_while_writing_leaves_no_partial_file(d, tmp_path, capsys, monkeypatch):
    real_save = np.save

    def save_then_interrupt(file, arr, *args, **kwargs):
        real_save(file, arr, *args, **kwargs)  # the temporary is on disk when the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", save_then_interrupt)
    out = tmp_path / "o"
    code, err = _run(["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                      "--out", str(out), "--outputs", "npy"], capsys)
    assert code == 130 and err.strip() == "dap predict: interrupted"
    # no partial output; only the record that says the outputs were being written (a rerun makes them again)
    assert [p.name for p in out.iterdir()] == [".pano.dap.json"]
    assert json.loads((out / ".pano.dap.json").read_text())["complete"] is False


def test_a_short_write_without_an_error_number_is_said_as_a_full_disk(d, tmp_path, capsys, monkeypatch):
    def short(path, *args, **kwargs):  # what numpy raises when the disk fills mid-write
        raise OSError("32768 requested and 31712 written")

    monkeypatch.setattr("dap.io.write_depth", short)
    code, err = _run(["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                      "--out", str(tmp_path / "out"), "--outputs", "npy"], capsys)
    assert code == 1
    _check_one_line(err, "predict", ["no space left on device", "free"])
    # under a file size limit (ulimit -f) the same words may be that limit: said with both (was "no space left")
    import argparse

    import dap.cli
    from dap.cli import _os_error

    monkeypatch.setattr(dap.cli, "_file_size_limit", lambda: 768000)
    code, err = _run(["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                      "--out", str(tmp_path / "out"), "--outputs", "npy"], capsys)
    _check_one_line(err, "predict", ["a file was cut short", "size limit (768000 bytes, ulimit -f) or a full disk"])
    assert _os_error(OSError(errno.EFBIG, "File too large", "o/x.npy"), argparse.Namespace(out="o")) == (
        "a file would pass this process's file size limit (768000 bytes), o/x.npy; raise it (ulimit -f unlimited) or "
        "choose another --out")


@pytest.mark.parametrize("filename", [None, "out/pano.npy", "out/.pano.npy.0123456789ab.tmp.npy"])
def test_disk_full_names_the_file_and_exits_1(d, tmp_path, capsys, monkeypatch, filename):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(tmp_path / filename)] if filename else []))

    monkeypatch.setattr("dap.io.write_depth", full)
    shutil.copy(d / "pano.png", tmp_path / "b.png")  # a second input: the run stops at the first
    code, err = _run(["predict", str(d / "pano.png"), str(tmp_path / "b.png"), "--checkpoint", str(d / "ckpt"),
                      "--resolution", "32x64", "--out", str(tmp_path / "out"), "--outputs", "npy"], capsys)
    assert code == 1
    named = "out/pano.npy" if filename else "out"  # the file being written, not atomic_write's temporary
    _check_one_line(err, "predict", ["no space left on device", f"{tmp_path / named};", "free"])


def test_other_write_errors_exit_1(d, tmp_path, capsys, monkeypatch):
    def broken(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "s" / "shard-000000.tar"))

    monkeypatch.setattr("dap.cli.synth.run", broken)
    code, err = _run(["synth", "--count", "1", "--out", str(tmp_path / "s")], capsys)
    assert code == 1
    _check_one_line(err, "synth", ["input/output error", "shard-000000.tar"])


def test_code_bugs_keep_their_traceback(d, tmp_path, monkeypatch):
    def bug(args):
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setattr("dap.cli.synth.run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["synth", "--count", "1", "--out", str(tmp_path / "s")])


def _age(path, seconds=3600):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_temporaries_of_killed_runs_are_removed(d, tmp_path, capsys):
    out = tmp_path / "o"
    (out / "sub" / ".x.cube.tmp").mkdir(parents=True)
    stale = [out / ".pano.npy.0123456789ab.tmp.npy", out / "sub" / ".a.png.abcdef012345.tmp.png",
             out / "sub" / ".x.cube.tmp"]
    for p in stale[:2]:
        p.write_bytes(b"half")
    fresh = out / ".b.npy.0123456789ab.tmp.npy"  # may belong to a run still writing here
    fresh.write_bytes(b"half")
    mine = out / ".notes.tmp"  # not a name we write
    mine.write_text("keep")
    for p in [*stale, mine]:
        _age(p)
    assert main(["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
                 "--out", str(out), "--outputs", "npy"]) == 0
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and mine.exists() and (out / "pano.npy").is_file()


def test_rejected_or_interrupted_synth_does_not_block_the_corrected_rerun(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    assert _run(["synth", "--count", "0", "--out", str(out)], capsys)[0] == 2
    assert not out.exists()  # validated before anything was written

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dap.data.shards._write_shard", interrupted)
    base = ["synth", "--count", "1", "--kind", "indoor", "--no-progress", "--out", str(out)]
    assert _run([*base, "--resolution", "16x32"], capsys)[0] == 130
    assert (out / "synth_config.json").is_file() and not list(out.glob("shard-*.tar"))
    monkeypatch.undo()
    assert main([*base, "--resolution", "8x16"]) == 0  # other settings: fine, nothing was rendered yet
    assert (out / "shard-000000.tar").is_file()


def test_corrupt_synth_config_beside_shards(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["synth", "--count", "1", "--kind", "indoor", "--no-progress", "--resolution", "8x16", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    (out / "synth_config.json").write_text("{cut sho")
    code, err = _run(argv, capsys)
    assert code == 2
    _check_one_line(err, "synth", ["synth_config.json", "new --out"])


def test_corrupt_eval_cache(d, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    io.write_depth(root / "gt.npy", np.full((32, 64), 2.0, np.float32))
    (root / "manifest.csv").write_text(f"rgb,depth\n{d / 'pano.png'},{root / 'gt.npy'}\n")
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "folder", "--root", str(root), "--checkpoint", str(d / "ckpt"), "--out", str(out),
            "--resolution", "32x64", "--panels", "0"]
    assert main(argv) == 0
    capsys.readouterr()
    cached = next((out / "predictions").glob("*.npy"))
    good = cached.read_bytes()
    cached.write_bytes(b"\x93NUMPY cut short")
    code, err = _run(argv, capsys)  # a damaged cached prediction is made again
    assert code == 0 and cached.read_bytes() == good
    (out / "predictions" / "cache.json").write_text("{cut")
    code, err = _run(argv, capsys)
    assert code == 2
    _check_one_line(err, "eval", ["cache.json", "corrupt", "delete"])


def test_eval_of_small_panoramas_warns_once_naming_how_many(d, tmp_path, capsys):
    """Panoramas 4x or more smaller than the working resolution are evaluated, with one warning line for all of
    them (how many, the first one's name), not one Python warning per image."""
    import shutil

    root = tmp_path / "data"
    root.mkdir()
    for i in range(3):  # each its own ground truth (one file for several samples is refused)
        shutil.copy(d / "pano.png", root / f"p{i}.png")
        io.write_depth(root / f"gt{i}.npy", np.full((32, 64), 2.0, np.float32))
    (root / "manifest.csv").write_text("rgb,depth\n" + "".join(f"{root / f'p{i}.png'},{root / f'gt{i}.npy'}\n"
                                                                 for i in range(3)))
    argv = ["eval", "--dataset", "folder", "--root", str(root), "--checkpoint", str(d / "ckpt"), "--out",
            str(tmp_path / "out"), "--resolution", "256x512", "--panels", "0"]
    code, err = _run(argv, capsys)
    assert code == 0
    line = _check_one_line(err, "eval", ["warning: 3 of 3 samples", "64x32 pixels (width x height)", "enlarged 8x"])
    assert "p0" in line


def test_an_animation_is_predicted_from_its_first_frame_and_says_so(d, tmp_path, capsys):
    """An animated WebP (or GIF, APNG, multi-page TIFF) is one image to predict: its first frame, with one warning
    line naming the file and how many frames it holds, from `dap predict` and from `dap.predict` alike."""
    from PIL import Image

    from dap.errors import InputWarning
    from dap.inference import predict

    rng = np.random.default_rng(1)
    first, second = (Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)) for _ in range(2))
    first.save(tmp_path / "anim.webp", save_all=True, append_images=[second], lossless=True)
    first.save(tmp_path / "still.webp", lossless=True)
    argv = ["predict", str(tmp_path / "anim.webp"), str(tmp_path / "still.webp"), "--model", str(d / "ckpt"),
            "--resolution", "32x64", "--outputs", "npy", "--out", str(tmp_path / "out")]
    code, err = _run(argv, capsys)
    assert code == 0
    _check_one_line(err, "predict", ["warning", "anim.webp", "holds 2 frames", "only the first"])
    assert "still.webp" not in err
    # the first frame's depth, as if it had been saved alone
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "anim.npy"), np.load(tmp_path / "out" / "still.npy"))
    with pytest.warns(InputWarning, match="anim.webp: the file holds 2 frames"):
        predict(tmp_path / "anim.webp", str(d / "ckpt"), resolution=(32, 64))


# --- the CLI sits on top of the library ---------------------------------------------------------------------------
def _python(code: str) -> str:
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_partly_transparent_panorama_says_how_much_of_it_is(d, tmp_path, capsys):
    from PIL import Image

    from dap.errors import InputWarning
    from dap.inference import predict

    rgba = np.random.default_rng(0).integers(0, 256, (32, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    rgba[:, :16, 3] = 0  # a quarter of it transparent (an unfinished stitch, say)
    Image.fromarray(rgba).save(tmp_path / "hole.png")
    argv = ["predict", str(tmp_path / "hole.png"), str(tmp_path / "opaque.png"), "--model", str(d / "ckpt"),
            "--resolution", "32x64", "--outputs", "npy", "--out", str(tmp_path / "out")]
    code, err = _run(argv, capsys)
    assert code == 0
    _check_one_line(err, "predict", ["warning", "hole.png", "25% of it is transparent"])
    with pytest.warns(InputWarning, match="hole.png: 25% of it is transparent"):
        predict(tmp_path / "hole.png", str(d / "ckpt"), resolution=(32, 64))
    # the same image as a PIL image or an array (uint8 or float alpha): they were silent
    for image in (Image.open(tmp_path / "hole.png"), rgba, rgba.astype(np.float32) / 255):
        with pytest.warns(InputWarning, match="input image: 25% of it is transparent"):
            predict(image, str(d / "ckpt"), resolution=(32, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(Image.open(tmp_path / "opaque.png"), str(d / "ckpt"), resolution=(32, 64))


def test_benchmarks_against_a_folder_without_dap_is_refused(tmp_path):
    """--against of the benchmarks imported "dap" from a wrong folder's sys.path entry, found this checkout's, and
    timed it as "before" (ratios of 1.0x, exit 0)."""
    import argparse

    from dap.cli import package_source

    with pytest.raises(argparse.ArgumentTypeError, match="holds no dap package"):
        package_source(str(tmp_path))
    src = Path(__file__).resolve().parents[1] / "src"
    assert package_source(str(src)) == str(src)


@pytest.mark.parametrize("script, args, message", [
    ("train_step.py", ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    ("train_step.py", ["--variant", "nosuch", "--steps", "1"], "unknown model 'nosuch'"),
    ("predict_memory.py", ["--model", "x", "--sizes", "0"], "argument --sizes: expected an integer >= 1"),
    ("predict_memory.py", ["--model", "x", "--malloc", "nosuch"], "unknown allocator setting 'nosuch'"),
    ("train_loader.py", ["--data", "DATA"], "--data: DATA/manifest.parquet does not exist"),
    ("curate_label_throughput.py", ["--source", "DATA"], "--source: no .jpg or .png panoramas in DATA"),
    ("synth_throughput.py", ["--resolution", "32x65"], "size '32x65' is not 2:1"),
    ("onnx_speed.py", ["--models", "dap_tiny,nosuch"], "unknown architecture 'nosuch'"),
    ("inference_quality.py", ["--parts", "seam,nosuch"], "unknown table 'nosuch'"),
])
def test_benchmarks_refuse_bad_options_with_a_message(tmp_path, script, args, message):
    """Zero steps ended train_step.py in a ZeroDivisionError, --sizes 0 and child failures in tracebacks."""
    script_path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    args = [a.replace("DATA", str(tmp_path)) for a in args]
    out = subprocess.run([sys.executable, str(script_path), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert message.replace("DATA", str(tmp_path)) in out.stderr
    assert "Traceback" not in out.stderr


def test_predict_memory_times_every_repeat(tmp_path):
    """Its second repeat predicted into the first one's folder with --overwrite, which now keeps outputs made the
    same way: dap predict skipped the panorama, printed no time, and the benchmark ended in a traceback."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_memory.py"
    out = subprocess.run([sys.executable, str(script), "--model", "dap-tiny-synth", "--sizes", "64", "--repeats", "2",
                          "--malloc", "glibc default"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| 64x128 | this checkout | - | glibc default |" in out.stdout


def test_help_loads_no_heavy_library():
    heavy = "('torch', 'cv2', 'OpenEXR')"
    code = f"import sys, dap.cli; dap.cli.build_parser(); print([m for m in {heavy} if m in sys.modules])"
    assert _python(code) == "[]"


def test_library_never_imports_the_cli():
    import pkgutil

    import dap

    library = [m.name for m in pkgutil.walk_packages(dap.__path__, "dap.")
               if not m.name.startswith("dap.cli") and m.name != "dap.__main__"]  # `python -m dap`: the command
    assert "dap.train" in library and "dap.data.synthetic" in library
    code = f"import importlib, sys\nfor m in {library!r}: importlib.import_module(m)\nprint('dap.cli' in sys.modules)"
    assert _python(code) == "False"


def test_every_command_has_a_module(capsys):
    from dap.cli import COMMANDS

    for name in [*COMMANDS, "curate ingest", "curate run"]:
        with pytest.raises(SystemExit) as e:
            main([*name.split(), "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0 and f"usage: dap {name}" in text
        # an option says its default once, in words where it has no value of its own
        assert "(default: None)" not in text
        assert not re.search(r"default[^()]{0,120}\(default: ", text, flags=re.IGNORECASE), name


def test_closed_stdout_stops_quietly():
    """`dap models | head`: the reader goes away; no error line, no 'Exception ignored', exit 141 (SIGPIPE)."""
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "dap.cli", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes a line: every write finds the pipe closed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_a_file_name_that_is_not_utf8_prints_escaped_on_a_strict_utf8_terminal(d, tmp_path):
    """A desktop's en_US.UTF-8 locale gives Python a strict stdout; the summary line names --out, whose Latin-1
    byte reaches Python as a surrogate: printing it ended the run with a UnicodeEncodeError after the work."""
    import sys

    out = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run([sys.executable, "-m", "dap.cli", "predict", str(d / "pano.png"), "--out", out,
                           "--checkpoint", str(d / "ckpt"), "--resolution", "32x64", "--outputs", "npy"],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"in " + bytes(tmp_path) + b"/caf\\udce9" in proc.stdout and os.path.isfile(os.path.join(out, "pano.npy"))


def test_a_broken_pipe_elsewhere_is_still_an_error(capsys, monkeypatch):
    def broken(args):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    monkeypatch.setattr("dap.cli.models.run", broken)
    code, err = _run(["models"], capsys)
    assert code == 1 and err.startswith("dap models: error: broken pipe")


def test_predict_camera_height_rescales_to_the_floor(d, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["predict", str(d / "pano.png"), "--checkpoint", str(d / "ckpt"), "--resolution", "32x64",
            "--outputs", "npy"]
    assert main([*args, "--out", str(out / "guess")]) == 0
    assert main([*args, "--out", str(out / "fixed"), "--camera-height", "1.6"]) == 0
    guess, fixed = (np.load(out / k / "pano.npy") for k in ("guess", "fixed"))
    in_range = guess < 100.0  # out-of-range pixels stay at the cap
    ratio = fixed[in_range] / guess[in_range]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # one factor for the whole panorama ...
    assert abs(ratio[0] - 1) > 0.05
    assert geometry.floor_and_ceiling(fixed, in_range)[0] == pytest.approx(1.6, rel=1e-4)  # ... putting the floor there
    code, err = _run([*args, "--out", str(out / "bad"), "--camera-height", "0"], capsys)
    assert code == 2 and "argument --camera-height: expected a number of metres > 0" in err


def test_a_cut_short_video_is_one_line_of_ours_not_ffmpegs_log(tmp_path):

    (tmp_path / "cut.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))  # an MP4 header, no moov atom
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    proc = subprocess.run([sys.executable, "-m", "dap.cli", "predict", str(tmp_path / "cut.mp4"), "--out",
                           str(tmp_path / "out"), "--outputs", "npy"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 2
    assert "moov" not in proc.stderr and "cut.mp4: OpenCV cannot open it as a video" in proc.stderr


def test_an_interrupted_predict_closes_what_its_decoding_thread_holds():
    """A video's OpenCV capture stayed open after Ctrl-C (the traceback kept the decoding generator alive) until the
    interpreter exited, which sometimes aborted the process (exit 134) instead of exiting 130."""
    from dap.cli.predict import _background

    released = []

    def frames():
        try:
            yield from range(100)
        finally:
            released.append(True)  # a capture's release()

    try:
        for i in _background(frames()):
            if i == 1:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        assert released == [True]  # already, while the traceback still holds the consumer's frame
    assert list(_background(iter(range(5)))) == [0, 1, 2, 3, 4]  # an iterator without close()


def test_a_write_error_names_the_option_of_the_folder_written_to():
    """A read-only pool told `dap curate select` (no --out) to "choose another --out"."""
    import argparse
    import errno

    from dap.cli import _os_error

    denied = PermissionError(errno.EACCES, "Permission denied", "/p/manifest.parquet")
    assert _os_error(denied, argparse.Namespace(command="curate", pool="/p")).endswith(
        "check the permissions or choose another --pool")
    assert _os_error(denied, argparse.Namespace(command="curate", work="/w")).endswith("choose another --work")
    assert _os_error(denied, argparse.Namespace(command="predict", out="/o")).endswith("choose another --out")
    full = OSError(errno.ENOSPC, "No space left on device", "/c/model.safetensors")
    assert _os_error(full, argparse.Namespace(command="convert", out="/c")).endswith(
        "free some space or choose another output folder")


@pytest.mark.parametrize("argv", [["synth", "--count", "1", "--out", ""], ["predict", "x.png", "--out", " "],
                                  ["eval", "--dataset", "synth", "--root", "x", "--out", ""],
                                  ["export", "onnx", "--out", ""], ["train", "--config", "x.yaml", "--out", ""],
                                  ["curate", "status", "--pool", ""], ["curate", "run", "--config", "x", "--work", ""],
                                  ["convert", "x.pth", ""]])
def test_an_empty_output_folder_is_refused(argv, tmp_path, capsys, monkeypatch):
    """`dap synth --out "$DIR"` with DIR unset wrote a dataset into the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "is empty (an unset shell variable?)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
