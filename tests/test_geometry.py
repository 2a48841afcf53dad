"""Analytic tests of dap.geometry: a camera in a box room and an ellipsoid room, exact rolls, round trips."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import box_room_depth, dual_fisheye
from dap import geometry as g

H, W = 32, 64
LO = torch.tensor([-2.0, -1.5, -2.5], dtype=torch.float64)  # room [-2,3] x [-1.5,1.2] x [-2.5,4]
HI = torch.tensor([3.0, 1.2, 4.0], dtype=torch.float64)


def box_hit(rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance from the origin along unit rays to the box walls, and the axis (0,1,2) of the wall hit."""
    wall = torch.where(rays > 0, HI, LO)
    t = torch.where(rays != 0, wall / rays, torch.full_like(rays, math.inf))
    dist, axis = t.min(-1)
    return dist, axis


def inward_normal(rays: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Unit normal of the wall hit, pointing back into the room (towards the camera)."""
    sign = -torch.sign(torch.gather(rays, -1, axis.unsqueeze(-1)))
    return torch.nn.functional.one_hot(axis, 3).double() * sign


def ellipsoid_depth(rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to an off-centre ellipsoid room around the camera, and its analytic inward normal."""
    c = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    a = torch.tensor([3.0, 2.0, 4.0], dtype=torch.float64)
    # |(t d - c) / a|^2 = 1, solved for the positive root.
    qa = ((rays / a) ** 2).sum(-1)
    qb = -2 * ((rays * c) / a**2).sum(-1)
    qc = ((c / a) ** 2).sum() - 1
    t = (-qb + torch.sqrt(qb**2 - 4 * qa * qc)) / (2 * qa)
    n = -(t.unsqueeze(-1) * rays - c) / a**2
    return t, n / n.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------ rays and pixels


def test_pixel_centres_known_values():
    lon, lat = g.erp_lonlat(H, W, dtype=torch.float64)
    assert lon[0, 0].item() == pytest.approx(-math.pi + math.pi / W)
    assert lat[0, 0].item() == pytest.approx(math.pi / 2 - math.pi / (2 * H))
    rays = g.erp_rays(H, W, dtype=torch.float64)
    centre = rays[H // 2 - 1 : H // 2 + 1]
    # The middle of the panorama looks along +z, a quarter in along -x, three quarters in along +x.
    for col, axis in ((W // 2, [0, 0, 1]), (W // 4, [-1, 0, 0]), (3 * W // 4, [1, 0, 0]), (0, [0, 0, -1])):
        mean = centre[:, [col - 1, col]].reshape(-1, 3).mean(0)
        torch.testing.assert_close(mean / mean.norm(), torch.tensor(axis, dtype=torch.float64))
    assert (rays[0, :, 1] < -0.99).all() and (rays[-1, :, 1] > 0.99).all()  # row 0 looks up (-y)
    u, v = g.lonlat_to_pixel(lon, lat, H, W)
    torch.testing.assert_close(u, torch.arange(W, dtype=torch.float64).expand(H, W))
    torch.testing.assert_close(v, torch.arange(H, dtype=torch.float64)[:, None].expand(H, W))


def test_ray_lonlat_round_trip_numpy():
    rng = np.random.default_rng(0)
    lon = rng.uniform(-math.pi, math.pi, 500)
    lat = rng.uniform(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3, 500)
    rays = g.lonlat_to_rays(lon, lat)
    assert isinstance(rays, np.ndarray) and rays.shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1, atol=1e-12)
    lon2, lat2 = g.rays_to_lonlat(rays * 3.5)
    np.testing.assert_allclose(lon2, lon, atol=1e-12)
    np.testing.assert_allclose(lat2, lat, atol=1e-12)


# ---------------------------------------------------------------------------------------- box room


def test_box_room_points_on_walls():
    rays = g.erp_rays(64, 128, dtype=torch.float64)
    dist, axis = box_hit(rays)
    points = g.depth_to_points(dist.float())
    wall = torch.where(rays > 0, HI, LO).gather(-1, axis.unsqueeze(-1)).squeeze(-1)
    along = points.double().gather(-1, axis.unsqueeze(-1)).squeeze(-1)
    assert (along - wall).abs().max() < 1e-4
    assert ((points.double() >= LO - 1e-4) & (points.double() <= HI + 1e-4)).all()


def test_box_room_normals_are_wall_axes():
    h, w = 64, 128
    rays = g.erp_rays(h, w, dtype=torch.float64)
    dist, axis = box_hit(rays)
    normals = g.normals_from_depth(dist.float()).double()
    assert normals.shape == (h, w, 3) and torch.isfinite(normals).all()
    # Pixels whose whole 3x3 neighbourhood (columns wrapping, rows clipped) sees one wall.
    same = torch.ones(h, w, dtype=torch.bool)
    for dc in (-1, 0, 1):
        rolled = torch.roll(axis, dc, -1)
        same &= rolled == axis
        same[1:] &= rolled[:-1] == axis[1:]
        same[:-1] &= rolled[1:] == axis[:-1]
    assert same.float().mean() > 0.8
    assert same[:, 0].sum() > h // 2 and same[0].all() and same[-1].all()  # seam and both pole rows
    err = (normals - inward_normal(rays, axis)).norm(dim=-1)
    assert err[same].max() < 1e-3
    # Pole rows see the ceiling (y = -1.5, normal +y) and the floor (normal -y).
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(normals[0], up.expand(w, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(normals[-1], -up.expand(w, 3), atol=1e-3, rtol=0)
    # Toward the camera everywhere, unit length everywhere.
    assert ((normals * rays).sum(-1) < 0).all()
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(h, w, dtype=torch.float64))


def test_rotated_box_room_depth_matches_analytic():
    h, w = 64, 128
    rays = g.erp_rays(h, w, dtype=torch.float64)
    depth = box_hit(rays)[0].float()
    rot = g.rotation_matrix(yaw=30, pitch=15, roll=-10)
    expected = box_hit(rays @ rot.T)[0].float()  # the room seen by the rotated camera
    nearest = g.rotate_erp(depth, rot, mode="nearest")
    bilinear = g.rotate_erp(depth, rot)
    rel_n = ((nearest - expected).abs() / expected)[4:-4]
    rel_b = ((bilinear - expected).abs() / expected)[4:-4]
    # Nearest picks an input pixel at most ~0.7 px away; the depth slope bounds the error.
    assert rel_n.max() < 0.1 and rel_n.mean() < 0.02
    # Bilinear is tight except at the room's edges and corners, where depth has a kink (measured: max 4.3%,
    # mean 0.11%, 2% of pixels above 1%).
    assert rel_b.max() < 0.05 and rel_b.mean() < 2e-3 and (rel_b > 0.01).float().mean() < 0.04
    # Nearest copies the input pixel nearest to R @ d: check against the pixel found independently here.
    lon, lat = g.rays_to_lonlat(rays @ rot.T)
    col = ((lon + math.pi) / (2 * math.pi) * w).floor().long() % w
    row = ((0.5 - lat / math.pi) * h).floor().long().clamp(0, h - 1)
    assert (nearest == depth[row, col]).float().mean() > 0.999
    # And against the wrong direction (R instead of R.T) it is far off, so the test can tell them apart.
    wrong = box_hit(rays @ rot)[0].float()
    assert ((nearest - wrong).abs() / wrong)[4:-4].mean() > 0.05


# ------------------------------------------------------------------------------- normals, ellipsoid


def test_normals_ellipsoid_seam_and_poles():
    h, w = 64, 128
    rays = g.erp_rays(h, w, dtype=torch.float64)
    depth, analytic = ellipsoid_depth(rays)
    normals = g.normals_from_depth(depth)
    cos = (normals * analytic).sum(-1)
    assert torch.isfinite(normals).all()
    assert cos[1:-1].min() > math.cos(math.radians(0.5))  # central differences, seam columns included
    assert cos.min() > math.cos(math.radians(3.0))  # one-sided at the pole rows
    # Continuity across the seam: columns W-1 and 0 differ no more than any other neighbouring columns.
    step = (normals - torch.roll(normals, 1, -2)).norm(dim=-1)[1:-1]
    assert step[:, 0].max() <= step[:, 1:].max() + 1e-9


def test_normals_roll_equivariance():
    # Rolling a depth map by k columns yaws the scene: normals must roll and rotate with it, at the seam too.
    rays = g.erp_rays(H, W, dtype=torch.float64)
    depth, _ = ellipsoid_depth(rays)
    k = 5
    rot = g.rotation_matrix(yaw=k * 360 / W)
    rolled = g.normals_from_depth(torch.roll(depth, k, -1))
    expected = torch.roll(g.normals_from_depth(depth) @ rot.T, k, -2)
    torch.testing.assert_close(rolled, expected, atol=1e-9, rtol=0)


def test_normals_invalid_depth_and_numpy():
    rays = g.erp_rays(H, W, dtype=torch.float64)
    depth = box_hit(rays)[0].numpy().astype(np.float32)
    depth[10:14, 20:30] = 0
    depth[5, 7] = 0
    normals = g.normals_from_depth(np.stack([depth, depth]))
    assert isinstance(normals, np.ndarray) and normals.shape == (2, H, W, 3) and normals.dtype == np.float32
    assert np.isfinite(normals).all()
    length = np.linalg.norm(normals[0], axis=-1)
    np.testing.assert_array_equal(length[depth == 0], 0)
    np.testing.assert_allclose(length[depth > 0], 1, atol=1e-5)
    np.testing.assert_array_equal(g.normals_from_depth(np.zeros((H, W), np.float32)), 0)
    # integer depth (millimetres in a uint16) is computed in float32, not with rays truncated to 0
    mm = (depth * 1000).astype(np.uint16)
    points = g.depth_to_points(mm)
    assert points.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(points, axis=-1), mm, rtol=1e-5)
    np.testing.assert_allclose(g.normals_from_depth(mm), g.normals_from_depth(mm.astype(np.float32)))
    assert g.depth_to_points(torch.from_numpy(mm.astype(np.int64))).dtype == torch.float32


def test_solid_angle_weights():
    w = g.solid_angle_weights(64, 128)
    assert w.shape == (64, 1) and w.dtype == torch.float32
    assert (w * torch.ones(64, 128)).double().sum().item() == pytest.approx(4 * math.pi, rel=1e-5)
    torch.testing.assert_close(w, w.flip(0))
    assert w.argmax() in (31, 32) and w[0] < w[31] / 20
    # A cap: rows above 60 deg north cover 2 pi (1 - sin 60).
    cap = g.solid_angle_weights(6, 12, dtype=torch.float64)[:1].sum() * 12
    assert cap.item() == pytest.approx(2 * math.pi * (1 - math.sin(math.radians(60))))


# -------------------------------------------------------------------------------------- rotations


def test_rotation_matrix_axes():
    for r in (g.rotation_matrix(10, 20, 30), g.rotation_matrix(-170, 80, 5)):
        torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64))
        assert torch.linalg.det(r).item() == pytest.approx(1.0)
    x, y, z = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(g.rotation_matrix(yaw=90) @ z, x)  # turn right
    torch.testing.assert_close(g.rotation_matrix(pitch=90) @ z, -y)  # look up
    torch.testing.assert_close(g.rotation_matrix(roll=90) @ x, y)
    for d in ([1.0, 2.0, -0.5], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]):
        r = g.look_rotation(torch.tensor(d))
        torch.testing.assert_close(r[:, 2], torch.tensor(d).double() / torch.tensor(d).norm())
        torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64))
        assert r[1, 0].abs() < 1e-12  # no roll: the x axis stays horizontal


