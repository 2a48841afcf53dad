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
        size = size if size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        return upsample(self.fuse(x, skip), size)

    def fuse(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Everything but the upsampling. The 1x1 projection commutes with bilinear resampling (both linear, the
        resampling weights sum to 1), so it runs before the upsampling, on a quarter of the pixels."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(self.resConfUnit2(x))


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resampling (corners aligned) in float32, whatever `x` is in. The CPU's bfloat16 kernel errs alike along
    whole rows and columns (the mean of its error over a column 20x that of the float32 result rounded once), which
    streaked bf16 depth maps; the next convolution rounds its input to 16 bit once under autocast."""
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True)


class Float32Conv2d(nn.Conv2d):
    """A convolution computed in float32 whatever autocast or the stored weights say: the heads' last two layers.
    Their output goes through a sigmoid into metres (or the range probability). With the 1x1 layer in 16 bit the
    output kept 8 or 11 bits: a bf16 depth map came in steps of 0.4% of the depth (terraced normals and point
    clouds), a probability only 0.996 or 1 near a calibrated threshold of 0.999. With the 3x3 layer before it in 16
    bit, its 32 channels were rounded at every pixel: with the bf16 resizes (`upsample`), bf16 depth was 2-10x as
    rough as fp32's from one pixel to the next (5.8x in the mean; streaked normals) for a mean drift of 0.39%
    (experiments/precision_drift.py). Both run at full resolution on few channels: for ViT-L at 512x1024 2% of the
    network's arithmetic per head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.padding)

    def conv(self, x: torch.Tensor, padding) -> torch.Tensor:
        """The convolution with another `padding` (the strips of `_upsample_then` bring their own rows)."""
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.conv2d(x.float(), self.weight.float(), bias, self.stride, padding, self.dilation, self.groups)


class Scratch(nn.Module):
    def __init__(self, in_channels: list[int], features: int):
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
            # refinenet4 gets no skip, so its resConfUnit1 is never used; it exists for checkpoint compatibility.
            setattr(self, f"refinenet{i}", FusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            Float32Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), Float32Conv2d(32, 1, 1), nn.Sigmoid()
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
        # Channels-last lets oneDNN (CPU) and cuDNN run the convolutions without reordering every activation.
        l1, l2, l3, l4 = (
            getattr(self.scratch, f"layer{i + 1}_rn")(resize(proj(f.contiguous(memory_format=torch.channels_last))))
            for i, (f, proj, resize) in enumerate(zip(feats, self.projects, self.resize_layers, strict=True))
        )
        s = self.scratch
        p4 = s.refinenet4(l4, size=l3.shape[-2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[-2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[-2:])
        p1 = s.refinenet1.fuse(p2, l1)
        del l1, l2, l3, l4, p2, p3, p4
        # The two upsampling stages at half and full resolution, each followed by a 3x3 convolution, run in strips
        # of rows: their multi-channel maps (256 x 256 x 576 and 128 x 512 x 1152 floats for ViT-L at 512x1024
        # with seam padding, 150 and 300 MB) never exist whole.
        out = _upsample_then(p1, (2 * p1.shape[-2], 2 * p1.shape[-1]), s.output_conv1)
        del p1
        return _upsample_then(out, (grid_h * self.patch_size, grid_w * self.patch_size), s.output_conv2)


# Bytes of upsampled map per strip, by device type (others as the CPU). On a GPU each strip costs a dozen small kernel
# launches: with the CPU's 16 MB, ViT-L at 512x1024 and batch 4 ran 56 strips per head, a quarter of its bf16 forward
# on an H200 (docs/performance.md).
STRIP_BYTES = {"cpu": 16 << 20, "cuda": 256 << 20}


def _upsample_then(x: torch.Tensor, size: tuple[int, int], head: nn.Module, rows: int | None = None) -> torch.Tensor:
    """head(bilinear upsampling of x to `size`, align_corners=True), computed in strips of `rows` output rows
    (default: as many as fit in STRIP_BYTES of upsampled map; small maps in one go). `head` is a 3x3 convolution
    (padding 1), or a Sequential of one followed by per-pixel layers."""
    conv, pointwise = (head[0], head[1:]) if isinstance(head, nn.Sequential) else (head, nn.Identity())
    x = x.float()  # as `upsample` does: the strips below resample
    h, (out_h, out_w) = x.shape[-2], size
    budget = STRIP_BYTES.get(x.device.type, STRIP_BYTES["cpu"])
    rows = rows or max(8, budget // (x.shape[0] * x.shape[1] * out_w * x.element_size()))
    # Training and tracing (ONNX export: a traced loop would fix the strips to one size) keep the plain graph.
    if out_h <= rows or torch.is_grad_enabled() or torch.jit.is_tracing():
        return head(upsample(x, size))
    scale = (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    out = None
    for r0 in range(0, out_h, rows):
        r1 = min(r0 + rows, out_h)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, out_h)  # one halo row each side for the 3x3 convolution
        src = torch.arange(lo, hi, device=x.device, dtype=torch.float32) * scale
        y0 = src.floor().long().clamp(max=h - 1)
        y1 = (y0 + 1).clamp(max=h - 1)
        lam = (src - y0).view(1, 1, -1, 1)
        first, last = int(y0[0]), int(y1[-1]) + 1
        # Width first, on only the input rows this strip reads (same height: rows pass through unchanged).
        band = F.interpolate(x[:, :, first:last], size=(last - first, out_w), mode="bilinear", align_corners=True)
        strip = _rows(band, y0 - first).lerp_(_rows(band, y1 - first), lam.to(band.dtype))
        # Zero rows where the strip touches the image border, as the convolution's own padding would add.
        strip = F.pad(strip, (0, 0, int(lo == r0), int(hi == r1)))
        y = pointwise(conv.conv(strip, (0, 1)) if isinstance(conv, Float32Conv2d)
                      else F.conv2d(strip, conv.weight, conv.bias, padding=(0, 1)))
        if out is None:
            out = torch.empty(*y.shape[:2], out_h, out_w, dtype=y.dtype, device=y.device,
                              memory_format=torch.channels_last)
        out[:, :, r0:r1] = y
    return out


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[:, :, index] in x's memory format. On a channels-last map, `index_select` along the height takes a strided
    path whose threads stall when other processes hold the cores (16x slower than selecting the same rows along the
    outer dimension of its (B, H, W, C) view with one busy process beside it; as fast when idle: performance.md),
    and returns a channels-first tensor that the next convolution reorders again."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).index_select(1, index).permute(0, 3, 1, 2)
    return x.index_select(2, index)
