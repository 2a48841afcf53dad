"""Weights by name: the registry, the real huggingface_hub download path (offline, on a hand-laid cache) and the
one-time conversion to our format."""

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from dap.errors import CheckpointError
from dap.models import load_model, registry
from dap.models.backbone import ViTConfig
from dap.models.dap import DAP, DapConfig
from dap.models.dinov3 import expected_bias_mask
from dap.models.official import _ALIAS_PREFIX, _PREFIX_MAP

REPO = "Insta360-Research/DAP-weights"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The smallest network the official-format reader accepts (it knows 12- and 24-block backbones; 64-d = 1 head).
TINY_OFFICIAL = DapConfig(
    name="dap_vit64", vit=ViTConfig(embed_dim=64, depth=12, num_heads=1), layers=(2, 5, 8, 11), features=16,
    out_channels=(16, 32, 64, 64), token_adapter="official",
)


def official_layout(model: DAP) -> dict[str, torch.Tensor]:
    """Our weights in the released file's layout: `module.core.*` keys, every backbone block registered a second
    time, and the DINOv3 qkv bias masks."""
    sd = {}
    for key, value in model.state_dict().items():
        old, new = next((old, new) for old, new in _PREFIX_MAP if key.startswith(new))
        sd[old + key[len(new):]] = value
    for key in list(sd):
        if key.startswith("core.pretrained.model.blocks."):
            sd[_ALIAS_PREFIX + key.removeprefix("core.pretrained.model.blocks.")] = sd[key]
            if key.endswith("attn.qkv.bias"):
                sd[key + "_mask"] = expected_bias_mask(sd[key].numel())
    return {"module." + k: v for k, v in sd.items()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face setup: HF_HOME/HF_HUB_CACHE in tmp_path, HF_HUB_OFFLINE=1. huggingface_hub reads
    these variables once, at import, so its constants are set too (a subprocess sees the variables only)."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, name, value == "1" if name == "HF_HUB_OFFLINE" else value)
    monkeypatch.delenv("DAP_CACHE", raising=False)
    return home


def put_in_hub_cache(hub_cache: Path, repo: str, filename: str, data: bytes, commit: str = COMMIT) -> None:
    """Lay a file out exactly as huggingface_hub's cache does: the content under blobs/<sha256>, the branch in
    refs/main, and snapshots/<commit>/<filename> a relative symlink to the blob."""
    root = hub_cache / ("models--" + repo.replace("/", "--"))
    sha = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / sha).write_bytes(data)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(Path("..", "..", "blobs", sha))


@pytest.fixture
def tiny_release(hub, tmp_path, monkeypatch):
    """A small official-layout model.pth in the Hub cache; the registry's dap-vitl entry expects its architecture."""
    torch.manual_seed(0)
    model = DAP(TINY_OFFICIAL).eval()
    torch.save(official_layout(model), tmp_path / "model.pth")
    put_in_hub_cache(hub / "hub", REPO, "model.pth", (tmp_path / "model.pth").read_bytes())
    monkeypatch.setitem(registry.MODELS, "dap-vitl", dataclasses.replace(registry.MODELS["dap-vitl"],
                                                                         config=TINY_OFFICIAL))
    return model


def outputs(model, x):
    with torch.inference_mode():
        return model(x)


def test_named_model_is_fetched_from_the_hub_cache_and_converted_once(tiny_release, hub, monkeypatch):
    x = torch.randn(1, 3, 64, 128)
    model = load_model("dap-vitl")
    assert model.cfg == TINY_OFFICIAL
    for key, value in outputs(tiny_release, x).items():
        assert torch.equal(outputs(model, x)[key], value)
    converted = hub / "dap" / "converted" / "dap-vitl" / COMMIT
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors"]
    assert os.listdir(converted.parent) == [COMMIT]  # the temporary folder was renamed, none is left
    # Later loads read the converted safetensors: no pickle is opened.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called for a converted model"))
    again = load_model("dap-vitl")
    assert torch.equal(outputs(again, x)["depth"], outputs(model, x)["depth"])
    assert again.checkpoint_info["training"]["registered_as"] == "dap-vitl"


