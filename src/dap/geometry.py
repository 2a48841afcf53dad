"""Equirectangular (ERP) geometry: the only place that converts between pixels, angles, rays and points.

Conventions: height:width = 1:2, row 0 is the north pole (up), column 0 is longitude -pi and
longitude grows to the right; pixel centres sit at (i + 0.5) / H and (j + 0.5) / W.
Camera frame: x right, y down, z forward, so (lon 0, lat 0) looks along +z and lon +pi/2 along +x.
Depth is the Euclidean distance from the camera centre along the ray.

Every function takes torch tensors or numpy arrays (returned in the same kind) and broadcasts over leading
batch dimensions.

Image layout for the resampling functions (`sample_erp`, `rotate_erp`, `erp_to_cubemap`):
torch images are channel-first (..., C, H, W), numpy images channel-last (..., H, W, C); both also accept a
plain 2-D map (H, W). Results come back in the layout (and, for integer/bool images, the dtype) they came in.
Horizontal sampling wraps at the +-180 degree seam and vertical sampling continues across the poles (the row
beyond the north pole is row 0 half a turn away), so no seam or pole artefacts are introduced. Use
mode='nearest' for depth maps and masks: bilinear would blend invalid zeros into valid depths.

Rotations are given in degrees (yaw, pitch, roll) or as a (3, 3) matrix R whose columns are the rotated
camera's x, y, z axes written in the original camera frame; see `rotation_matrix`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

Array = torch.Tensor | np.ndarray


def _to_torch(x: Array) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        # a read-only array (a decoded image's, a broadcast) would be shared with torch under a UserWarning
        return torch.from_numpy(a if a.flags.writeable else a.copy()), True
    return x, False


def _depth_tensor(depth: Array) -> tuple[torch.Tensor, bool]:
    """A distance map as a floating-point tensor: integer depth (millimetres in a uint16, say) would give integer
    rays, all 0."""
    d, was_numpy = _to_torch(depth)
    return (d if d.is_floating_point() else d.to(torch.float32)), was_numpy


def _back(x: torch.Tensor, was_numpy: bool) -> Array:
    return x.numpy() if was_numpy else x


def erp_lonlat(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Longitude and latitude (radians) of every pixel centre, each (H, W)."""
    rows = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width
    lat = (0.5 - rows) * math.pi
    lon = cols * (2 * math.pi) - math.pi
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    return lon.to(dtype), lat.to(dtype)


def lonlat_to_rays(lon: Array, lat: Array) -> Array:
    """Unit ray directions (..., 3) for longitudes/latitudes in radians."""
    lon_t, was_numpy = _to_torch(lon)
    lat_t, _ = _to_torch(lat)
    cos_lat = torch.cos(lat_t)
    rays = torch.stack((cos_lat * torch.sin(lon_t), -torch.sin(lat_t), cos_lat * torch.cos(lon_t)), dim=-1)
    return _back(rays, was_numpy)


def rays_to_lonlat(rays: Array) -> tuple[Array, Array]:
    """Longitude in (-pi, pi] (atan2: -pi itself comes back as pi) and latitude in [-pi/2, pi/2] of (..., 3)
    directions (need not be unit)."""
    r, was_numpy = _to_torch(rays)
    x, y, z = r.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(-y, torch.sqrt(x * x + z * z))
    return _back(lon, was_numpy), _back(lat, was_numpy)


