"""Training losses of DAP (paper: L = M_distort ⊙ (1.0 SILog + 0.4 L_DF + 5.0 L_grad + 2.0 L_normal
+ 2.0 L_pts + 2.0 L_mask)).

All functions are batched: depth maps are (B, 1, H, W) equirectangular (2:1) distance maps, masks are bool
(B, 1, H, W). Every term is a weighted mean over the pixels it is defined on and is exactly 0 (no NaN, still
differentiable) when there are none. Formulas, defaults and the reasons for every unreported choice are in
docs/losses.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from dap import geometry
from dap.errors import is_number

# Depths are clamped to this before taking logs so that log() and its gradient stay finite.
_DEPTH_EPS = 1e-6


# ------------------------------ helpers

DF_NORMALISE = ("centred", "frobenius", "gt_mean")  # how distortion_loss makes the two Grams comparable

def _sanitise(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor):
    """Valid = given mask & finite positive GT; invalid GT replaced by 1 so logs/points stay finite there."""
    valid = valid.bool() & torch.isfinite(gt) & (gt > 0)
    gt = torch.where(valid, gt, torch.ones_like(gt))
    return pred.clamp_min(_DEPTH_EPS), gt, valid


def _pixel_weights(valid: torch.Tensor, weights: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    w = valid.to(dtype)
    return w if weights is None else w * weights.to(dtype)


def _wmean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean; 0 (zero gradient) when all weights are 0. Keep x finite where w == 0 (its gradient)."""
    x = torch.where(w > 0, x, torch.zeros_like(x))
    return (x * w).sum() / w.sum().clamp_min(1e-12)


def _pad_erp(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Pad (B, C, H, W): wrap around horizontally (longitude is periodic), replicate rows at the poles."""
    x = torch.cat((x[..., -pad:], x, x[..., :pad]), dim=-1)
    return F.pad(x, (0, 0, pad, pad), mode="replicate")


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """Keep pixels whose whole 3x3 ERP neighbourhood is in the mask (bool (B, 1, H, W))."""
    m = _pad_erp(mask.float())
    return (-F.max_pool2d(-m, kernel_size=3, stride=1)) > 0.5


# ------------------------------ distortion
def distortion_weights(
    height: int,
    width: int,
    *,
    normalise: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ERP distortion weight map M_distort, (H, W).

    Raw (normalise=False): each pixel's exact solid angle (steradians, sums to 4π). Normalised (default):
    divided by its mean 4π/(H·W), so the map has mean 1 and a weighted mean counts area on the sphere
    instead of pixels (pixels near the poles, which ERP stretches, count less).
    """
    omega = geometry.solid_angle_weights(height, width, device=device, dtype=torch.float64)
    omega = omega.expand(height, width)
    if normalise:
        omega = omega * (height * width / omega.sum())
    return omega.to(dtype)


# ------------------------------ SILog
def silog_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor | None = None,
    lam: float = 0.5,
    eps: float = 1e-12,
) -> torch.Tensor:
    """sqrt(E[d²] − λ E[d]²), d = log gt − log pred, weighted means over valid pixels of the whole batch.

    The sqrt is taken as sqrt(max(x, 0) + eps) − sqrt(eps): finite gradient at 0 and exactly 0 when perfect.
    """
    pred, gt, valid = _sanitise(pred, gt, valid)
    w = _pixel_weights(valid, weights, pred.dtype)
    d = torch.log(gt) - torch.log(pred)
    x = _wmean(d * d, w) - lam * _wmean(d, w) ** 2
    return torch.sqrt(x.clamp_min(0.0) + eps) - math.sqrt(eps)