def test_a_damaged_conversion_in_the_cache_is_made_again(tiny_release, hub):
    """The converted folder cut short or half deleted (a disk, a cleanup) said "copy or download the model folder
    again", a folder the user never downloaded, and stayed broken: only its config.json was checked."""
    x = torch.randn(1, 3, 64, 128)
    want = outputs(load_model("dap-vitl"), x)["depth"]
    converted = hub / "dap" / "converted" / "dap-vitl" / COMMIT
    weights = converted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert torch.equal(outputs(load_model("dap-vitl"), x)["depth"], want)
    (converted / "config.json").unlink()  # the weights left alone
    assert torch.equal(outputs(load_model("dap-vitl"), x)["depth"], want)
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors"]
    assert os.listdir(converted.parent) == [COMMIT]


def test_a_killed_conversions_folder_is_removed_by_the_next_one(tiny_release, hub):
    """A conversion killed while writing left its temporary folder (a whole copy of the weights, 1.4 GB for
    dap-vitl) in the cache for good: its name was not one any clean-up knew."""
    folder = hub / "dap" / "converted" / "dap-vitl"
    killed = folder / f".{COMMIT}.0123456789ab.tmp"  # the name a conversion writes into first
    killed.mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half")
    young = folder / f".{COMMIT}.ba9876543210.tmp"  # another process converting right now
    young.mkdir()
    os.utime(killed, (1, 1))
    load_model("dap-vitl")
    assert sorted(os.listdir(folder)) == sorted([COMMIT, young.name])


