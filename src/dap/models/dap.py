"""The DAP network: DINOv3 ViT backbone + DPT depth head + DPT range-mask head."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dap.errors import is_number, is_whole
from dap.models.backbone import DinoV3ViT, ViTConfig
from dap.models.dpt import DPTHead
from dap.models.official import OfficialTokenAdapter


@dataclass(frozen=True)
class DapConfig:
    """Everything needed to rebuild a DAP network (stored in our checkpoints' config.json)."""

    name: str
    vit: ViTConfig = field(default_factory=ViTConfig)
    layers: tuple[int, ...] = (4, 11, 17, 23)  # blocks whose outputs feed the heads (0-based)
    features: int = 256
    out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    max_depth: float = 100.0  # metres represented by a depth-head output of 1.0
    # "plain": tokens are reshaped to the patch grid. "official": the released checkpoint's adapter,
    # which the official weights were trained with (see dap.models.official).
    token_adapter: str = "plain"
    # Working resolution (height, width) inference uses unless told otherwise: the one the weights were trained at.
    default_resolution: tuple[int, int] = (512, 1024)
    # Probability at or above which inference marks a pixel out of range. 0.5 is the official convention; a model
    # may ship a threshold calibrated on held-out data (a wrongly masked pixel loses its whole depth).
    range_threshold: float = 0.5
    # Factor on the depth head's metric output, fitted on held-out data after training (1: as trained). A model
    # whose depth is systematically too far or too near by a constant factor ships the correction here.
    depth_scale: float = 1.0
    # Factors on depth at K latitudes evenly spaced from the top row (zenith) to the bottom row (nadir), each at the
    # centre of its band of rows, linearly interpolated between them (the first and last hold to the poles); empty:
    # none. Fitted on held-out data after training, for a model whose error depends on where it looks (floor too
    # near, horizon too far). Applied by rows, so it assumes a whole equirectangular image, as inference gives.
    latitude_scale: tuple[float, ...] = ()
    # Out-of-range regions (8-connected, at the working resolution) smaller than this share of the panorama are not
    # marked: the range head's small false alarms (a lamp, a bright window pane, the sky reflected in water) would
    # put 100 m where the depth head, smooth across them, has the surroundings' depth. 0: off (the official rule).
    range_min_region: float = 0.0

    def __post_init__(self):
        # Checked here so that a hand-edited config.json fails on loading, naming the field, not in a forward pass.
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(f"name is the model's name (text), got {self.name!r}")
        if not (is_number(self.max_depth) and self.max_depth > 0):  # the depth head's scale: 0 or NaN zeroes all depth
            raise ValueError(f"max_depth is a positive number of metres (100 for DAP), got {self.max_depth!r}")
        numbers = (*self.layers, *self.out_channels, self.features, *self.default_resolution)
        if not all(is_whole(v) for v in numbers):
            raise ValueError(f"layers, out_channels, features and default_resolution are whole numbers, got "
                             f"{list(self.layers)}, {list(self.out_channels)}, {self.features!r} and "
                             f"{list(self.default_resolution)}")
        fields = ("range_threshold", "depth_scale", "range_min_region")
        if not all(is_number(v, finite=False) for v in (*(getattr(self, f) for f in fields), *self.latitude_scale)):
            raise ValueError(f"{', '.join(fields)} and latitude_scale are numbers, got "
                             f"{', '.join(repr(getattr(self, f)) for f in fields)} and {list(self.latitude_scale)}")
        if self.token_adapter not in ("plain", "official"):
            raise ValueError(f"token_adapter is 'plain' or 'official', got {self.token_adapter!r}")
        # in increasing order and distinct: the backbone returns one map per block, in block order
        if len(self.layers) != 4 or not all(0 <= k < self.vit.depth for k in self.layers) or \
                list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers are the 4 distinct blocks, in increasing order (0 to {self.vit.depth - 1}, the "
                             f"backbone's depth), that feed the heads, got {list(self.layers)}")
        if len(self.out_channels) != 4 or not all(c > 0 for c in (*self.out_channels, self.features)):
            raise ValueError(f"out_channels (4 of them) and features are positive channel counts, got "
                             f"{list(self.out_channels)} and {self.features}")
        h, w = self.default_resolution
        if w != 2 * h or h <= 0 or h % self.vit.patch_size:
            raise ValueError(f"default_resolution is (height, width) of a 2:1 panorama in multiples of "
                             f"{self.vit.patch_size}, got {list(self.default_resolution)}")
        if not 0 < self.range_threshold <= 1:
            raise ValueError(f"range_threshold is a probability in (0, 1], got {self.range_threshold}")
        if not (0 < self.depth_scale and math.isfinite(self.depth_scale)):
            raise ValueError(f"depth_scale is a positive factor, got {self.depth_scale}")
        if not 0 <= self.range_min_region < 1:
            raise ValueError(f"range_min_region is a share of the panorama in [0, 1), got {self.range_min_region}")
        if len(self.latitude_scale) == 1 or not all(0 < f and math.isfinite(f) for f in self.latitude_scale):
            raise ValueError("latitude_scale is empty or two or more positive factors (top to bottom), got "
                             f"{list(self.latitude_scale)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DapConfig:
        d = dict(d)
        vit = ViTConfig(**d.pop("vit"))
        for key in ("default_resolution", "latitude_scale"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(vit=vit, layers=tuple(d.pop("layers")), out_channels=tuple(d.pop("out_channels")), **d)


# DapConfig fields that are not architecture: a fine-tuning run may set them on a loaded model, a resumed run change
INFERENCE_SETTINGS = ("default_resolution", "range_threshold", "depth_scale", "latitude_scale", "range_min_region")


class PlainTokenAdapter(nn.Module):
    """Patch tokens (B, h*w, C) -> feature maps (B, C, h, w)."""

    def forward(self, tokens: list[torch.Tensor], grid_h: int, grid_w: int) -> list[torch.Tensor]:
        return [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], grid_h, grid_w) for t in tokens]


def make_token_adapter(cfg: DapConfig) -> nn.Module:
    if cfg.token_adapter == "plain":
        return PlainTokenAdapter()
    if cfg.token_adapter == "official":
        return OfficialTokenAdapter(cfg.vit.embed_dim)
    raise ValueError(f"unknown token_adapter {cfg.token_adapter!r}; use 'plain' or 'official'")


class DAP(nn.Module):
    """Metric panorama depth network.

    forward(x) with x (B, 3, H, W), ImageNet-normalised RGB, H and W multiples of 16, returns
      depth:             (B, 1, H, W) distance along the ray in metres, in (0, max_depth * depth_scale)
      out_of_range_prob: (B, 1, H, W) probability that the pixel is beyond max_depth or sky, i.e. that its
                         depth value should not be trusted as a number. Inference marks pixels with
                         probability >= cfg.range_threshold as out of range (0.5, the official convention,
                         unless the model was calibrated).
    """

    def __init__(self, cfg: DapConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = DinoV3ViT(cfg.vit)
        self.adapter = make_token_adapter(cfg)
        dim, patch = cfg.vit.embed_dim, cfg.vit.patch_size
        self.depth_head = DPTHead(dim, cfg.features, list(cfg.out_channels), patch)
        self.range_head = DPTHead(dim, cfg.features, list(cfg.out_channels), patch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        patch = self.cfg.vit.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % patch or x.shape[-1] % patch:
            raise ValueError(
                f"input size {x.shape[-2]}x{x.shape[-1]} is not a multiple of {patch}; resize the panorama "
                f"(dap.predict does this for you)"
            )
        grid_h, grid_w = x.shape[-2] // patch, x.shape[-1] // patch
        tokens = self.backbone.forward_layers(x, tuple(self.cfg.layers))
        feats = self.adapter(tokens, grid_h, grid_w)
        depth = self.depth_head(feats) * (self.cfg.max_depth * self.cfg.depth_scale)
        if self.cfg.latitude_scale:
            depth = depth * latitude_factors(self.cfg.latitude_scale, depth.shape[-2], depth)
        return {"depth": depth, "out_of_range_prob": self.range_head(feats)}


def latitude_factors(knots: tuple[float, ...], height: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, height, 1) factors for the rows of an equirectangular image from `DapConfig.latitude_scale`: knot k
    sits at the centre of the k-th of len(knots) equal bands of rows, linear in between, constant beyond the end
    knots (`F.interpolate`'s linear mode without corner alignment is exactly that)."""
    k = torch.tensor(knots, dtype=like.dtype, device=like.device).reshape(1, 1, -1)
    rows = torch.nn.functional.interpolate(k, size=height, mode="linear", align_corners=False)
    return rows.reshape(1, 1, height, 1)

