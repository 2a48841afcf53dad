import math

import numpy as np
import pytest
import torch

from dap.data.synthetic import (
    TILE,
    Box,
    Cylinder,
    Material,
    Plane,
    Scene,
    Shell,
    Sphere,
    Style,
    get_style,
    kind_for_seed,
    load_texture_tiles,
    make_scene,
    render,
)
from dap.errors import DapError, NotPanoramaError
from dap.geometry import erp_rays, rotation_matrix
from dap.io import write_depth

H, W = 32, 64


def rays64(h=H, w=W) -> np.ndarray:
    return erp_rays(h, w).double().numpy()


def room_depth(cam, lo, hi, d):
    """Analytic distance from cam (inside the box) to its walls along unit rays d (float64)."""
    cam, lo, hi = map(np.asarray, (cam, lo, hi))
    t = np.where(d > 0, (hi - cam) / d, (lo - cam) / d)
    return t.min(-1)


def sphere_depth(cam, c, r, d):
    oc = np.asarray(c) - np.asarray(cam)
    b = d @ oc
    disc = b * b - (oc @ oc - r * r)
    t = b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def box_depth(cam, lo, hi, d):
    with np.errstate(divide="ignore"):
        t1, t2 = (np.asarray(lo) - cam) / d, (np.asarray(hi) - cam) / d
    tn, tf = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where((tn <= tf) & (tn > 0), tn, np.inf)


def test_box_room_depth_is_analytic():
    cam, lo, hi = (1.3, -1.4, 2.1), (0.0, -3.0, 0.0), (4.0, 0.0, 5.0)
    out = render(Scene(seed=0, kind="indoor", camera=cam, shells=[Shell(lo, hi, 0, 0, 0, 1)]), H, W)
    d = rays64()
    assert np.abs(out["depth"] - room_depth(cam, lo, hi, d)).max() <= 1e-4
    assert not out["sky_mask"].any() and (out["instance"] == 1).all()
    # inward normals: the floor (y = 0, below the camera) faces up (-y)
    assert np.allclose(out["normals"][-1], [0, -1, 0]) and np.allclose(out["normals"][0], [0, 1, 0])
    assert out["depth"].dtype == np.float32 and out["rgb"].shape == (H, W, 3)
    assert 0 <= out["rgb"].min() and out["rgb"].max() <= 1


def test_sphere_around_camera_gives_constant_depth():
    cam = (0.4, -1.2, 3.0)
    out = render(Scene(seed=0, kind="indoor", camera=cam, spheres=[Sphere(cam, 2.5, 0, 1, inside=True)]), H, W)
    assert np.abs(out["depth"] - 2.5).max() <= 1e-5


