"""DINOv3 vision transformer (patch 16, rotary position embedding, 4 storage/register tokens).

Written to match the DINOv3 ViT that DAP fine-tunes, so the official checkpoint's backbone weights load
one-to-one (parameter names follow DINOv3: `cls_token`, `storage_tokens`, `blocks.N.attn.qkv`, `ls1.gamma`...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16
    num_storage_tokens: int = 4
    rope_base: float = 100.0
    layerscale_init: float = 1e-5
    norm_eps: float = 1e-5

    def __post_init__(self):
        # Checked here so that a hand-edited config.json fails on loading, naming the field (a 0 was a
        # ZeroDivisionError, heads that do not split the width a RoPE shape mismatch)
        from dap.errors import is_number, is_whole

        for name in ("embed_dim", "depth", "num_heads", "patch_size"):
            if not (is_whole(value := getattr(self, name)) and value > 0):
                raise ValueError(f"vit.{name} is a positive whole number, got {value!r}")
        if not (isinstance(self.num_storage_tokens, int) and self.num_storage_tokens >= 0):
            raise ValueError(f"vit.num_storage_tokens is a whole number >= 0, got {self.num_storage_tokens!r}")
        for name in ("mlp_ratio", "rope_base", "norm_eps"):
            if not (is_number(value := getattr(self, name)) and value > 0):
                raise ValueError(f"vit.{name} is a positive number, got {value!r}")
        if not is_number(self.layerscale_init):
            raise ValueError(f"vit.layerscale_init is a number, got {self.layerscale_init!r}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:  # RoPE: 4 angles per period
            raise ValueError(f"vit.embed_dim ({self.embed_dim}) must split into vit.num_heads ({self.num_heads}) "
                             "heads of a multiple of 4 channels each")


class RotaryEmbedding(nn.Module):
    """2-D axial RoPE over the patch grid, coordinates normalised per axis to (-1, 1)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        n = head_dim // 4
        # DINOv3 stores the periods as a buffer; it is in the official checkpoint too.
        self.register_buffer("periods", base ** (torch.arange(n, dtype=torch.float32) / n), persistent=True)

    def forward(self, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (grid_h * grid_w, head_dim), tokens in row-major order."""
        dev = self.periods.device
        ys = torch.arange(0.5, grid_h, device=dev, dtype=torch.float32) / grid_h
        xs = torch.arange(0.5, grid_w, device=dev, dtype=torch.float32) / grid_w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # (N, 2, head_dim/4)
        angles = angles.flatten(1, 2).tile(2)  # (N, head_dim): [y angles, x angles] twice
        return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def masked_qkv_bias(self) -> torch.Tensor:
        q_bias, _, v_bias = self.qkv.bias.chunk(3)
        return torch.cat((q_bias, torch.zeros_like(q_bias), v_bias))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], num_prefix: int) -> torch.Tensor:
        b, n, c = x.shape
        # DINOv3 has no key bias: with RoPE a key bias would not cancel in the softmax, so it is held at 0
        # (the stored k third of `qkv.bias` is ignored, as DINOv3's bias mask does).
        if isinstance(self.qkv, nn.Linear):
            qkv = F.linear(x, self.qkv.weight, self.masked_qkv_bias())
        else:  # an int8 copy (dap.inference.quantize_int8), quantised with the masked bias
            qkv = self.qkv(x)
        q, k, v = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        sin, cos = rope
        # Only patch tokens are rotated; the class and storage tokens carry no position.
        q = torch.cat((q[:, :, :num_prefix], apply_rope(q[:, :, num_prefix:], sin, cos)), dim=2)
        k = torch.cat((k[:, :, :num_prefix], apply_rope(k[:, :, num_prefix:], sin, cos)), dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.ls2 = LayerScale(d, cfg.layerscale_init)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], num_prefix: int) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope, num_prefix))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, C), row-major


class DinoV3ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.storage_tokens = nn.Parameter(torch.zeros(1, cfg.num_storage_tokens, d))
        # Used only for masked-image pre-training; kept so DINOv3 weights load without leftovers.
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.rope_embed = RotaryEmbedding(d // cfg.num_heads, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self._init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.cfg.num_storage_tokens

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_layers(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """Final-normed patch tokens (B, h*w, C) of the given block indices (0-based)."""
        b = x.shape[0]
        grid_h, grid_w = x.shape[-2] // self.cfg.patch_size, x.shape[-1] // self.cfg.patch_size
        patches = self.patch_embed(x)
        # DINOv3 adds 0 * mask_token to the class token so the parameter always takes part in the graph.
        cls = self.cls_token.expand(b, -1, -1) + 0 * self.mask_token
        tokens = torch.cat((cls, self.storage_tokens.expand(b, -1, -1), patches), dim=1)
        rope = self.rope_embed(grid_h, grid_w)
        outputs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, rope, self.num_prefix_tokens)
            if i in layers:
                outputs.append(self.norm(tokens)[:, self.num_prefix_tokens :])
        return outputs