def erp_rays(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit ray direction of every ERP pixel centre, (H, W, 3)."""
    lon, lat = erp_lonlat(height, width, device=device, dtype=torch.float64)
    return lonlat_to_rays(lon, lat).to(dtype)


def lonlat_to_pixel(lon: Array, lat: Array, height: int, width: int) -> tuple[Array, Array]:
    """Continuous pixel coordinates (u = column, v = row) with pixel centres at integer + 0.5 - 0.5,
    i.e. u = j and v = i exactly at the centre of pixel (i, j)."""
    u = (lon + math.pi) / (2 * math.pi) * width - 0.5
    v = (0.5 - lat / math.pi) * height - 0.5
    return u, v


def depth_to_points(depth: Array) -> Array:
    """3-D points (..., H, W, 3) in the camera frame from a distance map (..., H, W); float32 for integer depth."""
    d, was_numpy = _depth_tensor(depth)
    if d.ndim < 2:
        raise ValueError(f"depth_to_points expects a distance map of shape (..., H, W), got shape {tuple(d.shape)}")
    rays = erp_rays(d.shape[-2], d.shape[-1], device=d.device, dtype=d.dtype)
    return _back(d.unsqueeze(-1) * rays, was_numpy)


def check_erp_shape(height: int, width: int, what: str = "image", *, paddable: bool = True) -> None:
    """Raise NotPanoramaError unless (height, width) is a 2:1 equirectangular size. `paddable`: the caller offers
    --pad-to-erp (dap predict, dap curate ingest, the Python API), which the message then suggests for a wide image;
    a benchmark or training sample has no such option."""
    from dap.errors import NotPanoramaError

    if width == 2 * height and height > 0:
        return
    if height <= 0 or width <= 0:
        raise NotPanoramaError(f"{what} is {width}x{height} (width x height): it has no pixels; an equirectangular "
                               "panorama is 2:1 and at least 2x1")
    cubemap = " convert the cubemap to an equirectangular panorama first (dap reads only that projection)."
    if 6 * min(height, width) == max(height, width):
        hint = " Six square faces in a row look like a cubemap strip:" + cubemap
    elif 3 * max(height, width) == 4 * min(height, width):
        hint = " Four by three square faces look like a cubemap cross:" + cubemap
    elif height == 2 * width:
        hint = " It is 1:2, as a panorama turned by 90 degrees would be: rotate it upright."
    elif height == width:
        hint = (" A square image may be a stereo (over-under) 360-degree panorama, two 2:1 views one above the "
                "other: crop the top half. Otherwise it is not a 360-degree panorama as it stands.")
    elif width == 4 * height:
        hint = (" It may be a stereo (side-by-side) 360-degree panorama, two 2:1 views next to each other: crop the "
                "left half; or a partial panorama covering +-45 degrees of latitude: "
                + ("use --pad-to-erp (pad_to_erp=True in Python)." if paddable else "pad it to 2:1 with black rows."))
    elif abs(width - 2 * height) <= 0.03 * 2 * height:
        hint = " It is within 3% of that: resize it to exactly 2:1."
    elif width > 2 * height:
        hint = (" Crop or resize it to 2:1, or "
                + ("use --pad-to-erp (pad_to_erp=True in Python)" if paddable else "pad it with black rows to 2:1")
                + " for a partial panorama that covers less than the full latitude range.")
    else:  # narrower than 2:1: an ordinary photograph, or a panorama saved at the wrong size
        hint = (" Narrower than 2:1, it is not a 360-degree panorama as it stands: an ordinary photograph has no "
                "view all around to give depth for; resize it to 2:1 only if it is a 360-degree panorama saved at "
                "the wrong size.")
    raise NotPanoramaError(
        f"{what} is {width}x{height} (width x height) but an equirectangular panorama must be exactly 2:1 (e.g. "
        f"{2 * height}x{height}).{hint}"
    )


def looks_dual_fisheye(rgb: np.ndarray, black: float = 0.03, lit: float = 0.06) -> bool:
    """Whether a 2:1 image looks like the unstitched output of a two-lens 360 camera (two fisheye discs side by
    side on black) rather than an equirectangular panorama. Each disc touches the top and bottom edges at a quarter
    and three quarters of the width, with black frame between and beside the discs; in an equirectangular image
    the top row is all one direction (the zenith) and the bottom row the nadir, so each row is one colour. True when
    the top and bottom rows are black (< `black`, mean of [0, 1] RGB) at their ends and middle and brighter than
    `lit` at both quarter points. rgb: float (H, W, 3) in [0, 1]."""
    h, w = rgb.shape[:2]
    if w != 2 * h or h < 8:
        return False
    k = max(1, h // 64)
    for rows in (slice(0, k), slice(h - k, h)):
        band = rgb[rows].mean(axis=(0, 2))
        level = [float(band[max(0, x - k):x + k + 1].mean()) for x in (0, w // 4, w // 2, 3 * w // 4, w - 1)]
        if max(level[0], level[2], level[4]) >= black or min(level[1], level[3]) <= lit:
            return False
    return True


MIN_TILT_WIDTH = 256  # narrower panoramas are not judged: enlarged to 1024, a thumbnail's noise reads as edges


def _tilt_sized(rgb: np.ndarray) -> np.ndarray:
    """The float32 panorama the tilt is fitted on: 1024x512 whatever its size. The fit needs edges, not detail;
    and on a coarser grid the 3x3 gradients lean more (the real panoramas at 512 wide: up to 14 degrees where
    1024 and 2048 wide agree on 5; enlarged to 1024 first, 7), so a small panorama would be judged tilted."""
    import cv2

    image = np.ascontiguousarray(rgb, dtype=np.float32)
    if image.shape[:2] != (512, 1024):
        smaller = image.shape[1] > 1024
        image = cv2.resize(image, (1024, 512), interpolation=cv2.INTER_AREA if smaller else cv2.INTER_LINEAR)
    return image


def level_panorama(rgb: np.ndarray, rotation: torch.Tensor) -> np.ndarray:
    """The float32 RGB panorama a level camera would have taken of `rgb`, whose camera `level_rotation` found at
    `rotation`: `rotate_erp(rgb, rotation.T)`, held to [0, 1] against float rounding."""
    return np.clip(np.asarray(rotate_erp(rgb, rotation.T), dtype=np.float32), 0.0, 1.0)


def camera_tilt(rgb: np.ndarray, band_deg: float = 30.0, min_edges: int = 200) -> tuple[float, float] | None:
    """(pitch, roll) in degrees (`rotation_matrix`'s conventions) of the camera that took an equirectangular
    panorama, relative to level, from how near-vertical edges lean around the horizon; None when fewer than
    `min_edges` edge pixels qualify (open landscapes without verticals: it cannot judge) or the panorama is
    narrower than `MIN_TILT_WIDTH`.

    A level camera images every world-vertical line as a vertical ERP column. Tilted by a small rotation, a
    vertical line at longitude lon near the equator leans by s = a cos(lon) - c sin(lon) columns per row (ERP
    pixels are square in angle), with a = -tan(roll) and c = tan(pitch). Each strong, near-vertical edge pixel
    measures s = gy / gx; a gradient-weighted, reweighted least-squares fit over the |latitude| < band_deg rows
    gives (a, c). First order in the tilt: `level_rotation` refits on the levelled image."""
    import cv2

    if rgb.shape[1] < MIN_TILT_WIDTH:
        return None
    image = _tilt_sized(rgb)
    h, w = image.shape[:2]
    lat = (0.5 - (np.arange(h) + 0.5) / h) * 180.0
    rows = np.flatnonzero(np.abs(lat) < band_deg)
    if rows.size * w < min_edges:  # a panorama a few pixels high has no rows in the band, or too few pixels
        return None
    # Only the band's rows (and one beyond each side for the 3x3 kernels): a third of the image's work
    top, bottom = max(0, rows[0] - 1), min(h, rows[-1] + 2)
    grey = cv2.cvtColor(image[top:bottom], cv2.COLOR_RGB2GRAY)
    inner = slice(rows[0] - top, rows[-1] + 1 - top)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)[inner]
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)[inner]
    lon = np.broadcast_to(((np.arange(w) + 0.5) / w - 0.5) * 2 * math.pi, gx.shape)
    mag2 = gx * gx + gy * gy
    strong = mag2 > np.quantile(mag2, 0.9)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = gy / gx
    keep = strong & (np.abs(gx) > 1e-6) & (np.abs(s) < 0.5)
    if keep.sum() < min_edges:
        return None
    s, lon, wgt = s[keep], lon[keep], np.sqrt(mag2[keep])
    design = np.stack([np.cos(lon), -np.sin(lon)], axis=1)
    for _ in range(3):  # reweighted: edges that do not fit (texture, slanted objects) lose influence
        sw = np.sqrt(wgt)
        (a, c), *_ = np.linalg.lstsq(design * sw[:, None], s * sw, rcond=None)
        resid = np.abs(design @ np.array([a, c]) - s)
        wgt = np.sqrt(mag2[keep]) / (1.0 + (resid / 0.05) ** 2)
    return math.degrees(math.atan(c)), -math.degrees(math.atan(a))


def tilt_angle(rgb: np.ndarray) -> float:
    """How far from level, in degrees, the camera that took `rgb` was (`camera_tilt`'s pitch and roll as one
    angle); NaN when the panorama has too few vertical edges to judge (open landscapes)."""
    tilt = camera_tilt(rgb)
    if tilt is None:
        return math.nan
    return math.degrees(math.atan(math.hypot(*(math.tan(math.radians(t)) for t in tilt))))


def level_rotation(rgb: np.ndarray, fits: int = 5, settled: float = 0.5) -> torch.Tensor | None:
    """The rotation R (3, 3, float64) of the camera that took `rgb` relative to level, so that
    `rotate_erp(rgb, R.T)` is the panorama a level camera would have taken and `rotate_erp(x, R)` takes a map of
    the levelled panorama back to `rgb`'s frame. `camera_tilt` is first order, so it is refitted on the image
    levelled so far until a fit moves it less than `settled` degrees; None when that does not happen within `fits`
    fits (edges that do not follow the world's vertical: the fits wander instead of closing in) or when the tilt
    cannot be judged at all."""
    if rgb.shape[1] < MIN_TILT_WIDTH:  # as camera_tilt: enlarged, a thumbnail's noise would read as edges
        return None
    image = _tilt_sized(rgb)  # once, not at every fit
    rotation = torch.eye(3, dtype=torch.float64)
    levelled = image
    for _ in range(fits):
        tilt = camera_tilt(levelled)
        if tilt is None:
            return None
        rotation = rotation_matrix(pitch=tilt[0], roll=tilt[1]) @ rotation
        if math.hypot(*tilt) < settled:
            return rotation
        levelled = np.asarray(rotate_erp(image, rotation.T), dtype=np.float32)
    return None


def floor_and_ceiling(depth: Array, valid: Array | None = None, *, band_deg: tuple[float, float] = (25.0, 70.0),
                      min_columns: float = 0.25) -> tuple[float, float]:
    """Vertical distance (metres) from the camera down to the floor and up to the ceiling, from a (H, W) distance
    map of a roughly level camera, as (floor, ceiling).

    Per column, the largest drop below the camera among the pixels between band_deg[0] and band_deg[1] below the
    horizon (furniture and walls only come nearer than the floor, so the largest drop is the floor), then the
    median over columns, which also cancels a small camera tilt to first order; the ceiling likewise above the
    horizon. The band leaves out the poles, where a tripod or a stitching seam usually is. A value is NaN when
    fewer than `min_columns` of the columns have a valid pixel in its band (an open sky has no ceiling).
    valid: (H, W) bool, pixels to use; default: finite, positive depth."""
    d = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, np.float64)
    if d.ndim != 2:
        raise ValueError(f"floor_and_ceiling takes one (H, W) depth map, got shape {d.shape}")
    ok = np.isfinite(d) & (d > 0)
    if valid is not None:
        ok &= np.asarray(valid.detach().cpu() if isinstance(valid, torch.Tensor) else valid, bool)
    lat = (0.5 - (np.arange(d.shape[0]) + 0.5) / d.shape[0]) * math.pi
    lo, hi = (math.radians(a) for a in band_deg)
    rise = np.where(ok, d * np.sin(lat)[:, None], np.nan)  # height above the camera (negative below it)
    out = []
    for rows, sign in (((lat <= -lo) & (lat >= -hi), -1.0), ((lat >= lo) & (lat <= hi), 1.0)):
        band = sign * rise[rows]
        seen = np.isfinite(band).any(axis=0)
        if not rows.any() or seen.mean() < min_columns:
            out.append(math.nan)
            continue
        out.append(float(np.median(np.nanmax(band[:, seen], axis=0))))
    return out[0], out[1]


# ------------------------------------------------------------------------------ normals, solid angles


def normals_from_depth(depth: Array) -> Array:
    """Unit surface normals (..., H, W, 3) in the camera frame from a distance map (..., H, W).

    Tangents are differences of the 3-D points: central where both neighbours are valid, one-sided where only
    one is. Columns wrap (column -1 is column W-1), so the seam is treated like any other column. Rows 0 and
    H-1 have no neighbour beyond the pole row and use the one-sided difference towards the equator; there the
    horizontal tangent is short but nonzero, so no NaN appears. Normals point towards the camera
    (dot(normal, ray) <= 0). Invalid depth (<= 0) or a pixel with no valid neighbour in a direction gives 0.
    """
    d, was_numpy = _depth_tensor(depth)
    points = depth_to_points(d)
    valid = d > 0

    # Horizontal neighbours wrap around the sphere.
    du = _tangent(points, valid, torch.roll(points, -1, -2), torch.roll(valid, -1, -1),
                  torch.roll(points, 1, -2), torch.roll(valid, 1, -1))
    # Vertical neighbours stop at the poles: the missing row is marked invalid.
    no_row = torch.zeros_like(valid[..., :1, :])
    dv = _tangent(points, valid,
                  torch.cat((points[..., 1:, :, :], points[..., -1:, :, :]), -3),
                  torch.cat((valid[..., 1:, :], no_row), -2),
                  torch.cat((points[..., :1, :, :], points[..., :-1, :, :]), -3),
                  torch.cat((no_row, valid[..., :-1, :]), -2))
    n = torch.linalg.cross(du, dv)
    # Orient towards the camera: the camera is at the origin, so flip where n points along the point.
    flip = (n * points).sum(-1, keepdim=True) > 0
    n = torch.where(flip, -n, n)
    norm = torch.linalg.vector_norm(n, dim=-1, keepdim=True)
    good = valid.unsqueeze(-1) & (norm > 0)
    n = torch.where(good, n / torch.where(good, norm, torch.ones_like(norm)), torch.zeros_like(n))
    return _back(n, was_numpy)


def _tangent(p: torch.Tensor, ok: torch.Tensor, p_next: torch.Tensor, ok_next: torch.Tensor,
             p_prev: torch.Tensor, ok_prev: torch.Tensor) -> torch.Tensor:
    """Central difference where both neighbours are valid, else a one-sided one, else 0."""
    fwd = (ok & ok_next).unsqueeze(-1)
    bwd = (ok & ok_prev).unsqueeze(-1)
    zero = torch.zeros_like(p)
    return torch.where(fwd & bwd, p_next - p_prev,
                       torch.where(fwd, p_next - p, torch.where(bwd, p - p_prev, zero)))


def solid_angle_weights(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Exact solid angle (steradians) of one pixel in each ERP row, (H, 1); broadcasts against (H, W).

    A pixel of row i spans latitudes [lat_bottom, lat_top], so its area is (2 pi / W)(sin lat_top -
    sin lat_bottom); all H x W pixels sum to 4 pi.
    """
    edges = (0.5 - torch.arange(height + 1, device=device, dtype=torch.float64) / height) * math.pi
    w = (2 * math.pi / width) * (torch.sin(edges[:-1]) - torch.sin(edges[1:]))
    return w.to(dtype).unsqueeze(-1)


# ------------------------------------------------------------------------------------------ rotations


def rotation_matrix(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> torch.Tensor:
    """Camera rotation R (3, 3, float64) from angles in degrees: R = R_y(yaw) @ R_x(pitch) @ R_z(roll).

    The columns of R are the rotated camera's x, y, z axes in the original frame; a ray d of the rotated
    camera is R @ d in the original one.
    - yaw about the vertical y axis: positive yaw turns the view to the right (forward moves towards +x), so
      the panorama content moves to the left.
    - pitch about x: positive pitch looks up (forward moves towards -y).
    - roll about z: positive roll turns the camera's x axis towards +y (down).
    """
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    ry = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]], dtype=torch.float64)
    rz = torch.tensor([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return ry @ rx @ rz


def look_rotation(forward: Array) -> torch.Tensor:
    """Rotation (3, 3, float64) of a camera whose z axis looks along `forward`, with no roll.

    The camera's y axis stays in the vertical plane, pointing down; looking straight up or down (where "down"
    is undefined) the image bottom points towards +z when looking up and towards -z when looking down,
    the same as pitching the identity camera by +-90 degrees.
    """
    z, _ = _to_torch(forward)
    z = z.to(device="cpu", dtype=torch.float64).reshape(3)
    z = z / torch.linalg.vector_norm(z)
    down = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    if abs(float(z[1])) > 1 - 1e-9:
        down = torch.tensor([0.0, 0.0, -float(torch.sign(z[1]))], dtype=torch.float64)
    x = torch.linalg.cross(down, z)
    x = x / torch.linalg.vector_norm(x)
    y = torch.linalg.cross(z, x)
    return torch.stack((x, y, z), dim=-1)


def _rotation(rotation: Array | None, yaw: float, pitch: float, roll: float) -> torch.Tensor:
    if rotation is None:
        return rotation_matrix(yaw, pitch, roll)
    if yaw or pitch or roll:
        raise ValueError("Pass either a rotation matrix or yaw/pitch/roll angles, not both.")
    r, _ = _to_torch(rotation)
    if r.shape != (3, 3):
        raise ValueError(f"A rotation must be a (3, 3) matrix, got shape {tuple(r.shape)}.")
    return r.to(device="cpu", dtype=torch.float64)


# ----------------------------------------------------------------------------------------- resampling


def _images_in(image: Array) -> tuple[torch.Tensor, dict]:
    """(N, C, H, W) float view of an image in either layout, plus what is needed to restore it."""
    x, was_numpy = _to_torch(image)
    plain = x.ndim == 2
    if plain:
        x = x[None, None]
    elif was_numpy:
        x = torch.movedim(x, -1, -3)
    lead = x.shape[:-3]
    info = {"numpy": was_numpy, "plain": plain, "lead": lead, "dtype": x.dtype}
    x = x.reshape(-1, *x.shape[-3:])
    if not x.is_floating_point():
        x = x.float()
    return x, info


def _images_out(y: torch.Tensor, info: dict, ndim_spatial: int) -> Array:
    """Inverse of `_images_in` for a sampled (N, C, *S) result with `ndim_spatial` dims in S."""
    dtype = info["dtype"]
    if dtype == torch.bool:
        y = y > 0.5
    elif not dtype.is_floating_point:
        y = y.round().to(dtype)
    spatial = y.shape[2:]
    if info["plain"]:
        y = y.reshape(spatial)
    else:
        y = y.reshape(*info["lead"], y.shape[1], *spatial)
        if info["numpy"]:
            y = torch.movedim(y, -ndim_spatial - 1, -1)
    return _back(y.contiguous() if info["numpy"] else y, info["numpy"])


def _check_mode(mode: str) -> None:
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}.")


def _padded_grid(u: torch.Tensor, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`grid_sample` coordinates (1, 1, S, 2) of continuous pixel coords u, v in the image `_sample_padded` pads."""
    gx = (u.reshape(-1) + 1) / (width + 1) * 2 - 1
    gy = (v.reshape(-1) + 1) / (height + 1) * 2 - 1
    return torch.stack((gx, gy), -1).reshape(1, 1, -1, 2)


def _sample_padded(x: torch.Tensor, grid: torch.Tensor, shape: tuple[int, ...], mode: str) -> torch.Tensor:
    """Sample (N, C, H, W) ERP images at `_padded_grid` coordinates -> (N, C, *shape)."""
    n = x.shape[0]
    w = x.shape[-1]
    # One extra row beyond each pole (the same row half a turn away) and one wrapped column on each side.
    top = torch.roll(x[..., :1, :], w // 2, -1)
    bottom = torch.roll(x[..., -1:, :], w // 2, -1)
    x = torch.cat((top, x, bottom), -2)
    x = torch.cat((x[..., -1:], x, x[..., :1]), -1)
    grid = grid.to(device=x.device, dtype=x.dtype).expand(n, -1, -1, -1)
    y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=True)
    return y.reshape(n, y.shape[1], *shape)


def sample_erp(image: Array, rays: Array, mode: str = "bilinear") -> Array:
    """Sample an ERP image along arbitrary camera-frame directions `rays` (*S, 3) (need not be unit).

    torch (..., C, H, W) -> (..., C, *S); numpy (..., H, W, C) -> (..., *S, C); a 2-D map (H, W) -> (*S).
    Longitude wraps and sampling continues across the poles.
    """
    _check_mode(mode)
    x, info = _images_in(image)
    r, _ = _to_torch(rays)
    lon, lat = rays_to_lonlat(r.to(device=x.device, dtype=torch.float64))
    u, v = lonlat_to_pixel(lon, lat, x.shape[-2], x.shape[-1])
    return _images_out(_sample_padded(x, _padded_grid(u, v, x.shape[-2], x.shape[-1]), u.shape, mode), info,
                       r.ndim - 1)


def rotate_erp(
    image: Array,
    rotation: Array | None = None,
    *,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    mode: str = "bilinear",
) -> Array:
    """The panorama seen by the camera rotated by `rotation` (or by yaw/pitch/roll degrees).

    Output pixel with ray d takes the input value along R @ d. Values are not changed, which is right for
    colours and distances (use mode='nearest' for depth and masks); vector maps (normals, points) also need
    their values rotated: v_new = R.T @ v.
    """
    _check_mode(mode)
    r = _rotation(rotation, yaw, pitch, roll)
    x, info = _images_in(image)
    h, w = x.shape[-2:]
    return _images_out(_sample_padded(x, _rotated_grid(h, w, tuple(r.reshape(-1).tolist())), (h, w), mode), info, 2)


@functools.lru_cache(maxsize=2)
def _rotated_grid(height: int, width: int, rotation: tuple[float, ...]) -> torch.Tensor:
    """`_padded_grid` of `rotate_erp`: where each output pixel reads the input. Cached: a training sample rotates
    its RGB, depth and masks by the same rotation, and these float64 rays and arctangents cost more than the
    sampling."""
    r = torch.tensor(rotation, dtype=torch.float64).reshape(3, 3)
    lon, lat = rays_to_lonlat(_erp_rays64(height, width) @ r.T)
    return _padded_grid(*lonlat_to_pixel(lon, lat, height, width), height, width)


@functools.lru_cache(maxsize=2)
def _erp_rays64(height: int, width: int) -> torch.Tensor:
    """`erp_rays` in float64, kept for `_rotated_grid`, which only reads it: every rotation starts from them."""
    return erp_rays(height, width, dtype=torch.float64)


# -------------------------------------------------------------------------------- perspective, cubemap


def perspective_rays(
    fov_deg: float,
    size: int | tuple[int, int],
    rotation: Array | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit rays (h, w, 3) of a pinhole camera with horizontal field of view `fov_deg`, size int or (h, w).

    The virtual camera uses the same axes (x right, y down, z forward, pixel centres at +0.5) and is turned by
    `rotation` (see `rotation_matrix`, `look_rotation`); rays are returned in the panorama's camera frame.
    """
    h, w = (size, size) if isinstance(size, int) else size
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    ys = (torch.arange(h, device=device, dtype=torch.float64) + 0.5 - h / 2) / f
    xs = (torch.arange(w, device=device, dtype=torch.float64) + 0.5 - w / 2) / f
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    rays = torch.stack((x, y, torch.ones_like(x)), -1)
    rays = rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)
    if rotation is not None:
        r, _ = _to_torch(rotation)
        rays = rays @ r.to(device=rays.device, dtype=torch.float64).T
    return rays.to(dtype)


#: Cubemap face order: the axis each face looks along.
CUBE_FACES = ("+x", "-x", "+y", "-y", "+z", "-z")
_CUBE_AXES = ((1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0),
              (0.0, 0.0, -1.0))


def cubemap_rotations() -> torch.Tensor:
    """(6, 3, 3) rotations of the cubemap faces, `look_rotation` of each axis in `CUBE_FACES` order.

    Side faces (+x, -x, +z, -z) stand upright (image down = +y); the +y (floor) face has its bottom edge
    towards -z and the -y (ceiling) face its bottom edge towards +z, i.e. each face is the view after turning
    the head from the +z view by yaw (+x: 90, -x: -90, -z: 180) or pitch (+y: -90, -y: +90).
    """
    return torch.stack([look_rotation(torch.tensor(a)) for a in _CUBE_AXES])


def cubemap_face_rays(
    face_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit rays (6, F, F, 3) of the six 90-degree cube faces (order, orientation: `cubemap_rotations`)."""
    return torch.stack([perspective_rays(90.0, face_size, r, device=device, dtype=dtype)
                        for r in cubemap_rotations()])


def erp_to_cubemap(image: Array, face_size: int, mode: str = "bilinear") -> Array:
    """Six cube faces from an ERP image: torch (..., C, H, W) -> (..., 6, C, F, F), numpy (..., H, W, C) ->
    (..., 6, F, F, C), 2-D map (H, W) -> (6, F, F)."""
    x, _ = _to_torch(image)
    faces = sample_erp(image, cubemap_face_rays(face_size, device=x.device, dtype=torch.float64), mode)
    if isinstance(faces, torch.Tensor) and x.ndim > 2:
        faces = torch.movedim(faces, -4, -3)
    return faces


def icosahedron_vertices(
    *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The 12 vertices of a regular icosahedron as unit vectors (12, 3): cyclic permutations of
    (0, +-1, +-phi), normalised. Each vertex has 5 nearest neighbours, all at the same distance."""
    phi = (1 + math.sqrt(5)) / 2
    verts = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            verts += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    v = torch.tensor(verts, dtype=torch.float64, device=device)
    return (v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)).to(dtype)