def test_rotate_yaw_columns_is_roll():
    img = torch.rand(2, 3, H, W)
    for k in (1, 7, -3, W // 2):
        out = g.rotate_erp(img, yaw=k * 360 / W, mode="nearest")
        assert torch.equal(out, torch.roll(img, -k, -1))  # positive yaw moves content left
    assert torch.equal(g.rotate_erp(img, yaw=360, mode="nearest"), img)
    torch.testing.assert_close(g.rotate_erp(img, yaw=360), img, atol=1e-5, rtol=0)
    # numpy channel-last and integer images keep layout and dtype.
    npimg = (np.random.default_rng(2).uniform(0, 255, (H, W, 3))).astype(np.uint8)
    out = g.rotate_erp(npimg, yaw=3 * 360 / W, mode="nearest")
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.roll(npimg, -3, axis=1))
    with pytest.raises(ValueError, match="not both"):
        g.rotate_erp(img, g.rotation_matrix(10), yaw=5)


def test_rotate_erp_is_sample_erp_along_rotated_rays_at_every_size():
    # rotate_erp caches its pixel grid per (size, rotation): alternating sizes must each get their own grid.
    rot = g.rotation_matrix(40, -25, 15)
    for h, w in ((16, 32), (8, 16), (16, 32), (8, 16)):
        img = torch.rand(3, h, w)
        rays = g.erp_rays(h, w, dtype=torch.float64) @ rot.T
        assert torch.equal(g.rotate_erp(img, rot), g.sample_erp(img, rays))
        assert torch.equal(g.rotate_erp(img, rot, mode="nearest"), g.sample_erp(img, rays, mode="nearest"))