def test_a_cached_release_is_used_without_asking_the_hub(tiny_release, monkeypatch):
    """Online mode and no network: hf_hub_download spent 23 s retrying a HEAD request before it fell back on the
    cached file, on every run. A cached file is now used as it is."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: pytest.fail("the Hub was asked"))
    assert load_model("dap-vitl").cfg == TINY_OFFICIAL


def test_predict_by_name_in_a_fresh_process_honours_the_environment(tiny_release, hub, tmp_path):
    load_model("dap-vitl")  # converts (the subprocess's registry has the real ViT-L entry, not the test one)
    from PIL import Image

    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(tmp_path / "p.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DAP_"))}
    env.update(HF_HOME=str(hub), HF_HUB_CACHE=str(hub / "hub"), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "dap.cli", "predict", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"),
            "--model", "dap-vitl", "--resolution", "64x128", "--outputs", "npy"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "p.npy").exists()


def test_missing_from_cache_while_offline_is_a_clear_error(hub, monkeypatch):
    with pytest.raises(CheckpointError, match=r"dap-vitl: model.pth of the Hub repository Insta360-Research/"
                       r"DAP-weights is not in the Hugging Face cache and cannot be downloaded now \(HF_HUB_OFFLINE "
                       r"is set, .*hf download Insta360-Research/DAP-weights model.pth.*pass the file's path instead"):
        load_model("dap-vitl")
    # without HF_HUB_OFFLINE, no network: the message does not tell to unset what is not set
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    resolves = registry._resolves
    monkeypatch.setattr(registry, "_resolves", lambda host: host == "huggingface.co")  # a name, no route
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(
        LocalEntryNotFoundError("cannot reach the Hub")))
    with pytest.raises(CheckpointError, match=r"cannot be downloaded now \(the Hub cannot be reached from here: fetch "
                                              r"it on a connected machine") as err:
        load_model("dap-vitl")
    assert "HF_HUB_OFFLINE" not in str(err.value)
    # no DNS: said at once (hf_hub_download retried for 23 s first)
    monkeypatch.setattr(registry, "_resolves", resolves)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "unknown")))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: pytest.fail("the Hub was asked"))
    with pytest.raises(CheckpointError, match=r"the Hub's address does not resolve: no network or no DNS here; fetch"):
        load_model("dap-vitl")


def test_a_release_of_another_architecture_is_refused(hub, tmp_path):
    torch.save(official_layout(DAP(TINY_OFFICIAL)), tmp_path / "model.pth")
    put_in_hub_cache(hub / "hub", REPO, "model.pth", (tmp_path / "model.pth").read_bytes())
    with pytest.raises(CheckpointError, match="not the DapConfig\\(name='dap_vitl'.*the file on the Hub"):
        load_model("dap-vitl")
    assert not (hub / "dap").exists()  # nothing converted


def test_a_damaged_cached_release_says_how_to_fetch_it_again(hub):
    """It said "download it again", but asking for the name again only reused the damaged file in the cache."""
    put_in_hub_cache(hub / "hub", REPO, "model.pth", b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=r"dap-vitl: the cached .*model.pth cannot be used .*`hf download "
                                              rf"{REPO} model.pth --force-download` \(or remove it with `hf cache "
                                              "delete`"):
        load_model("dap-vitl")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(CheckpointError, match="unknown model name 'dap-vitx'; known names: dap-tiny-synth, dap-vitl"):
        registry.get("dap-vitx")
    with pytest.raises(CheckpointError, match=r"dap-vitx does not exist and is not a model name \(dap-tiny-synth, "):
        load_model("dap-vitx")
    # near misses are named; an architecture name says it has no weights; unrelated names get no guess
    for spec, hint in (("dap-vitll", "Did you mean dap-vitl?"), ("DAP-VITL", "Did you mean dap-vitl?"),
                       ("dap-tiny", "Did you mean dap-tiny-synth?"),
                       ("dap_vitl", "Did you mean dap-vitl? (dap_vitl is an architecture"),
                       ("dap_vits", "(dap_vits is an architecture, for `dap.create_model`"),
                       ("https://huggingface.co/Insta360-Research/DAP-weights/blob/main/model.pth",
                        "https://huggingface.co/Insta360-Research/DAP-weights/blob/main/model.pth does not exist and "
                        "is not a model name"),
                       ("https://huggingface.co/Insta360-Research/DAP-weights",
                        "A Hugging Face Hub repository is given as hf:Insta360-Research/DAP-weights."),
                       ("http://example.com/model.pth", "URLs are not downloaded: download the file")):
        with pytest.raises(CheckpointError) as e:
            load_model(spec)
        assert hint in str(e.value), spec
    for spec in ("dap-vits", "dap-vitx", "foo"):
        with pytest.raises(CheckpointError) as e:
            load_model(spec)
        assert "Did you mean" not in str(e.value), spec


def test_bundled_model_by_name_and_the_models_listing(capsys):
    from dap.cli import main

    model = load_model("dap-tiny-synth")
    assert model.cfg == registry.MODELS["dap-tiny-synth"].config
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for entry in registry.MODELS.values():
        assert entry.name in listing and entry.source in listing and entry.licence in listing
    assert "hf.co/Insta360-Research/DAP-weights/model.pth" in listing


def test_an_official_file_saved_in_float16_loads_as_float32(tmp_path):
    """Our folders' float16 weights load as float32; an official-layout model.pth saved in float16 stayed float16:
    `dap predict` then said "call model.float()" to a command-line user, dap.predict failed on a dtype mismatch."""
    torch.manual_seed(0)
    model = DAP(TINY_OFFICIAL).eval()
    half = {k: v.half() if v.is_floating_point() else v for k, v in official_layout(model).items()}
    torch.save(half, tmp_path / "half.pth")
    loaded = load_model(tmp_path / "half.pth")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    x = torch.rand(1, 3, 64, 128)
    with torch.inference_mode():
        got, want = loaded(x)["depth"], model.half().float()(x)["depth"]  # the same float16 rounding
    torch.testing.assert_close(got, want, rtol=0, atol=0)
