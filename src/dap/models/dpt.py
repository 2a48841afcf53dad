"""DPT decoder (Depth-Anything-V2 style): four ViT feature maps -> one dense map in (0, 1).

Parameter names follow Depth-Anything-V2 (`projects`, `resize_layers`, `scratch.refinenetN`...) so the official
DAP heads load one-to-one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the refined skip feature, refines, upsamples (to `size` or x2), projects."""

    def __init__(self, features: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, in_channels: list[int], features: int):
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
            # refinenet4 gets no skip, so its resConfUnit1 is never used; it exists for checkpoint compatibility.
            setattr(self, f"refinenet{i}", FusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.Sigmoid()
        )


class DPTHead(nn.Module):
    def __init__(self, in_dim: int, features: int, out_channels: list[int], patch_size: int = 16):
        super().__init__()
        self.patch_size = patch_size
        self.projects = nn.ModuleList(nn.Conv2d(in_dim, c, 1) for c in out_channels)
        # Bring the four same-resolution ViT maps to strides 4, 8, 16 and 32 of the input.
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
        ])
        self.scratch = Scratch(out_channels, features)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: four (B, C, h, w) maps on the patch grid. Returns (B, 1, 16h, 16w) in (0, 1)."""
        grid_h, grid_w = feats[0].shape[-2:]
        l1, l2, l3, l4 = (
            getattr(self.scratch, f"layer{i + 1}_rn")(resize(proj(f)))
            for i, (f, proj, resize) in enumerate(zip(feats, self.projects, self.resize_layers, strict=True))
        )
        s = self.scratch
        p4 = s.refinenet4(l4, size=l3.shape[-2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[-2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[-2:])
        p1 = s.refinenet1(p2, l1)
        out = s.output_conv1(p1)
        size = (grid_h * self.patch_size, grid_w * self.patch_size)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return s.output_conv2(out)
