import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dap import geometry, losses
from dap.errors import NotPanoramaError

H, W = 32, 64


def room(height: int = H, width: int = W, batch: int = 2) -> torch.Tensor:
    """Distance map (B, 1, H, W) of a 6 x 3 x 8 m box room with a pillar at 1.5 m in front of the camera."""
    r = geometry.erp_rays(height, width, dtype=torch.float64)
    half = torch.tensor([3.0, 1.5, 4.0], dtype=torch.float64)
    d = (half / r.abs().clamp_min(1e-9)).min(-1).values
    lon, lat = geometry.erp_lonlat(height, width, dtype=torch.float64)
    d = torch.where((lon.abs() < 0.4) & (lat.abs() < 0.5), torch.full_like(d, 1.5), d)
    return d.float().expand(batch, 1, height, width).clone()


def blurred(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)


PIXEL_LOSSES = {
    "silog": losses.silog_loss,
    "df": losses.dense_fidelity_loss,
    "grad": losses.gradient_loss,
    "normal": losses.normal_loss,
    "pts": losses.point_loss,
}


@pytest.mark.parametrize("name", list(PIXEL_LOSSES))
def test_zero_for_perfect_prediction_positive_otherwise(name):
    fn = PIXEL_LOSSES[name]
    gt = room()
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[0, :, :4] = False  # some invalid pixels (a hole at the north pole of image 0)
    gt_with_holes = torch.where(valid, gt, torch.zeros_like(gt))
    assert float(fn(gt.clone(), gt_with_holes, valid)) <= 1e-6
    assert float(fn(blurred(gt), gt_with_holes, valid)) > 1e-4