def test_sky_is_exactly_the_rays_that_hit_nothing():
    cam = (0.0, -1.7, 0.0)
    out = render(Scene(seed=0, kind="outdoor", camera=cam, planes=[Plane(0.0, 0, 1)]), H, W)
    d = rays64()
    # y points down: only rays going down (lower hemisphere, d_y > 0) reach the ground
    assert np.array_equal(out["sky_mask"], d[..., 1] <= 0)
    assert out["sky_mask"][: H // 2].all() and not out["sky_mask"][H // 2:].any()
    assert np.array_equal(out["range_mask"], out["sky_mask"] | (out["depth"] > 100))
    ground = ~out["sky_mask"]
    assert np.allclose(out["depth"][ground], 1.7 / d[..., 1][ground], rtol=1e-5)
    assert (out["depth"][out["sky_mask"]] == 0).all() and (out["instance"][out["sky_mask"]] == 0).all()


@pytest.mark.parametrize("center", [(0.0, -0.5, -6.0), (3.0, -1.0, 4.0), (0.5, -7.0, 0.2), (-0.3, 5.0, 0.1)])
def test_solids_match_analytic_including_seam_and_poles(center):
    # spheres and boxes behind the camera straddle the seam (lon = +-pi); others sit near the poles
    cam = (0.0, 0.0, 0.0)
    c = np.asarray(center)
    lo, hi = tuple(c - [0.8, 0.5, 0.6] + [2.5, 0, 0]), tuple(c + [0.8, 0.5, 0.6] + [2.5, 0, 0])
    scene = Scene(seed=0, kind="outdoor", camera=cam, spheres=[Sphere(center, 1.1, 0, 1)], boxes=[Box(lo, hi, 0, 2)])
    out = render(scene, 64, 128)
    d = rays64(64, 128)
    want = np.minimum(sphere_depth(cam, center, 1.1, d), box_depth(cam, lo, hi, d))
    assert np.array_equal(out["sky_mask"], np.isinf(want))
    hit = ~np.isinf(want)
    assert hit.sum() > 10
    assert np.abs(out["depth"][hit] - want[hit]).max() <= 1e-4


def test_cylinder_side_and_cap():
    cam = (0.0, -2.0, 0.0)
    cyl = Cylinder(0.0, 3.0, 0.5, -1.0, 0.0, 0, 1)  # camera above the top cap: sees cap and side
    out = render(Scene(seed=0, kind="outdoor", camera=cam, cylinders=[cyl]), 64, 128)
    d = rays64(64, 128)
    # brute force in float64: side hits and top-cap hits
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = 3.0 * d[..., 2]
    disc = b * b - a * (9.0 - 0.25)
    ts = (b - np.sqrt(np.maximum(disc, 0))) / a
    ys = -2.0 + ts * d[..., 1]
    side = np.where((disc >= 0) & (ts > 0) & (ys >= -1) & (ys <= 0), ts, np.inf)
    with np.errstate(divide="ignore"):
        tc = 1.0 / d[..., 1]
    cap = np.where((tc > 0) & ((tc * d[..., 0]) ** 2 + (tc * d[..., 2] - 3) ** 2 <= 0.25), tc, np.inf)
    want = np.minimum(side, cap)
    hit = ~np.isinf(want)
    assert np.array_equal(~out["sky_mask"], hit) and np.isfinite(cap).any()
    assert np.abs(out["depth"][hit] - want[hit]).max() <= 1e-4


def test_l_shape_and_door_openings_show_the_next_room():
    # L: box A plus a wing B overlapping it; looking along +z from inside A reaches B's far wall at z = 8
    cam = (1.0, -1.5, 1.0)
    a, b = Shell((0, -3, 0), (4, 0, 4), 0, 0, 0, 1), Shell((0, -3, 3.5), (2, 0, 8), 0, 0, 0, 1)
    out = render(Scene(seed=0, kind="indoor", camera=cam, shells=[a, b]), 64, 128)
    d = rays64(64, 128)
    i, j = 31, 64  # pixel just above the horizon, just right of lon 0: ray ~ +z
    assert abs(out["depth"][i, j] - 7.0 / d[i, j, 2]) < 1e-4
    # wall between two rooms (gap 3..3.2 in z) with a door at x in [0.5, 1.5]: a doorway shell spans the gap
    a, b = Shell((0, -3, 0), (4, 0, 3), 0, 0, 0, 1), Shell((0, -3, 3.2), (4, 0, 7), 0, 0, 0, 2)
    door = Shell((0.5, -2.1, 2.95), (1.5, 0, 3.25), 0, 0, 0, 3)
    out = render(Scene(seed=0, kind="indoor", camera=cam, shells=[a, b, door]), 64, 128)
    assert abs(out["depth"][i, j] - 6.0 / d[i, j, 2]) < 1e-4 and out["instance"][i, j] == 2
    # outside the door the wall at z = 3 is hit
    k = 40  # lon ~ -0.8 rad: x decreases fast, the ray leaves the door and hits room A's wall at z = 3
    assert abs(out["depth"][i, k] - room_depth(cam, (0, -3, 0), (4, 0, 3), d[i, k])) < 1e-4
    assert not out["sky_mask"].any()


def test_seam_is_continuous():
    out = render(make_scene(3, "indoor"), 64, 128)
    d = out["depth"]
    seam = np.abs(d[:, 0] - d[:, -1])
    # the steps between the neighbouring columns on either side of the seam (a tilted camera sees walls
    # obliquely there, so compare with the local gradient rather than with the whole image)
    near = np.maximum(np.abs(d[:, 1] - d[:, 0]), np.abs(d[:, -1] - d[:, -2]))
    assert np.median(seam) <= 2 * np.median(near) + 1e-6
    assert np.quantile(seam, 0.9) <= 2 * np.quantile(near, 0.9) + 1e-6


def test_same_seed_same_arrays_and_styles_share_geometry():
    scene = make_scene(11, "outdoor")
    a, b = render(scene, H, W, "photo"), render(make_scene(11, "outdoor"), H, W, "photo")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    c = render(scene, H, W, "clean")
    assert np.array_equal(a["depth"], c["depth"]) and np.array_equal(a["instance"], c["instance"])
    assert np.abs(a["rgb"] - c["rgb"]).mean() > 0.02
    assert not np.array_equal(render(make_scene(12, "outdoor"), H, W)["depth"], c["depth"])


def test_generated_scenes_cover_the_depth_range():
    mins, outdoor_far = [], []
    for seed in range(10):
        scene = make_scene(seed, "indoor")
        out = render(scene, H, W)
        # sky only through windows (portal shells), and never much of it
        assert out["sky_mask"].mean() < (0.15 if any(q.portal for q in scene.shells) else 1e-9), seed
        mins.append(out["depth"].min())
        o = render(make_scene(seed, "outdoor"), 64, 128)  # hills beyond 100 m are thin: not too coarse
        outdoor_far.append(o["range_mask"].mean())
        assert o["sky_mask"].any() and (o["depth"] > 100).any()
        assert np.array_equal(o["range_mask"], o["sky_mask"] | (o["depth"] > 100))
    assert min(mins) < 0.5
    assert all(0.05 < f < 0.95 for f in outdoor_far)


def test_indoor_camera_stands_like_a_tripod_in_the_open_middle_of_its_room():
    heights = []
    for seed in range(60):
        scene = make_scene(seed, "indoor")
        (x0, top, z0), (x1, _, z1) = scene.shells[0].lo, scene.shells[0].hi  # the first room
        x, y, z = scene.camera
        for c, lo, hi in ((x, x0, x1), (z, z0, z1)):
            half = (hi - lo) / 2
            assert abs(c - (lo + hi) / 2) <= 0.4 * half + 1e-9, seed  # near the centre
            assert min(c - lo, hi - c) >= min(0.6, half) - 1e-9, seed  # clear of the walls
        assert 1.1 - 1e-9 <= -y <= min(1.8, -top - 0.4) + 1e-9, seed
        heights.append(-y)
    assert 1.4 < np.median(heights) < 1.6  # most cameras about 1.5 m up


def test_scene_dict_round_trip_and_kinds():
    scene = make_scene(5, "indoor")
    again = Scene.from_dict(scene.to_dict())
    assert again == scene
    assert kind_for_seed(4, "mixed") == "indoor" and kind_for_seed(5, "mixed") == "outdoor"
    with pytest.raises(ValueError, match="indoor"):
        make_scene(0, "space")


def test_supersample_keeps_exact_geometry():
    scene = make_scene(2, "indoor")
    a, b = render(scene, H, W), render(scene, H, W, supersample=2)
    assert np.array_equal(a["depth"], b["depth"])
    assert 0 < np.abs(a["rgb"] - b["rgb"]).mean() < 0.1


def test_bad_arguments():
    with pytest.raises(NotPanoramaError, match="2:1"):
        render(make_scene(0), 32, 32)
    with pytest.raises(ValueError, match="clean"):
        render(make_scene(0), H, W, style="oil-painting")


def test_rendered_depth_matches_ray_points():
    # points = depth * ray land on the primitives: every floor pixel of a room has y == floor height
    cam, lo, hi = (1.0, -1.6, 1.0), (0.0, -2.7, 0.0), (3.0, 0.0, 4.0)
    out = render(Scene(seed=0, kind="indoor", camera=cam, shells=[Shell(lo, hi, 0, 0, 0, 1)]), H, W)
    pts = out["depth"][..., None] * rays64() + np.asarray(cam)
    floor = out["normals"][..., 1] < -0.5
    assert floor.sum() > 50 and np.abs(pts[floor][:, 1]).max() < 1e-4
    assert math.isclose(float(out["depth"].max()), float(np.linalg.norm(np.subtract((3, -2.7, 4), cam))), rel_tol=0.05)


def test_results_do_not_depend_on_the_thread_count():
    import torch

    scene, n = make_scene(9, "indoor"), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = render(scene, 64, 128, "photo")
        torch.set_num_threads(2)
        b = render(scene, 64, 128, "photo")
    finally:
        torch.set_num_threads(n)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_camera_rotation_keeps_depth_exact():
    # a hand-held camera: depth is still the distance along each pixel's (rotated) ray
    cam, lo, hi, rot = (1.3, -1.4, 2.1), (0.0, -3.0, 0.0), (4.0, 0.0, 5.0), (37.0, 6.0, -4.5)
    out = render(Scene(seed=0, kind="indoor", camera=cam, rotation=rot, shells=[Shell(lo, hi, 0, 0, 0, 1)]), H, W)
    r = rotation_matrix(*rot).numpy()
    d = rays64() @ r.T  # world direction of each pixel ray
    assert np.abs(out["depth"] - room_depth(cam, lo, hi, d)).max() <= 1e-4
    # normals stay in the camera frame: the floor's is R^T (0, -1, 0)
    floor = np.argmin(np.abs(d[..., 1] - 1))  # the pixel looking most nearly straight down
    assert np.allclose(out["normals"].reshape(-1, 3)[floor], r.T @ [0, -1, 0], atol=1e-5)


def test_turned_box_matches_analytic():
    cam, c, half, yaw, tilt = np.zeros(3), np.array([0.5, -0.3, 4.0]), np.array([1.2, 0.4, 0.7]), 0.6, -0.35
    box = Box(tuple(c - half), tuple(c + half), 0, 1, yaw=yaw, tilt=tilt)
    out = render(Scene(seed=0, kind="outdoor", camera=tuple(cam), boxes=[box]), 64, 128)
    cy, sy, ct, st = np.cos(yaw), np.sin(yaw), np.cos(tilt), np.sin(tilt)
    r = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    d = rays64(64, 128) @ r  # rays in the box frame (rows: r^T d)
    want = box_depth(r.T @ (cam - c), -half, half, d)
    hit = np.isfinite(want)
    assert np.array_equal(~out["sky_mask"], hit) and hit.sum() > 50
    assert np.abs(out["depth"][hit] - want[hit]).max() <= 1e-4


def test_window_portal_shows_what_is_outside():
    # a window cut in the wall z = 4 of a room: through it the ray reaches a facade at z = 20
    cam = (2.0, -1.5, 2.0)
    room = Shell((0, -3, 0), (4, 0, 4), 0, 0, 0, 1)
    window = Shell((1, -2.5, 3.9), (3, -0.5, 4.1), 0, 0, 0, 2, portal=True)
    facade = Box((-50, -30, 20), (50, 0, 30), 0, 3)
    out = render(Scene(seed=0, kind="indoor", camera=cam, shells=[room, window], boxes=[facade]), 64, 128)
    d = rays64(64, 128)
    i, j = 31, 64  # ray ~ +z just above the horizon: through the window
    assert abs(out["depth"][i, j] - 18.0 / d[i, j, 2]) < 1e-4 and out["instance"][i, j] == 3
    k = 40  # further left the ray leaves the window and meets the wall at z = 4 or x = 0
    assert abs(out["depth"][i, k] - room_depth(cam, (0, -3, 0), (4, 0, 4), d[i, k])) < 1e-4
    assert out["sky_mask"].any()  # the sky above the facade, seen through the window


def test_texture_bank_from_package_and_folders(tmp_path):
    tiles = load_texture_tiles()
    assert tiles.dtype == np.uint8 and tiles.shape[1:] == (TILE, TILE, 3) and len(tiles) >= 200
    assert tiles.reshape(len(tiles), -1).std(1).min() > 5  # every crop shows something
    rng = np.random.default_rng(0)
    from PIL import Image

    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (256, 512, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    write_depth(tmp_path / "b.exr", np.ones((256, 512), np.float32))  # a depth map beside its photo: no texture
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 macOS metadata")  # hidden: not a texture
    folder = load_texture_tiles([str(tmp_path)])
    assert folder.shape[1:] == (TILE, TILE, 3) and len(folder) == 2 * 16
    assert np.array_equal(folder, load_texture_tiles([str(tmp_path)]))  # deterministic
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")  # one bad photo costs its crops, not the run
    Image.fromarray(rng.integers(0, 255, (1, 4096, 3), dtype=np.uint8)).save(tmp_path / "strip.png")  # no crops
    unreadable: list[str] = []
    assert len(load_texture_tiles([str(tmp_path)], unreadable)) == 2 * 16 and unreadable == ["broken.jpg"]
    with pytest.raises(DapError, match="does not exist"):
        load_texture_tiles([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DapError, match="no images"):
        load_texture_tiles([str(tmp_path / "empty")])
    with pytest.raises(DapError, match="a.jpg is a file, not a folder"):  # was: "does not exist"
        load_texture_tiles([str(tmp_path / "a.jpg")])
    # was: "all blank or smaller than 128 pixels" for photos that could not be read at all
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DapError, match=r"give no texture: none of the 1 can be read \(x.jpg\)"):
        load_texture_tiles([str(tmp_path / "bad")])
    Image.fromarray(np.full((256, 512, 3), 128, np.uint8)).save(tmp_path / "bad" / "grey.png")
    with pytest.raises(DapError, match=r"1 of the 2 cannot be read \(x.jpg\), the others are too plain"):
        load_texture_tiles([str(tmp_path / "bad")])
    style = get_style(f"photo@{tmp_path}")
    assert style.texture_dirs == (str(tmp_path),) and style.name == "photo"
    with pytest.raises(ValueError, match="photo textures"):
        get_style(f"clean@{tmp_path}")


def test_texture_dir_option_is_repeatable():
    import argparse

    from dap.cli.synth import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--count", "1", "--out", "x", "--style", "photo", "--texture-dir", "a", "--texture-dir", "b"])
    assert args.texture_dir == ["a", "b"]
    with pytest.raises(SystemExit):  # `--texture-dir "$UNSET"` cut textures from the current folder
        p.parse_args(["--count", "1", "--out", "x", "--style", "photo", "--texture-dir", ""])


def test_texture_folders_with_any_file_or_folder_name(tmp_path, capsys):
    """A photo whose name is not UTF-8 was a UnicodeEncodeError; a folder with ':' in its path was taken for two
    folders (the dataset records them joined by ':'), used the wrong ones or failed after creating --out."""
    import os

    from PIL import Image

    from dap.cli import main

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 512, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    os.rename(tmp_path / "a.jpg", os.fsencode(tmp_path) + b"/caf\xe9.jpg")
    assert len(load_texture_tiles([str(tmp_path)])) == 16
    (tmp_path / "12:00").mkdir()
    Image.fromarray(rng.integers(0, 255, (256, 512, 3), dtype=np.uint8)).save(tmp_path / "12:00" / "b.jpg")
    code = main(["synth", "--count", "1", "--out", str(tmp_path / "out"), "--style", "photo", "--resolution",
                 "16x32", "--texture-dir", str(tmp_path / "12:00"), "--no-progress"])
    assert code == 2 and not (tmp_path / "out").exists()
    assert "12:00: a folder whose path holds ':'" in capsys.readouterr().err


def test_photo_crop_appears_on_a_wall():
    # a wall 1 m in front of the camera textured with crop 0 of the bank, one crop per metre, lit evenly:
    # its pixels follow the crop (nearest texel by the surface coordinates of each pixel)
    cam = (0.5, -1.5, 0.0)
    wall = Material("wall", 0.5, 0.5, 0.5, 0.0, scale=0.5, phase=(0.0, 0.0, 0.0), tile=0.0)
    style = Style("t", default_textures=("image",), palette="natural", ambient=1.0, light=0.0)
    room = Shell((-5, -3, -5), (5, 0, 1), 0, 0, 0, 1)
    scene = Scene(seed=0, kind="indoor", camera=cam, materials=[wall], shells=[room])
    out = render(scene, 256, 512, style)
    d = rays64(256, 512)
    p = out["depth"][..., None] * d + np.asarray(cam)
    front = (out["normals"][..., 2] < -0.99) & (np.abs(d[..., 0]) < 0.4) & (np.abs(d[..., 1]) < 0.4)
    assert front.sum() > 500
    # wall z = 1 faces -z: its coordinates are u = -x, v = y (metres; one crop per 2 * scale = 1 m)
    u, v = np.mod(-p[front][:, 0], 1.0), np.mod(p[front][:, 1], 1.0)
    crop = load_texture_tiles()[0].astype(np.float64).mean(-1)
    want = crop[(v * TILE).astype(int) % TILE, (u * TILE).astype(int) % TILE]
    got = out["rgb"][front].mean(-1)
    assert np.corrcoef(want, got)[0, 1] > 0.8


def test_outdoor_depths_reach_far():
    # streets, squares, drones, hills and mountains: a real share of the pixels beyond 20 m and beyond 100 m
    far, very_far = [], []
    for seed in range(16):
        out = render(make_scene(seed, "outdoor"), 64, 128)
        d = out["depth"]
        far.append(((d > 20) & (d <= 100)).mean())
        very_far.append((d > 100).mean())
    assert np.mean(far) > 0.1 and np.mean(very_far) > 0.02
    assert sum(f > 0.05 for f in very_far) >= 2  # not just one scene


def test_same_seed_same_panorama_any_kind_and_style():
    for kind in ("indoor", "outdoor"):
        a, b = (render(make_scene(21, kind), H, W, "photo") for _ in range(2))
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert make_scene(21, kind) == make_scene(21, kind) and make_scene(21, kind) != make_scene(22, kind)


def test_photo_style_is_the_same_whatever_the_thread_count():
    """The auto exposure's mean was a float32 sum split across threads: `dap synth --workers 1` and `--workers 2`
    (or two machines) wrote panoramas a few levels apart in some pixels."""
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(render(make_scene(6, "indoor"), 256, 512, "photo")["rgb"])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(out[0], out[1])


def test_a_texture_folder_of_many_photos_gives_a_bank_of_at_most_512_crops(tmp_path, monkeypatch):
    """One crop per image at least: 1200 photos gave 1200 crops (and every worker holds the bank), where the docs
    say about 512 in all."""
    from PIL import Image

    import dap.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "TEXTURE_BANK_SIZE", 8)  # the rule at a size a test can afford
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    tiles = load_texture_tiles([str(tmp_path)])
    assert len(tiles) == 8
    assert np.array_equal(tiles, load_texture_tiles([str(tmp_path)]))  # the same images each time
