"""Meta's DINOv3 ViT checkpoints (github.com/facebookresearch/dinov3) -> our backbone (dap.models.backbone).

Meta releases each pre-trained backbone as a flat state dict, e.g. `dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`.
Our DinoV3ViT keeps DINOv3's parameter names, so the mapping is one-to-one except for two things we do not store:

- `blocks.N.attn.qkv.bias_mask`, DINOv3's buffer that zeroes the key bias (1 for q and v, 0 for k). Our attention
  zeroes the key bias by construction, so the mask is checked to be exactly that and dropped.
- `local_cls_norm.*` (only the satellite ViT-L/16, SAT-493M): DINOv3 applies it to the class tokens of local crops
  during pre-training only; dropped.

Everything else must match our backbone key for key and shape for shape. The official DAP checkpoint embeds the
same layout under `core.pretrained.model.` (dap.models.official uses the checks here). Supported are the ViTs with
an MLP feed-forward (ViT-S/16, ViT-B/16, ViT-L/16); the SwiGLU ones (ViT-S+/16, ViT-L+/16, ViT-H+/16, ViT-7B/16) have
other blocks and are refused by name.
"""

from __future__ import annotations

import torch

from dap.errors import CheckpointError

VARIANTS = {384: "ViT-S/16", 768: "ViT-B/16", 1024: "ViT-L/16"}  # by width; all have 64-dim heads
_TRAINING_ONLY = ("local_cls_norm.",)


def is_dinov3_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return "cls_token" in sd and "patch_embed.proj.weight" in sd


def architecture(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int]:
    """(width, number of blocks) of a DINOv3 ViT state dict; refuses the variants our backbone cannot hold."""
    if any(k.startswith("blocks.0.mlp.w1.") for k in sd):
        raise CheckpointError(f"{source} is a DINOv3 ViT with SwiGLU blocks (ViT-S+/L+/H+/7B); only ViT-S/16, "
                              "ViT-B/16 and ViT-L/16 (MLP blocks) fit our backbone")
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    return sd["cls_token"].shape[-1], len(blocks)


def describe(width: int, depth: int) -> str:
    return f"{VARIANTS.get(width, 'ViT/16')} (width {width}, {depth} blocks)"


def expected_bias_mask(n: int) -> torch.Tensor:
    mask = torch.ones(n)
    mask[n // 3 : 2 * n // 3] = 0
    return mask


def check_bias_mask(key: str, value: torch.Tensor) -> None:
    if not torch.equal(value.float(), expected_bias_mask(value.numel())):
        raise CheckpointError(
            f"{key} is not the DINOv3 key-bias mask (ones for q and v, zeros for k); it may be NaN if the "
            "checkpoint was saved from an uninitialised model. This file cannot be used as is."
        )


def convert_dinov3_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's keys -> our DinoV3ViT keys: the same names, less the buffers and training-only norms we do not keep."""
    out = {}
    for key, value in sd.items():
        if key.endswith("attn.qkv.bias_mask"):
            check_bias_mask(key, value)
        elif not key.startswith(_TRAINING_ONLY):
            out[key] = value
    return out