# ------------------------------ L_DF
def df_view_directions(*, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Optical axes of the 12 virtual L_DF cameras: the icosahedron vertices, (12, 3) unit vectors."""
    return geometry.icosahedron_vertices(device=device, dtype=dtype)


def df_view_rays(
    view_size: int, fov_deg: float, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit rays (12, S, S, 3), in the panorama frame, of the 12 L_DF pinhole views (S x S, fov_deg).

    View k looks along icosahedron vertex k with no roll (dap.geometry.look_rotation: image "down" stays in
    the vertical plane).
    """
    axes = df_view_directions(dtype=torch.float64)
    return torch.stack([
        geometry.perspective_rays(fov_deg, view_size, geometry.look_rotation(a), device=device, dtype=dtype)
        for a in axes
    ])


# "centred" L_DF skips views whose truth varies by less than this share of its mean depth (RMS about the mean)
DF_MIN_SPREAD = 1e-3


def dense_fidelity_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    *,
    fov_deg: float = 90.0,
    view_size: int | None = None,
    normalise: str = "centred",
    sample_mode: str = "bilinear",
    min_valid_fraction: float = 0.01,
) -> torch.Tensor:
    """L_DF: mean over views of ||D_p D_pᵀ − D_g D_gᵀ||_F² on 12 icosahedron-vertex perspective views.

    Per view, D is the (S, S) resampled depth on valid pixels (others 0), normalised by `normalise`:
    - "centred" (default): subtract D's own masked mean, then divide by its own Frobenius norm. The Gram
      compares structure only (invariant to scale and offset of each view; SILog and L_pts handle scale).
    - "frobenius": divide D by its own Frobenius norm (scale-invariant; the Gram is dominated by the mean
      depth, so the term is ~10x smaller for the same blur).
    - "gt_mean": divide both by the masked mean of D_g and each Gram by S; the result is the mean squared
      Gram entry, which also penalises a global scale error.
    With "centred"/"frobenius" ||Gram||_F ≤ 1, and the loss equals the mean squared entry of ΔGram/S for
    maps scaled to unit RMS. A view pixel is valid when all ERP pixels it interpolates are valid; views
    with fewer than min_valid_fraction valid pixels are skipped (0 when none is left), and with "centred" views
    whose truth is flat (DF_MIN_SPREAD). view_size None →
    round(2H/π), which matches the ERP pixel pitch at the view centre for a 90° view.
    """
    if normalise not in DF_NORMALISE:
        raise ValueError(f"normalise must be one of {', '.join(DF_NORMALISE)}, got {normalise!r}")
    pred, gt, valid = _sanitise(pred, gt, valid)
    height = pred.shape[-2]
    size = view_size or max(8, round(2 * height / math.pi))
    rays = df_view_rays(size, fov_deg, device=pred.device, dtype=pred.dtype)
    zero = torch.zeros_like(gt)
    stack = torch.cat((pred, torch.where(valid, gt, zero), valid.to(pred.dtype)), dim=1)  # (B, 3, H, W)
    views = geometry.sample_erp(stack, rays, sample_mode)  # (B, 3, 12, S, S)
    m = views[:, 2] > 1 - 1e-4
    dp = torch.where(m, views[:, 0], 0.0)
    dg = torch.where(m, views[:, 1], 0.0)
    count = m.sum(dim=(-2, -1), keepdim=True).to(pred.dtype)
    use = (count[..., 0, 0] >= max(1.0, min_valid_fraction * size * size)).to(pred.dtype)  # (B, 12)
    scale = 1.0
    if normalise == "gt_mean":
        mu = (dg.sum(dim=(-2, -1), keepdim=True) / count.clamp_min(1)).clamp_min(_DEPTH_EPS)
        dp, dg = dp / mu, dg / mu
        scale = 1.0 / size**4
    else:
        if normalise == "centred":
            mean_g = dg.sum(dim=(-2, -1), keepdim=True) / count.clamp_min(1)
            dp = torch.where(m, dp - dp.sum(dim=(-2, -1), keepdim=True) / count.clamp_min(1), 0.0)
            dg = torch.where(m, dg - mean_g, 0.0)
            # A view whose truth is flat (spread below DF_MIN_SPREAD of its mean: a sphere's constant distance) has
            # no structure to compare: its centred truth is ~0 while the prediction's is scaled to unit norm
            # however small, so a prediction 1e-4 off cost ~0.9 there. Skipped, as a view without valid pixels.
            spread = torch.sqrt((dg * dg).sum(dim=(-2, -1)) / count[..., 0, 0].clamp_min(1))
            use = use * (spread >= DF_MIN_SPREAD * mean_g[..., 0, 0].abs()).to(pred.dtype)
        # +1e-12 keeps the gradient finite for an all-zero (skipped) view.
        dp = dp / torch.sqrt((dp * dp).sum(dim=(-2, -1), keepdim=True) + 1e-12)
        dg = dg / torch.sqrt((dg * dg).sum(dim=(-2, -1), keepdim=True) + 1e-12)
    diff = dp @ dp.transpose(-1, -2) - dg @ dg.transpose(-1, -2)
    per_view = (diff * diff).sum(dim=(-2, -1)) * scale
    return (per_view * use).sum() / use.sum().clamp_min(1.0)


