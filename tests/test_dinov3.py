"""Training from Meta's DINOv3 backbone checkpoints (model.init: dinov3_*.pth): strict mapping into our backbone.

The files are written here from Meta's key layout as its code defines it (facebookresearch/dinov3:
models/vision_transformer.py and the hub's vit*16 settings: 4 storage tokens, masked k bias, layer scale, MLP
feed-forward), independently of our backbone's own state dict, filled with random values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dap import train as T
from dap.errors import CheckpointError
from dap.models import load_model

BASE = [
    "data.height=32", "data.width=64", "data.batch_size=2", "data.sources.0.size=8", "run.log_every=1",
    "run.val_every=0", "run.ckpt_every=0", "run.progress=false", "run.device=cpu",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def meta_layout(dim: int, depth: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of DINOv3's DinoVisionTransformer.state_dict() for a ViT-?/16 of this width and depth."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim), "storage_tokens": (1, 4, dim), "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
        "rope_embed.periods": (16,),  # head_dim 64 / 4
        "norm.weight": (dim,), "norm.bias": (dim,),
    }
    for i in range(depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in {
            "norm1.weight": (dim,), "norm1.bias": (dim,),
            "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,), "attn.qkv.bias_mask": (3 * dim,),
            "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "ls1.gamma": (dim,),
            "norm2.weight": (dim,), "norm2.bias": (dim,),
            "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
            "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,), "ls2.gamma": (dim,),
        }.items()})
    return shapes


def meta_state_dict(dim: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in meta_layout(dim, depth).items():
        if key.endswith("bias_mask"):
            sd[key] = torch.ones(shape)
            sd[key][dim : 2 * dim] = 0  # DINOv3's init_weights: no k bias
        elif key == "rope_embed.periods":
            sd[key] = 0.5 + torch.rand(shape, generator=g) * 100  # not our default, so loading it is visible
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.02
    return sd


def write(sd: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def vits16(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = meta_state_dict(384, 12)
    return write(sd, tmp_path_factory.mktemp("dinov3") / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"), sd


def cfg_with(*overrides: str) -> T.TrainConfig:
    return T.load_config(None, [*BASE, *overrides])


def test_vits16_initialises_the_backbone_and_leaves_the_heads_alone(vits16):
    path, sd = vits16
    model = T.build_model(cfg_with("model.name=dap_vits", f"model.init={path}"))
    ours = model.backbone.state_dict()
    mapped = {k: v for k, v in sd.items() if not k.endswith("bias_mask")}
    assert ours.keys() == mapped.keys()
    for key, value in mapped.items():
        assert torch.equal(ours[key], value), key
    scratch = T.build_model(cfg_with("model.name=dap_vits"))  # the same seeded init, no file
    for name in ("depth_head", "range_head", "adapter"):
        fresh = getattr(scratch, name).state_dict()
        for key, value in getattr(model, name).state_dict().items():
            assert torch.equal(value, fresh[key]), f"{name}.{key}"
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 32, 64))
    assert torch.isfinite(out["depth"]).all()


def test_a_backbone_of_the_wrong_variant_is_refused(vits16):
    path, _ = vits16
    match = r"holds a DINOv3 ViT-S/16 .*, but model.name is dap_vitb, a ViT-B/16 .*; set model.name: dap_vits"
    with pytest.raises(CheckpointError, match=match):
        T.build_model(cfg_with("model.name=dap_vitb", f"model.init={path}"))


def tiny(tmp_path: Path, edit=None) -> Path:
    """A DINOv3-layout file of dap_tiny's backbone size (width 192, 6 blocks): fast, same layout."""
    sd = meta_state_dict(192, 6)
    if edit:
        edit(sd)
    return write(sd, tmp_path / "dinov3_tiny.pth")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda sd: sd.pop("blocks.3.ls2.gamma"), r"1 missing keys: blocks\.3\.ls2\.gamma"),
    (lambda sd: sd.update({"cls_norm.weight": torch.ones(192)}), r"1 unexpected keys: cls_norm\.weight"),
    (lambda sd: sd.update({"norm.bias": torch.zeros(96)}), r"norm\.bias \(96,\) != \(192,\)"),
    (lambda sd: sd["blocks.2.attn.qkv.bias_mask"].fill_(float("nan")), "key-bias mask"),
    (lambda sd: sd.update({"blocks.0.mlp.w1.weight": torch.zeros(1)}), "SwiGLU"),
], ids=["missing", "unexpected", "shape", "bias-mask", "swiglu"])
def test_a_file_that_does_not_fit_is_an_error_naming_the_key(tmp_path, edit, match):
    with pytest.raises(CheckpointError, match=match):
        T.build_model(cfg_with(f"model.init={tiny(tmp_path, edit)}"))


def test_the_training_only_local_cls_norm_is_dropped(tmp_path):
    # Meta's satellite ViT-L/16 (SAT-493M) also stores local_cls_norm, used on local crops in pre-training only.
    path = tiny(tmp_path, lambda sd: sd.update({"local_cls_norm.weight": torch.ones(192),
                                                  "local_cls_norm.bias": torch.zeros(192)}))
    T.build_model(cfg_with(f"model.init={path}"))


def test_a_file_in_torchs_old_format_is_recognised_too(tmp_path):
    sd = meta_state_dict(192, 6)
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    model = T.build_model(cfg_with(f"model.init={tmp_path / 'old.pth'}"))
    assert torch.equal(model.backbone.blocks[5].mlp.fc2.weight, sd["blocks.5.mlp.fc2.weight"])


def test_two_training_steps_from_a_dinov3_backbone(tmp_path):
    path = tiny(tmp_path)
    result = T.train(cfg_with("run.steps=2", f"model.init={path}"), tmp_path / "run")
    assert result.step == 2
    trained = load_model(tmp_path / "run" / "final")
    assert trained.cfg.name == "dap_tiny"


def test_load_model_points_a_dinov3_file_to_training(tmp_path):
    match = r"DINOv3 ViT/16 \(width 192, 6 blocks\) backbone without depth heads.*model\.init"
    with pytest.raises(CheckpointError, match=match):
        load_model(tiny(tmp_path))


def test_an_unknown_model_name_is_a_config_error_with_a_dinov3_init(tmp_path):
    from dap.errors import ConfigError

    with pytest.raises(ConfigError, match="model.name 'dap_huge' is not a model"):
        cfg_with("model.name=dap_huge", f"model.init={tiny(tmp_path)}")
