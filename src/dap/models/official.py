"""Compatibility with the released DAP checkpoint (Insta360-Research DAP, `model.pth`).

The official network has quirks that its weights were trained with, so a faithful port must reproduce them.
They all live here:

1. Its adapter applies an extra LayerNorm to the (already final-normed) patch tokens.
2. It then drops the first *patch* token (the class/storage tokens are already gone), leaving h*w - 1 tokens,
3. and maps those back onto the h x w grid by resampling: if h*w - 1 is a perfect square s*s it reshapes them to
   s x s and resizes that image to h x w; otherwise it linearly resamples the token sequence from h*w - 1 to h*w
   samples and reshapes row-major.
4. Its state dict lists every backbone block twice (`core.pretrained.blocks.*` aliases
   `core.pretrained.model.blocks.*`) and stores the DINOv3 `qkv.bias_mask` buffer (1 for q and v, 0 for k).
5. The file was saved from nn.DataParallel (every key prefixed `module.`); other copies nest the state dict under
   `model`/`state_dict`.

Quirks of the official *scripts* that we deliberately do not copy: `test/infer.py` feeds un-normalised RGB (we use
ImageNet normalisation as `test/eval.py` does), and both loaders use `strict=False`, hiding key mismatches.
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dap.errors import CheckpointError
from dap.models.backbone import ViTConfig
from dap.models.dinov3 import check_bias_mask

OFFICIAL_LAYERS = {24: (4, 11, 17, 23), 12: (2, 5, 8, 11)}


class OfficialTokenAdapter(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, tokens: list[torch.Tensor], grid_h: int, grid_w: int) -> list[torch.Tensor]:
        return [self._to_grid(self.norm(t)[:, 1:], grid_h, grid_w) for t in tokens]

    @staticmethod
    def _to_grid(t: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        b, n, c = t.shape
        side = math.isqrt(n)
        if side * side == n:
            square = t.transpose(1, 2).reshape(b, c, side, side)
            return F.interpolate(square, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        # The official code interpolates (B, C, N, 1) to (B, C, H*W, 1). The same numbers come out of one (N, B*C)
        # image resized to (H*W, B*C) (its width maps onto itself, weights exactly 1 and 0), and faster: CUDA's
        # kernel runs a thread per output pixel, looping over batch and channels, so (B, C, N, 1) gave it only H*W
        # threads (a third of ViT-L's forward on an H200 at 512x1024: docs/performance.md).
        rows = t.transpose(0, 1).reshape(1, 1, n, b * c)
        rows = F.interpolate(rows, size=(grid_h * grid_w, b * c), mode="bilinear", align_corners=False)
        return rows.view(grid_h * grid_w, b, c).permute(1, 2, 0).reshape(b, c, grid_h, grid_w)


_PREFIX_MAP = (
    ("core.pretrained.model.", "backbone."),
    ("core.pretrained.norm.", "adapter.norm."),
    ("core.depth_head.", "depth_head."),
    ("core.mask_head.", "range_head."),
)
_ALIAS_PREFIX = "core.pretrained.blocks."


def read_official_checkpoint(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Flat state dict from a torch pickle: unwraps {'model': ...}/{'state_dict': ...} and `module.`.
    mmap: tensors stay in the file until used, so reading only the keys is cheap (zip-format files; torch's old
    format is read whole)."""
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), a download or copy that was cut short; download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:  # torch raises many types for a bad pickle; its advice to drop weights_only is unsafe
        raise CheckpointError(
            f"cannot read {path}: it is not a PyTorch checkpoint of weights, or it is damaged "
            f"({type(e).__name__}); download it again (or save the model's state_dict() if you made it)"
        ) from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dict of other keys or values than names, tensors"
        raise CheckpointError(f"{path} is not a flat state dict of tensors (got {what})")
    # The release was saved from nn.DataParallel, which prefixes every key with `module.`.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def is_official_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("core.") for k in sd)


def convert_official_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys (without `module.`) -> our keys. Checks the aliases and buffers it drops."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key.startswith(_ALIAS_PREFIX):
            canonical = "core.pretrained.model.blocks." + key[len(_ALIAS_PREFIX) :]
            if canonical in sd and not torch.equal(sd[canonical], value):
                raise CheckpointError(
                    f"official checkpoint is inconsistent: {key} differs from {canonical}, but the two names "
                    "refer to the same tensor in the official model. The file may be corrupted; re-download it."
                )
            continue
        if key.endswith("attn.qkv.bias_mask"):
            check_bias_mask(key, value)
            continue
        for old, new in _PREFIX_MAP:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"official checkpoint has {len(unknown)} keys outside the DAP layout, e.g. {unknown[:5]}; "
            "is this a DAP model.pth?"
        )
    return out


def _shape_vote(sd: dict[str, torch.Tensor], where: list[tuple[str, int]]) -> int:
    """The size most of these (key, dimension) places agree on: one damaged tensor then shows up as one shape
    mismatch at load, not as an architecture read from it that every other tensor mismatches (94 of them for one
    wrong head convolution). KeyError naming the first key when none is there; ties go to the first listed."""
    sizes = [sd[k].shape[d] for k, d in where if k in sd and sd[k].dim() > d]
    if not sizes:
        raise KeyError(where[0][0])
    return Counter(sizes).most_common(1)[0][0]


def official_config(sd: dict[str, torch.Tensor]) -> dict:
    """Architecture of an official-format checkpoint, read from its tensor shapes (our keys): DapConfig fields."""
    heads = ("depth_head", "range_head")
    try:
        blocks = [k.split(".")[2] for k in sd if k.startswith("backbone.blocks.")]
        if not blocks or not all(b.isdigit() for b in blocks):
            raise KeyError("backbone.blocks.<n>.*")
        depth = 1 + max(map(int, blocks))
        dim = _shape_vote(sd, [("backbone.cls_token", -1), ("backbone.mask_token", -1), ("backbone.norm.weight", 0),
                               ("backbone.norm.bias", 0), ("backbone.patch_embed.proj.weight", 0),
                               ("backbone.patch_embed.proj.bias", 0)])
        features = _shape_vote(sd, [(f"{h}.scratch.layer{j}_rn.weight", 0) for h in heads for j in range(1, 5)])
        out_channels = tuple(_shape_vote(sd, [(f"{h}.projects.{i}.{p}", 0) for h in heads for p in ("weight", "bias")]
                                         + [(f"{h}.scratch.layer{i + 1}_rn.weight", 1) for h in heads])
                             for i in range(4))
        storage = sd["backbone.storage_tokens"].shape[1]
        hidden = _shape_vote(sd, [(f"backbone.blocks.{b}.mlp.fc1.weight", 0) for b in range(depth)])
    except KeyError as e:
        raise CheckpointError(f"official checkpoint lacks {e}; cannot infer its architecture") from None
    if depth not in OFFICIAL_LAYERS:
        raise CheckpointError(f"official checkpoint has {depth} backbone blocks; expected 12 or 24")
    names = {1024: "dap_vitl", 768: "dap_vitb", 384: "dap_vits"}
    vit = ViTConfig(embed_dim=dim, depth=depth, num_heads=dim // 64, mlp_ratio=hidden / dim,
                    num_storage_tokens=storage)
    return dict(name=names.get(dim, f"dap_vit{dim}"), vit=vit, layers=OFFICIAL_LAYERS[depth], features=features,
                out_channels=out_channels, token_adapter="official")
