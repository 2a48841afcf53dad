"""DAP models: build by name (`create_model("dap_vitl")`), load checkpoints (`load_model(path)`)."""

from __future__ import annotations

import dataclasses

from dap.models.backbone import ViTConfig
from dap.models.checkpoint import load_model, save_model
from dap.models.dap import DAP, DapConfig
from dap.models.official import OFFICIAL_LAYERS

# DPT widths for ViT-B/S follow Depth-Anything-V2; the tiny variant is ours, for CPU training and tests.
MODEL_CONFIGS: dict[str, DapConfig] = {
    "dap_vitl": DapConfig(
        name="dap_vitl", vit=ViTConfig(embed_dim=1024, depth=24, num_heads=16), layers=OFFICIAL_LAYERS[24],
        features=256, out_channels=(256, 512, 1024, 1024), token_adapter="official",
    ),
    "dap_vitb": DapConfig(
        name="dap_vitb", vit=ViTConfig(embed_dim=768, depth=12, num_heads=12), layers=(2, 5, 8, 11),
        features=128, out_channels=(96, 192, 384, 768),
    ),
    "dap_vits": DapConfig(
        name="dap_vits", vit=ViTConfig(embed_dim=384, depth=12, num_heads=6), layers=(2, 5, 8, 11),
        features=64, out_channels=(48, 96, 192, 384),
    ),
    "dap_tiny": DapConfig(
        name="dap_tiny", vit=ViTConfig(embed_dim=192, depth=6, num_heads=3, layerscale_init=0.1),
        layers=(1, 2, 4, 5), features=48, out_channels=(48, 96, 192, 192),
    ),
}


def create_model(name: str, **overrides) -> DAP:
    """A randomly initialised DAP network. `overrides` replace DapConfig fields (e.g. token_adapter="plain");
    `vit={...}` replaces backbone fields."""
    return DAP(model_config(name, **overrides))


def model_config(name: str, **overrides) -> DapConfig:
    """The DapConfig `create_model(name, **overrides)` builds."""
    if name not in MODEL_CONFIGS:
        from dap.models.registry import MODELS

        weights = f"; {name!r} names weights: dap.load_model({name!r})" if name in MODELS else ""
        raise ValueError(f"unknown model {name!r}; the architectures are {', '.join(MODEL_CONFIGS)}{weights}")
    cfg = MODEL_CONFIGS[name]
    if "vit" in overrides and isinstance(overrides["vit"], dict):
        overrides["vit"] = dataclasses.replace(cfg.vit, **overrides["vit"])
    return dataclasses.replace(cfg, **overrides)


def count_parameters(model: DAP) -> dict[str, int]:
    def n(m) -> int:
        return sum(p.numel() for p in m.parameters())

    return {"backbone": n(model.backbone), "depth_head": n(model.depth_head),
            "range_head": n(model.range_head), "total": n(model)}


__all__ = ["DAP", "DapConfig", "MODEL_CONFIGS", "ViTConfig", "count_parameters", "create_model",
           "load_model", "save_model"]