def test_rotate_coordinate_image():
    # An image whose value is its own ray direction, rotated, must read R @ d at each pixel.
    rays = g.erp_rays(64, 128, dtype=torch.float64)
    rot = g.rotation_matrix(40, -25, 15)
    out = g.rotate_erp(rays.permute(2, 0, 1), rot).permute(1, 2, 0)
    assert (out - rays @ rot.T).norm(dim=-1).max() < 2e-3


def test_sample_erp_wraps_seam_and_pole():
    img = torch.rand(1, H, W, dtype=torch.float64)
    rays = g.erp_rays(H, W, dtype=torch.float64)
    torch.testing.assert_close(g.sample_erp(img, rays), img)
    # Exactly on the seam (lon = -pi) at a row centre: mean of the last and first columns.
    lon, lat = g.erp_lonlat(H, W, dtype=torch.float64)
    seam = g.lonlat_to_rays(torch.tensor(-math.pi, dtype=torch.float64), lat[5, 0])
    torch.testing.assert_close(g.sample_erp(img, seam[None])[0, 0], (img[0, 5, 0] + img[0, 5, -1]) / 2)
    # Exactly at the north pole above column 3's centre: mean of row 0 at column 3 and half a turn away.
    pole = g.lonlat_to_rays(lon[0, 3], torch.tensor(math.pi / 2 - 1e-12, dtype=torch.float64))
    across = (img[0, 0, 3] + img[0, 0, 3 + W // 2]) / 2
    torch.testing.assert_close(g.sample_erp(img, pole[None])[0, 0], across)
    # numpy channel-last and 2-D maps.
    out = g.sample_erp(img[0].numpy()[..., None], rays.numpy()[:4])
    assert isinstance(out, np.ndarray) and out.shape == (4, W, 1)
    assert g.sample_erp(img[0], rays[:2, :3], mode="nearest").shape == (2, 3)


# --------------------------------------------------------------------------------- perspective, cube


def test_perspective_rays():
    rays = g.perspective_rays(90.0, 5, dtype=torch.float64)
    torch.testing.assert_close(rays[2, 2], torch.tensor([0.0, 0, 1]).double())
    # Pixel centre 2 px from the middle of a 5-px 90-deg view: tan(angle) = 2 / 2.5.
    assert math.atan2(rays[2, 4, 0], rays[2, 4, 2]) == pytest.approx(math.atan(0.8))
    assert rays[0, 2, 1] < 0  # top row looks up (-y)
    d = torch.tensor([1.0, -1.0, 0.5])
    turned = g.perspective_rays(60.0, (3, 7), g.look_rotation(d), dtype=torch.float64)
    assert turned.shape == (3, 7, 3)
    torch.testing.assert_close(turned[1, 3], d.double() / d.norm())


def test_cubemap_face_centres_look_along_axes():
    faces = g.cubemap_face_rays(8)
    assert faces.shape == (6, 8, 8, 3)
    axes = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    centre = faces[:, 3:5, 3:5].mean((1, 2))
    torch.testing.assert_close(centre / centre.norm(dim=-1, keepdim=True), axes)
    # Sampling a coordinate ERP image gives the same rays.
    rays = g.erp_rays(64, 128)
    cube = g.erp_to_cubemap(rays.permute(2, 0, 1), 8)
    assert cube.shape == (6, 3, 8, 8)
    assert (cube.permute(0, 2, 3, 1) - faces).norm(dim=-1).max() < 3e-3


def smooth_image(rays: torch.Tensor) -> torch.Tensor:
    x, y, z = rays.unbind(-1)
    return torch.stack([128 + 100 * x * z, 128 + 90 * y + 20 * x, 128 + 60 * z * z - 40 * x * y], -1)


def test_cubemap_faces_match_the_rays_in_every_layout():
    h, w = 64, 128
    img = smooth_image(g.erp_rays(h, w, dtype=torch.float64)).float()  # (H, W, 3), 0-255 scale
    cube = g.erp_to_cubemap(img.permute(2, 0, 1), 32)
    # Faces are where the rays say: a face sampled from the ERP equals the function at the face rays.
    exact = smooth_image(g.cubemap_face_rays(32, dtype=torch.float64)).float()
    assert (cube.permute(0, 2, 3, 1) - exact).abs().max() < 0.5
    # numpy channel-last and uint8 keep their layout; 2-D maps too.
    npimg = img.numpy().round().astype(np.uint8)
    npcube = g.erp_to_cubemap(npimg, 32)
    assert isinstance(npcube, np.ndarray) and npcube.shape == (6, 32, 32, 3) and npcube.dtype == np.uint8
    assert np.abs(npcube.astype(int) - exact.numpy()).max() <= 2
    assert g.erp_to_cubemap(img[..., 0], 16).shape == (6, 16, 16)


def test_icosahedron_vertices():
    v = g.icosahedron_vertices(dtype=torch.float64)
    assert v.shape == (12, 3)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(12, dtype=torch.float64))
    dist = torch.cdist(v, v)
    dist.fill_diagonal_(math.inf)
    edge = dist.min()
    assert edge.item() == pytest.approx(1 / math.sin(2 * math.pi / 5))  # unit-circumradius icosahedron edge
    assert ((dist - edge).abs() < 1e-9).sum(-1).tolist() == [5] * 12
    assert dist.round(decimals=9).unique().numel() == 4  # three distinct distances, plus inf


def test_floor_and_ceiling_of_a_box_room():
    """Camera 1.2 m above the floor and 1.5 m below the ceiling of box_room_depth's room (y points down)."""
    depth = box_room_depth(128, 256)
    floor, ceiling = g.floor_and_ceiling(depth)
    assert floor == pytest.approx(1.2, rel=1e-3) and ceiling == pytest.approx(1.5, rel=1e-3)
    assert g.floor_and_ceiling(2.5 * depth) == pytest.approx((3.0, 3.75), rel=1e-3)
    # a tilted camera (3 degrees of pitch and roll): the median over columns still finds both within 2%
    tilted = g.rotate_erp(depth, pitch=3.0, roll=3.0, mode="nearest")
    assert g.floor_and_ceiling(tilted) == pytest.approx((1.2, 1.5), rel=0.02)
    # furniture is nearer than the floor: a box on the floor in part of the view does not move the estimate
    cluttered = depth.copy()
    cluttered[90:110, 40:100] *= 0.6
    assert g.floor_and_ceiling(cluttered)[0] == pytest.approx(1.2, rel=1e-3)
    # no valid pixel above the horizon (an open sky): no ceiling
    sky = np.zeros_like(depth, dtype=bool)
    sky[:64] = True
    floor, ceiling = g.floor_and_ceiling(depth, ~sky)
    assert floor == pytest.approx(1.2, rel=1e-3) and np.isnan(ceiling)
    with pytest.raises(ValueError, match="one \\(H, W\\) depth map"):
        g.floor_and_ceiling(depth[None])


def test_dual_fisheye_images_are_told_from_equirectangular_ones():
    from dap.data.synthetic import make_scene, render

    for seed in range(6):  # rendered rooms and streets, and their unstitched two-lens versions
        erp = render(make_scene(seed, "indoor" if seed % 2 else "outdoor"), 64, 128, "photo")["rgb"]
        assert not g.looks_dual_fisheye(erp)
        assert g.looks_dual_fisheye(dual_fisheye(erp))
    night = np.full((64, 128, 3), 0.3, np.float32)
    night[:12] = night[-12:] = 0.0  # black sky above and a black tripod patch below: still one colour per row
    assert not g.looks_dual_fisheye(night)
    assert not g.looks_dual_fisheye(np.zeros((64, 128, 3), np.float32))
    assert not g.looks_dual_fisheye(dual_fisheye(np.ones((64, 128, 3), np.float32))[:, :100])  # not 2:1


@pytest.mark.parametrize(("height", "width", "hint"), [
    (256, 512, None), (256, 500, "within 3% of that: resize it"), (256, 524, "within 3%"), (256, 400, "Narrower"),
    (512, 256, "turned by 90 degrees"), (128, 768, "cubemap strip"), (768, 128, "cubemap strip"),
    (100, 100, "stereo (over-under) 360-degree panorama"), (720, 1280, "ordinary photograph"),
    (768, 1024, "cubemap cross"), (1024, 768, "cubemap cross"), (256, 1024, "stereo (side-by-side)"),
    (256, 1200, "--pad-to-erp (pad_to_erp=True in Python) for a partial panorama"),
])
def test_non_panorama_shapes_are_named_with_what_they_look_like(height, width, hint):
    from dap.errors import NotPanoramaError

    if hint is None:
        g.check_erp_shape(height, width)
        return
    expected = rf"is {width}x{height} .* exactly 2:1 \(e.g. {2 * height}x{height}\)"
    with pytest.raises(NotPanoramaError, match=expected) as e:
        g.check_erp_shape(height, width)
    assert hint in str(e.value)
    assert ("--pad-to-erp" in str(e.value)) == (width > 2.06 * height and "cubemap" not in hint)  # where it may help
    with pytest.raises(NotPanoramaError) as e:  # a benchmark or training sample: no --pad-to-erp where it is read
        g.check_erp_shape(height, width, paddable=False)
    assert "--pad-to-erp" not in str(e.value)


@pytest.mark.parametrize(("height", "width"), [(0, 0), (0, 2), (-1, -2)])
def test_a_size_without_pixels_is_not_a_panorama(height, width):
    from dap.errors import NotPanoramaError

    with pytest.raises(NotPanoramaError, match=rf"is {width}x{height} \(width x height\): it has no pixels"):
        g.check_erp_shape(height, width)



SAMPLE = Path(__file__).resolve().parents[1] / "src" / "dap" / "assets" / "sample_indoor.jpg"


def _down_axis_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Degrees between where two rotated cameras see the world's down direction (row 1 of R: R.T @ y): the tilt
    between them, whatever their yaw."""
    return math.degrees(math.acos(min(1.0, float(a[1] @ b[1]))))


@pytest.mark.parametrize(("pitch", "roll", "yaw"), [(6.0, 0.0, 0.0), (0.0, -12.0, 40.0), (15.0, 15.0, -70.0)])
def test_level_rotation_recovers_a_tilt_and_levels_the_panorama(pitch, roll, yaw):
    from dap.io import read_rgb

    level = read_rgb(SAMPLE)
    truth = g.rotation_matrix(yaw=yaw, pitch=pitch, roll=roll)
    tilted = np.asarray(g.rotate_erp(level, truth), dtype=np.float32)
    found = g.level_rotation(tilted)
    assert _down_axis_angle(found, truth) < 1.0  # a 21-degree tilt to within a degree
    assert math.hypot(*g.camera_tilt(np.asarray(g.rotate_erp(tilted, found.T), dtype=np.float32))) < 1.0
    assert g.level_rotation(np.full((64, 128, 3), 0.5, np.float32)) is None  # no edges: cannot judge
    # a thumbnail is not judged (enlarged to the fit's 1024 wide, its noise would read as leaning edges)
    noise = np.random.default_rng(0).random((64, 128, 3), dtype=np.float32)
    assert g.level_rotation(noise) is None and math.isnan(g.tilt_angle(noise))


def test_a_read_only_array_is_turned_without_a_warning():
    """`dap curate ingest --level` printed torch's "The given NumPy array is not writable" for a decoded image."""
    import warnings

    rgb = np.random.default_rng(0).random((8, 16, 3)).astype(np.float32)
    rgb.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        turned = g.rotate_erp(rgb, yaw=90.0)
    assert turned.shape == (8, 16, 3)
