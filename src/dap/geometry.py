"""Equirectangular (ERP) geometry: the only place that converts between pixels, angles, rays and points.

Conventions (see DESIGN.md): height:width = 1:2, row 0 is the north pole (up), column 0 is longitude -pi and
longitude grows to the right; pixel centres sit at (i + 0.5) / H and (j + 0.5) / W.
Camera frame: x right, y down, z forward, so (lon 0, lat 0) looks along +z and lon +pi/2 along +x.
Depth is the Euclidean distance from the camera centre along the ray.

Every function takes torch tensors or numpy arrays (returned in the same kind) and broadcasts over leading
batch dimensions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def _to_torch(x: Array) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    return x, False


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
    """Longitude in [-pi, pi) and latitude in [-pi/2, pi/2] of (..., 3) directions (need not be unit)."""
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
    """3-D points (..., H, W, 3) in the camera frame from a distance map (..., H, W)."""
    d, was_numpy = _to_torch(depth)
    rays = erp_rays(d.shape[-2], d.shape[-1], device=d.device, dtype=d.dtype)
    return _back(d.unsqueeze(-1) * rays, was_numpy)


def check_erp_shape(height: int, width: int, what: str = "image") -> None:
    """Raise NotPanoramaError unless (height, width) is a 2:1 equirectangular size."""
    from dap.errors import NotPanoramaError

    if width != 2 * height:
        raise NotPanoramaError(
            f"{what} is {width}x{height} (width x height) but an equirectangular panorama must be exactly 2:1 "
            f"(e.g. {2 * height}x{height}). Crop or resize it to 2:1, or use --pad-to-erp for a partial "
            "panorama that covers less than the full latitude range."
        )
