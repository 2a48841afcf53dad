"""Stage 2 of curation: a PatchGAN depth-quality discriminator that ranks pseudo-labels.

Input (5 channels at the discriminator's resolution, default 128x256): the RGB in [0, 1], the depth as
log(d) / log(max_depth) with d clamped to [0.1 m, max_depth] (metric, so a wrong scale is a visible flaw),
out-of-range pixels set to 1 (= max_depth), and the binary out-of-range mask. Real = ground-truth depth of
labeled panoramas; fake = the labeler's prediction for the same RGB. Pixels without ground truth (holes in
real scans) take the prediction's value in both, so holes carry no signal. Depth is area-downsampled the
same way for both.

Network: four 4x4 convolutions (stride 2, 2, 2, 1; 32-64-128-256 channels, instance norm, LeakyReLU 0.2)
and a 3x3 convolution to one logit per patch (each sees ~62x62 input pixels); padding wraps around the
0/360 degree seam and replicates at the poles. The image score is P(real) averaged over patches, each
weighted by its solid angle (cos latitude), so the stretched polar rows of ERP do not dominate.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dap.errors import CheckpointError


@dataclass
class DiscriminatorConfig:
    height: int = 128
    width: int = 256
    channels: int = 32
    max_depth: float = 100.0


@dataclass
class DiscriminatorTraining:
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    held_out: float = 0.25  # share of the (real, fake) pairs kept aside to measure AUC
    seed: int = 0


class _Conv(nn.Module):
    """Conv with circular padding across the seam and replicate padding at the poles."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool):
        super().__init__()
        self.pad = (k - 1) // 2, k // 2
        self.conv = nn.Conv2d(cin, cout, k, stride, bias=not norm)
        self.norm = nn.InstanceNorm2d(cout, affine=True) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.pad
        x = F.pad(F.pad(x, (lo, hi, 0, 0), mode="circular"), (0, 0, lo, hi), mode="replicate")
        return self.norm(self.conv(x))


class DepthDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        self.cfg = cfg or DiscriminatorConfig()
        c = self.cfg.channels
        self.layers = nn.ModuleList([
            _Conv(5, c, 4, 2, norm=False), _Conv(c, 2 * c, 4, 2, norm=True), _Conv(2 * c, 4 * c, 4, 2, norm=True),
            _Conv(4 * c, 8 * c, 4, 1, norm=True)])
        self.head = _Conv(8 * c, 1, 3, 1, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W) from `discriminator_input` -> (B, 1, h, w) patch logits (real > 0)."""
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        return self.head(x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image P(real): patch probabilities averaged with solid-angle weights. (B,)"""
        p = torch.sigmoid(self(x))[:, 0]
        h = p.shape[-2]
        lat = (0.5 - (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5) / h) * math.pi
        w = torch.cos(lat)[:, None].expand_as(p[0])
        return (p * w).sum((-2, -1)) / w.sum()


def discriminator_input(rgb: torch.Tensor, depth: torch.Tensor, out_of_range: torch.Tensor,
                        cfg: DiscriminatorConfig) -> torch.Tensor:
    """(B,3,H,W) RGB [0,1], (B,1,H,W) metres, (B,1,H,W) bool -> (B,5,h,w) at the discriminator's size."""
    oor = out_of_range.float()
    logd = torch.log(depth.clamp(0.1, cfg.max_depth)) / math.log(cfg.max_depth)
    logd = torch.where(oor > 0, torch.ones_like(logd), logd)
    x = torch.cat([rgb.float(), logd, oor], dim=1)
    if tuple(x.shape[-2:]) != (cfg.height, cfg.width):
        x = F.interpolate(x, size=(cfg.height, cfg.width), mode="area")
    return x


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve = P(a random positive scores above a random negative), ties counted half."""
    pos, neg = np.asarray(positive, np.float64)[:, None], np.asarray(negative, np.float64)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def train_discriminator(real: torch.Tensor, fake: torch.Tensor, cfg: DiscriminatorConfig | None = None,
                        training: DiscriminatorTraining | None = None, progress: bool = True,
                        device: str | torch.device = "cpu") -> tuple[DepthDiscriminator, dict]:
    """Train on pairs: real[i] and fake[i] are `discriminator_input`s of the same panorama (N, 5, h, w).

    The last `held_out` share of the pairs is never trained on; the returned metrics hold its AUC (and the
    training AUC). Augmentation: a random yaw roll and horizontal flip, the same for both members of a pair.
    Trains on `device`; the returned model is on the CPU."""
    from tqdm import tqdm

    cfg, t = cfg or DiscriminatorConfig(), training or DiscriminatorTraining()
    n = real.shape[0]
    n_val = int(round(n * t.held_out)) if n > 1 else 0
    n_train = n - n_val
    if n_train < 1:
        raise ValueError("the discriminator needs at least one training pair")
    g = torch.Generator().manual_seed(t.seed)
    torch.manual_seed(t.seed)
    model = DepthDiscriminator(cfg).to(device)
    real, fake = real.to(device), fake.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=(0.5, 0.999))
    model.train()
    for _ in tqdm(range(t.steps), desc="discriminator", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(n_train, (t.batch_size,), generator=g)
        shift = int(torch.randint(cfg.width, (1,), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        x = torch.cat([real[idx], fake[idx]]).roll(shift, dims=-1)
        x = x.flip(-1) if flip else x
        logits = model(x)
        target = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))]).to(device)[:, None, None, None]
        target = target.expand_as(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    metrics = {"pairs": n, "train_pairs": n_train, "held_out_pairs": n_val, "final_loss": loss.item()}
    with torch.inference_mode():
        s_real, s_fake = score_inputs(model, real), score_inputs(model, fake)
    metrics["train_auc"] = auc(s_real[:n_train], s_fake[:n_train])
    if n_val:
        metrics["held_out_auc"] = auc(s_real[n_train:], s_fake[n_train:])
    return model.cpu(), metrics


@torch.inference_mode()
def score_inputs(model: DepthDiscriminator, x: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    return torch.cat([model.score(x[i:i + batch_size]).cpu() for i in range(0, len(x), batch_size)]).numpy()


def save_discriminator(model: DepthDiscriminator, path: str | os.PathLike, metrics: dict | None = None) -> Path:
    """A folder with model.safetensors and config.json (config + training metrics), written atomically."""
    from safetensors.torch import save_file

    from dap.io import atomic_folder

    path = Path(path)
    with atomic_folder(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"config": asdict(model.cfg), "metrics": metrics or {}}, indent=1))
    return path


def load_discriminator(path: str | os.PathLike) -> DepthDiscriminator:
    from safetensors.torch import load_file

    path = Path(path)
    where = "`dap curate run` trains one (its step disc writes <work>/discriminator)"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is not a discriminator folder (needs config.json and model.safetensors); "
                              f"{where}")
    try:
        meta = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({e}); {where}") from e
    if isinstance(meta, dict) and meta.get("format") == "dap":
        raise CheckpointError(f"{path} is a depth model (dap's format), not a discriminator; {where}")
    try:
        cfg = DiscriminatorConfig(**meta["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path / 'config.json'} is not a discriminator's config ({type(e).__name__}: {e}); "
                              f"{where}") from e
    model = DepthDiscriminator(cfg)
    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"cannot load the discriminator {path}: {e}") from e
    return model.eval()