# ------------------------------ L_grad
def edge_mask(gt: torch.Tensor, valid: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """GT depth edges: Sobel magnitude of log GT (ERP, wrapped horizontally) > threshold, bool (B, 1, H, W).

    Sobel kernels are divided by 8 so the magnitude is a log-depth change per pixel (a step of s in log depth
    gives s/2 on both sides). Only pixels whose whole 3x3 neighbourhood is valid can be edges.
    """
    _, gt, valid = _sanitise(gt, gt, valid)
    logd = torch.where(valid, torch.log(gt), torch.zeros_like(gt))
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=gt.device) / 8
    kx = kx.to(gt.dtype)
    kernels = torch.stack((kx, kx.T))[:, None]  # (2, 1, 3, 3)
    g = F.conv2d(_pad_erp(logd), kernels)
    mag = torch.sqrt((g * g).sum(dim=1, keepdim=True))
    return _erode(valid) & (mag > threshold)


def gradient_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    *,
    edge_threshold: float = 0.05,
    weights: torch.Tensor | None = None,
    lam: float = 0.5,
) -> torch.Tensor:
    """L_grad: SILog restricted to GT edge pixels (edge_mask); 0 when the batch has no edge."""
    return silog_loss(pred, gt, edge_mask(gt, valid, edge_threshold), weights=weights, lam=lam)