def test_mask_loss_zero_for_perfect_mask_and_lower_for_right_than_inverted():
    target = torch.zeros(2, 1, H, W, dtype=torch.bool)
    target[:, :, : H // 3] = True  # sky in the upper third
    assert float(losses.mask_loss(target.float(), target)) <= 1e-6
    right = torch.where(target, 0.8, 0.2)
    assert float(losses.mask_loss(right, target)) < float(losses.mask_loss(1 - right, target))
    assert float(losses.mask_loss(right, target)) > 0


def test_mask_loss_balanced_bce_and_dice_by_hand():
    # 4 pixels, 1 positive, p = 0.5 everywhere: w+ = 3/1, BCE = (3 ln2 + 3 ln2) / 4, Dice = 1 - (1 + 1) / 4.
    target = torch.tensor([True, False, False, False]).reshape(1, 1, 2, 2)
    prob = torch.full((1, 1, 2, 2), 0.5)
    expected = 1.5 * math.log(2) + 0.5 * 0.5
    assert float(losses.mask_loss(prob, target)) == pytest.approx(expected, abs=1e-6)
    plain = losses.mask_loss(prob, target, pos_weight=1.0, dice_weight=0.0)
    assert float(plain) == pytest.approx(math.log(2))


def test_point_loss_known_scale_error():
    gt = room(batch=1).double()
    valid = torch.ones_like(gt, dtype=torch.bool)
    # By hand: P = d (cos lat sin lon, -sin lat, cos lat cos lon), so |1.1 P - P|_1 = 0.1 d (|x| + |y| + |z|).
    i = (np.arange(H) + 0.5) / H
    j = (np.arange(W) + 0.5) / W
    lat, lon = np.meshgrid((0.5 - i) * np.pi, j * 2 * np.pi - np.pi, indexing="ij")
    l1 = np.abs(np.cos(lat) * np.sin(lon)) + np.abs(np.sin(lat)) + np.abs(np.cos(lat) * np.cos(lon))
    expected = 0.1 * np.mean(gt[0, 0].numpy() * l1)
    assert float(losses.point_loss(1.1 * gt, gt, valid)) == pytest.approx(expected, rel=1e-9)
    # Area-weighted on a sphere of radius 2: 0.1 * 2 * E|x|+|y|+|z| over the sphere = 0.1 * 2 * 3/2 = 0.3.
    sphere = torch.full((1, 1, 64, 128), 2.0)
    w = losses.distortion_weights(64, 128)
    got = float(losses.point_loss(1.1 * sphere, sphere, torch.ones_like(sphere, dtype=torch.bool), weights=w))
    assert got == pytest.approx(0.3, abs=2e-3)


def plane_distance(n: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance map of the plane n . X = c (n unit) and where it is in front of the camera at a sane angle."""
    cos = geometry.erp_rays(H, W, dtype=torch.float64) @ n
    ok = cos > 0.3
    return torch.where(ok, c / cos.clamp_min(1e-3), 1.0).float()[None, None], ok[None, None]


def test_normal_loss_tilted_planes():
    n1 = F.normalize(torch.tensor([0.2, 0.3, 1.0], dtype=torch.float64), dim=0)
    n2 = F.normalize(torch.tensor([-0.3, 0.1, 1.0], dtype=torch.float64), dim=0)
    gt, ok1 = plane_distance(n1, 2.0)
    pred, ok2 = plane_distance(n2, 3.0)
    valid = ok1 & ok2
    # Isolated valid pixels away from the planes have no normal (no valid neighbour): they must not count.
    far = -F.max_pool2d(-(~valid).float(), 5, 1, padding=2) > 0.5
    sparse = torch.zeros_like(far)
    sparse[..., ::3, ::3] = True
    assert int((far & sparse).sum()) > 20
    valid = valid | (far & sparse)
    expected = float((n1 - n2).abs().sum())
    assert float(losses.normal_loss(pred, gt, valid)) == pytest.approx(expected, abs=1e-4)
    w = losses.distortion_weights(H, W)
    assert float(losses.normal_loss(pred, gt, valid, weights=w)) == pytest.approx(expected, abs=1e-4)
    assert float(losses.normal_loss(gt, gt, valid)) == 0.0


def test_df_views_are_the_icosahedron_vertices():
    axes = losses.df_view_directions(dtype=torch.float64)
    assert axes.shape == (12, 3)
    assert torch.allclose(axes.norm(dim=-1), torch.ones(12, dtype=torch.float64))
    cos = (axes @ axes.T).clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cos)) + torch.eye(12, dtype=torch.float64) * 360
    assert float(angles.min()) == pytest.approx(63.4349, abs=1e-3)  # atan(2)
    assert ((angles - 63.4349).abs() < 1e-3).sum(1).tolist() == [5] * 12  # 5 neighbours each
    rays = losses.df_view_rays(9, 90.0, dtype=torch.float64)
    assert rays.shape == (12, 9, 9, 3)
    assert torch.allclose(rays[:, 4, 4], axes, atol=1e-12)  # the centre pixel looks along the vertex
    # The 12 views cover the whole sphere: every ERP direction lies inside some 90-degree view.
    local = torch.einsum("vk,hwk->vhw", axes, geometry.erp_rays(16, 32, dtype=torch.float64))
    assert float(local.max(0).values.min()) > math.cos(math.radians(45))


def test_distortion_weights_integrate_to_4pi_and_have_mean_1():
    raw = losses.distortion_weights(H, W, normalise=False, dtype=torch.float64)
    assert raw.shape == (H, W)
    assert float(raw.sum()) == pytest.approx(4 * math.pi, rel=1e-12)
    norm = losses.distortion_weights(H, W)
    assert float(norm.mean()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(norm, norm.flip(0))  # symmetric about the equator
    assert float(norm[H // 2, 0]) > 1.5 > 0.1 > float(norm[0, 0])  # equator counts more than the pole row


@pytest.mark.parametrize("k", [1.1, 0.5, 3.0])
@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_silog_of_a_scale_error(k, lam):
    gt = room()
    valid = torch.rand(gt.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    expected = math.sqrt(1 - lam) * abs(math.log(k))
    assert float(losses.silog_loss(k * gt, gt, valid, lam=lam)) == pytest.approx(expected, abs=1e-5)
    w = losses.distortion_weights(H, W)
    weighted = losses.silog_loss(k * gt, gt, valid, weights=w, lam=lam)
    assert float(weighted) == pytest.approx(expected, abs=1e-5)


def test_edge_mask_finds_a_step_across_the_seam():
    gt = torch.full((1, 1, H, W), 2.0)
    gt[..., W // 2 :] = 4.0  # steps at the centre and at the seam (column W-1 -> column 0)
    valid = torch.ones_like(gt, dtype=torch.bool)
    cols = losses.edge_mask(gt, valid, threshold=0.05)[0, 0].any(0).nonzero().flatten().tolist()
    assert cols == [0, W // 2 - 1, W // 2, W - 1]
    # Constant depth has no edges: L_grad is 0 whatever the prediction.
    flat = torch.full((1, 1, H, W), 3.0)
    assert float(losses.gradient_loss(2 * flat, flat, valid)) == 0.0
    assert float(losses.gradient_loss(blurred(gt), gt, valid)) > 0.1


def test_df_normalisations():
    gt = room()
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert float(losses.dense_fidelity_loss(1.3 * gt, gt, valid)) < 1e-9  # "centred" ignores scale
    assert float(losses.dense_fidelity_loss(1.3 * gt, gt, valid, normalise="gt_mean")) > 0.1
    for mode in ("centred", "frobenius", "gt_mean"):
        assert float(losses.dense_fidelity_loss(gt, gt, valid, normalise=mode)) <= 1e-6
        assert float(losses.dense_fidelity_loss(blurred(gt), gt, valid, normalise=mode)) > 0
    with pytest.raises(ValueError, match="normalise"):
        losses.dense_fidelity_loss(gt, gt, valid, normalise="l2")


def test_df_is_continuous_where_a_views_truth_is_flat():
    """A sphere's views have a constant truth: centred, it is ~0 while the prediction's map is scaled to unit norm
    however small its variation, so a prediction 1e-4 off cost ~0.9 (SILog: 6e-5). Such views are skipped."""
    g = torch.full((1, 1, H, W), 2.0)
    valid = torch.ones_like(g, dtype=torch.bool)
    tilt = torch.linspace(1, -1, H)[:, None].expand(H, W)
    for eps in (1e-6, 1e-4):
        assert float(losses.dense_fidelity_loss(g * (1 + eps * tilt), g, valid)) == 0.0
    gt = room()  # views with structure are still compared, as before
    assert float(losses.dense_fidelity_loss(blurred(gt), gt, torch.ones_like(gt, dtype=torch.bool))) == \
        pytest.approx(6.6e-3, rel=0.05)


def _check_finite_backward(total: torch.Tensor, *leaves: torch.Tensor) -> None:
    total.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_all_invalid_batch_gives_zero_and_no_nan():
    gt = torch.zeros(2, 1, H, W)
    gt[1, :, :5] = float("nan")  # garbage in invalid pixels must not leak
    gt[1, :, 5:9] = float("inf")
    pred = torch.rand(2, 1, H, W, requires_grad=True)
    prob = torch.rand(2, 1, H, W, requires_grad=True)
    total, terms = losses.DapLoss()(pred, prob, gt, torch.zeros_like(gt, dtype=torch.bool))
    assert float(total.detach()) == 0.0 and all(float(v) == 0.0 for v in terms.values())
    _check_finite_backward(total, pred, prob)


def test_gt_beyond_range_is_not_depth_supervised_but_is_masked():
    gt = room()
    gt[:, :, : H // 4] = 250.0  # beyond max_depth
    valid = torch.ones_like(gt, dtype=torch.bool)
    target = gt > 100
    loss = losses.DapLoss()
    base = loss(gt.clone(), target.float(), gt, valid)[1]
    assert all(float(v) <= 1e-6 for v in base.values())
    wild = torch.where(target, 1.0, gt)  # prediction differs only where GT is beyond range
    assert all(float(v) <= 1e-6 for v in loss(wild, target.float(), gt, valid)[1].values())
    assert float(loss(wild, 1 - target.float(), gt, valid)[1]["mask"]) > 1.0
    # Everything beyond range: depth terms are 0, the mask term is still defined.
    far = torch.full_like(gt, 500.0).requires_grad_()
    pred = torch.rand_like(gt, requires_grad=True)
    prob = torch.rand_like(gt, requires_grad=True)
    total, terms = loss(pred, prob, far.detach(), valid)
    assert all(float(terms[k]) == 0.0 for k in ("silog", "df", "grad", "normal", "pts"))
    assert float(terms["mask"]) > 0
    _check_finite_backward(total, pred, prob)


def test_mask_threshold_and_explicit_out_of_range():
    gt = torch.full((1, 1, H, W), 20.0)
    valid = torch.ones_like(gt, dtype=torch.bool)
    prob_in = torch.zeros_like(gt)
    assert float(losses.DapLoss()(gt, prob_in, gt, valid)[1]["mask"]) <= 1e-6  # 20 m is inside 100 m
    assert float(losses.DapLoss(mask_threshold=10.0)(gt, prob_in, gt, valid)[1]["mask"]) > 1.0
    sky = torch.zeros_like(valid)
    sky[..., :4, :] = True  # sky: no distance, known to be out of range
    gt_sky = torch.where(sky, 0.0, gt)
    terms = losses.DapLoss()(gt, sky.float(), gt_sky, valid & ~sky, out_of_range=sky)[1]
    assert all(float(v) <= 1e-6 for v in terms.values())


def test_total_is_weighted_sum_and_gradients_flow():
    gt = room()
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[1, :, -3:] = False
    pred = (blurred(gt) * 1.05).requires_grad_()
    prob = torch.full_like(gt, 0.3, requires_grad=True)
    loss = losses.DapLoss()
    total, terms = loss(pred, prob, gt, valid)
    lam = {"silog": 1.0, "df": 0.4, "grad": 5.0, "normal": 2.0, "pts": 2.0, "mask": 2.0}
    assert float(total.detach()) == pytest.approx(sum(lam[k] * float(v) for k, v in terms.items()), rel=1e-5)
    assert all(float(terms[k]) > 0 for k in ("silog", "df", "grad", "normal", "pts", "mask"))
    _check_finite_backward(total, pred, prob)
    assert float(pred.grad.abs().sum()) > 0 and float(prob.grad.abs().sum()) > 0
    # Perfect prediction: total 0.
    assert float(loss(gt, torch.zeros_like(gt), gt, valid)[0]) <= 1e-6
    # Without a mask head the mask term is 0.
    assert float(loss(gt, None, gt, valid)[1]["mask"]) == 0.0


def test_each_term_has_a_gradient():
    gt = room(batch=1)
    valid = torch.ones_like(gt, dtype=torch.bool)
    for name, fn in PIXEL_LOSSES.items():
        pred = blurred(gt).requires_grad_()
        fn(pred, gt, valid).backward()
        assert torch.isfinite(pred.grad).all() and float(pred.grad.abs().sum()) > 0, name


def test_bad_shapes_are_rejected():
    loss = losses.DapLoss()
    gt = torch.ones(1, 1, H, W)
    with pytest.raises(ValueError, match="unsqueeze"):
        loss(gt[:, 0], None, gt[:, 0], gt[:, 0] > 0)
    square = torch.ones(1, 1, H, H)
    with pytest.raises(NotPanoramaError):
        loss(square, None, square, square > 0)


def test_config_overrides():
    loss = losses.DapLoss(losses.LossConfig(w_df=0.0), grad_edge_threshold=0.1)
    assert loss.config.w_df == 0.0 and loss.config.grad_edge_threshold == 0.1 and loss.config.w_silog == 1.0


def test_runs_in_float32_under_autocast():
    gt = room(batch=1)
    valid = torch.ones_like(gt, dtype=torch.bool)
    pred, prob = blurred(gt), torch.full_like(gt, 0.2)
    ref_total, ref = losses.DapLoss()(pred, prob, gt, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = losses.DapLoss()(pred, prob, gt, valid)
    assert total.dtype == torch.float32
    for k, v in ref.items():  # bf16 matmuls/convs (Gram, Sobel) would be off by ~1e-2 relative
        assert float(terms[k]) == pytest.approx(float(v), rel=1e-5), k


def test_dap_loss_refuses_settings_that_train_nothing():
    """DapLoss(max_depth=inf) gave every depth term 0 and trained the range mask alone."""
    with pytest.raises(ValueError, match="max_depth is a number of metres > 0, got inf"):
        losses.DapLoss(max_depth=float("inf"))
    with pytest.raises(ValueError, match="silog_lambda is SILog's variance weight, 0 to 1"):
        losses.DapLoss(losses.LossConfig(silog_lambda=2.0))