# ------------------------------ L_normal / L_pts
def normal_loss(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, *, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """L_normal: weighted mean over pixels of ||n_pred − n_gt||_1 (sum over x, y, z).

    Normals come from dap.geometry.normals_from_depth, on both maps with the invalid GT pixels set to 0, so
    both use the same (central or one-sided) differences of valid pixels only. A pixel counts where both
    normals exist (nonzero).
    """
    pred, gt, valid = _sanitise(pred, gt, valid)
    zero = torch.zeros_like(gt)
    n_pred = geometry.normals_from_depth(torch.where(valid, pred, zero)[:, 0])  # (B, H, W, 3)
    n_gt = geometry.normals_from_depth(torch.where(valid, gt, zero)[:, 0])
    both = (n_pred.abs().sum(-1) > 0) & (n_gt.abs().sum(-1) > 0)
    per_pixel = (n_pred - n_gt).abs().sum(dim=-1)[:, None]  # (B, 1, H, W)
    return _wmean(per_pixel, _pixel_weights(valid & both[:, None], weights, pred.dtype))


def point_loss(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, *, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """L_pts: weighted mean over valid pixels of ||P_pred − P_gt||_1 (sum over x, y, z), P = distance × unit
    ray; in the units of the depth maps."""
    pred, gt, valid = _sanitise(pred, gt, valid)
    diff = geometry.depth_to_points(pred[:, 0]) - geometry.depth_to_points(gt[:, 0])
    per_pixel = diff.abs().sum(dim=-1)[:, None]
    return _wmean(per_pixel, _pixel_weights(valid, weights, pred.dtype))


# ------------------------------ L_mask
def mask_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    pos_weight: float | None = None,
    max_pos_weight: float = 10.0,
    dice_weight: float = 0.5,
    eps: float = 1e-7,
    smooth: float = 1.0,
) -> torch.Tensor:
    """L_mask = weighted BCE + dice_weight · Dice, on probabilities (target True = out of range).

    BCE: −(w₊ t log p + (1 − t) log(1 − p)), p clamped to [eps, 1 − eps], weighted mean over the valid pixels.
    pos_weight None balances the classes per batch: w₊ = #neg / #pos, clamped to [1/max_pos_weight,
    max_pos_weight]. Dice: 1 − (2 Σ w p t + smooth) / (Σ w p + Σ w t + smooth), pooled over the batch, on the
    unclamped probabilities (so a perfect mask gives exactly 0).
    """
    valid = torch.ones_like(target, dtype=torch.bool) if valid is None else valid.bool()
    t = target.to(prob.dtype)
    w = _pixel_weights(valid, weights, prob.dtype)
    if pos_weight is None:
        n_pos = (t * w).sum()
        n_neg = ((1 - t) * w).sum()
        pw = (n_neg / n_pos.clamp_min(1e-12)).clamp(1.0 / max_pos_weight, max_pos_weight).detach()
    else:
        pw = torch.as_tensor(pos_weight, dtype=prob.dtype, device=prob.device)
    p = prob.clamp(eps, 1 - eps)
    bce = -(pw * t * torch.log(p) + (1 - t) * torch.log1p(-p))
    loss = _wmean(bce, w)
    if dice_weight:
        pm = torch.where(valid, prob, torch.zeros_like(prob))
        inter = (w * pm * t).sum()
        dice = 1 - (2 * inter + smooth) / ((w * pm).sum() + (w * t).sum() + smooth)
        loss = loss + dice_weight * dice
    return loss


# ------------------------------ total
RANGE_THRESHOLDS = (10.0, 20.0, 50.0, 100.0)  # the paper's range-mask variants (loss.mask_threshold, metres)


@dataclass
class LossConfig:
    """Weights (the paper's λ) and every detail the paper does not report; see docs/losses.md."""

    w_silog: float = 1.0
    w_df: float = 0.4
    w_grad: float = 5.0
    w_normal: float = 2.0
    w_pts: float = 2.0
    w_mask: float = 2.0
    max_depth: float = 100.0  # metres; depth supervised where 0 < gt ≤ max_depth; depths are divided by it
    min_depth_ratio: float = 0.001  # GT clipped to [min_depth_ratio · max_depth, max_depth]
    mask_threshold: float = 100.0  # metres; range-mask target = GT beyond this (10/20/50/100 variants)
    use_distortion: bool = True  # per-pixel M_distort (solid-angle) weights
    silog_lambda: float = 0.5
    df_fov_deg: float = 90.0
    df_view_size: int | None = None  # None → round(2H/π)
    df_normalise: str = "centred"  # or "frobenius", "gt_mean"
    df_sample_mode: str = "bilinear"
    df_min_valid_fraction: float = 0.01
    grad_edge_threshold: float = 0.05  # Sobel magnitude of log GT, per pixel
    mask_pos_weight: float | None = None  # None → class-balanced per batch
    mask_max_pos_weight: float = 10.0
    mask_dice_weight: float = 0.5
    mask_eps: float = 1e-7

    def check(self) -> None:
        """A ValueError naming the first field whose value would train nothing, or something other than asked: a
        term silently 0 (max_depth inf, silog_lambda above 1), NaN in the views' geometry (a crash of the process)."""
        finite = is_number
        rules = {
            "max_depth": (finite(self.max_depth) and self.max_depth > 0, "a number of metres > 0"),
            "min_depth_ratio": (finite(self.min_depth_ratio) and 0 < self.min_depth_ratio < 1,
                                "the smallest depth over max_depth, between 0 and 1"),
            "mask_threshold": (finite(self.mask_threshold) and 0 < self.mask_threshold <= self.max_depth,
                               f"the range-mask threshold in metres, in (0, max_depth = {self.max_depth}]; the paper "
                               f"uses {', '.join(f'{t:g}' for t in RANGE_THRESHOLDS)}"),
            "silog_lambda": (finite(self.silog_lambda) and 0 <= self.silog_lambda <= 1,
                             "SILog's variance weight, 0 to 1 (above 1 the term is 0)"),
            "df_fov_deg": (finite(self.df_fov_deg) and 0 < self.df_fov_deg < 180,
                           "the distortion term's views' field of view, above 0 and below 180 degrees"),
            "df_view_size": (self.df_view_size is None or (isinstance(self.df_view_size, int)
                                                           and not isinstance(self.df_view_size, bool)
                                                           and self.df_view_size >= 2),
                             "the views' size in pixels, 2 or more (or null: from the panorama's height)"),
            "df_normalise": (self.df_normalise in DF_NORMALISE, f"one of {', '.join(DF_NORMALISE)}"),
            "df_sample_mode": (self.df_sample_mode in ("bilinear", "nearest"), "bilinear or nearest"),
            "df_min_valid_fraction": (finite(self.df_min_valid_fraction) and 0 <= self.df_min_valid_fraction <= 1,
                                      "a share of a view's pixels, 0 to 1"),
            "grad_edge_threshold": (finite(self.grad_edge_threshold) and self.grad_edge_threshold >= 0,
                                    "a Sobel magnitude of log depth, >= 0"),
            "mask_pos_weight": (self.mask_pos_weight is None or (finite(self.mask_pos_weight)
                                                                 and self.mask_pos_weight > 0),
                                "the out-of-range class's weight, > 0 (or null: balanced per batch)"),
            "mask_max_pos_weight": (finite(self.mask_max_pos_weight) and self.mask_max_pos_weight > 0,
                                    "the largest balanced class weight, > 0"),
            "mask_dice_weight": (finite(self.mask_dice_weight) and self.mask_dice_weight >= 0, "a weight >= 0"),
            "mask_eps": (finite(self.mask_eps) and 0 < self.mask_eps < 0.5, "a small number > 0, e.g. 1e-7"),
        }
        for field, weight in ((f.name, getattr(self, f.name)) for f in fields(self) if f.name.startswith("w_")):
            rules[field] = (finite(weight) and weight >= 0, "a loss term's weight, a number >= 0 (0 = off)")
        for field, (ok, what) in rules.items():
            if not ok:
                raise ValueError(f"{field} is {what}, got {getattr(self, field)!r}")
        if not any(getattr(self, f.name) for f in fields(self) if f.name.startswith("w_")):
            raise ValueError("w_silog ... w_mask, every loss weight, are 0, so nothing would train")


class DapLoss(nn.Module):
    """Weighted sum of all DAP training terms."""

    def __init__(self, config: LossConfig | None = None, **overrides):
        super().__init__()
        base = asdict(config or LossConfig())
        base.update(overrides)
        self.config = LossConfig(**base)
        self.config.check()

    def forward(
        self,
        pred_depth: torch.Tensor,
        pred_mask_prob: torch.Tensor | None,
        gt_depth: torch.Tensor,
        gt_valid: torch.Tensor,
        out_of_range: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred_depth, gt_depth: (B, 1, H, W) metres; pred_mask_prob: (B, 1, H, W) probability of being out of
        range (or None: no mask term); gt_valid: bool, where the dataset has a GT distance (may exceed
        max_depth); out_of_range: optional bool of pixels known to be beyond range without a distance (sky).

        Returns (total, {term: unweighted value, detached}).
        """
        # Losses run in float32 even inside a bf16 autocast region: logs, Grams and sqrt need the precision.
        with torch.autocast(device_type=pred_depth.device.type, enabled=False):
            return self._forward(pred_depth, pred_mask_prob, gt_depth, gt_valid, out_of_range)

    def _forward(self, pred_depth, pred_mask_prob, gt_depth, gt_valid, out_of_range):
        c = self.config
        if pred_depth.ndim != 4 or pred_depth.shape[1] != 1 or pred_depth.shape != gt_depth.shape:
            raise ValueError(
                f"pred_depth and gt_depth must both be (B, 1, H, W); got {tuple(pred_depth.shape)} and "
                f"{tuple(gt_depth.shape)}. Add the channel axis with .unsqueeze(1)."
            )
        height, width = pred_depth.shape[-2:]
        geometry.check_erp_shape(height, width, "depth map")
        gt_valid = gt_valid.bool()
        in_range = gt_valid & (gt_depth > 0) & (gt_depth <= c.max_depth)
        gt = torch.where(in_range, gt_depth, torch.full_like(gt_depth, c.max_depth))
        gt = gt.float().clamp(c.min_depth_ratio * c.max_depth, c.max_depth) / c.max_depth
        pred = pred_depth.float() / c.max_depth
        wmap = None
        if c.use_distortion:
            wmap = distortion_weights(height, width, device=pred.device, dtype=pred.dtype)

        terms = {
            "silog": silog_loss(pred, gt, in_range, weights=wmap, lam=c.silog_lambda),
            "df": dense_fidelity_loss(
                pred, gt, in_range, fov_deg=c.df_fov_deg, view_size=c.df_view_size, normalise=c.df_normalise,
                sample_mode=c.df_sample_mode, min_valid_fraction=c.df_min_valid_fraction,
            ),
            "grad": gradient_loss(
                pred, gt, in_range, edge_threshold=c.grad_edge_threshold, weights=wmap, lam=c.silog_lambda
            ),
            "normal": normal_loss(pred, gt, in_range, weights=wmap),
            "pts": point_loss(pred, gt, in_range, weights=wmap),
        }
        if pred_mask_prob is not None:
            beyond = gt_valid & (gt_depth > c.mask_threshold)  # NaN compares False
            known = gt_valid & (gt_depth > 0)
            if out_of_range is not None:
                beyond, known = beyond | out_of_range.bool(), known | out_of_range.bool()
            terms["mask"] = mask_loss(
                pred_mask_prob.float(), beyond, known, weights=wmap, pos_weight=c.mask_pos_weight,
                max_pos_weight=c.mask_max_pos_weight, dice_weight=c.mask_dice_weight, eps=c.mask_eps,
            )
        else:
            terms["mask"] = pred.new_zeros(())
        weights = {"silog": c.w_silog, "df": c.w_df, "grad": c.w_grad, "normal": c.w_normal, "pts": c.w_pts,
                   "mask": c.w_mask}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: v.detach().float() for k, v in terms.items()}
