"""Procedural synthetic panoramas with exact metric depth (`dap synth`).

A scene is drawn from a seed (`make_scene`) as a plain dataclass of analytic primitives, then `render`
ray-casts one ERP ray per pixel against all of them with vectorised torch code (closest hit wins).

World frame = camera frame axes (x right, y down, z forward); the ground is the plane y = 0, so heights are
negative y. Primitives:
  * `Box`      solid axis-aligned box, seen from outside (furniture, buildings, roads, kerbs);
  * `Shell`    axis-aligned box seen from inside (rooms). Shells form a union: a shell's wall is not drawn
               where it lies strictly inside another shell, which gives L-shapes (overlapping shells) and
               doors (a small "doorway" shell spanning the wall gap between two rooms);
  * `Cylinder` vertical, capped (legs, trunks, poles, pillars);
  * `Sphere`   solid, or `inside=True` for a dome around the camera (canopies, balls, distant hills);
  * `Plane`    horizontal ground hit from above. Rays that hit nothing are sky.

Appearance is split from geometry: a `Material` stores only random draws in [0, 1) and the `Style`
(texture set, palette, lighting, exposure, noise, blur, JPEG, grading) turns them into colours and
patterns, so the "clean" and "photo" presets share exactly the same geometry distribution.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import io
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dap.errors import DapError
from dap.geometry import check_erp_shape, erp_rays, lonlat_to_pixel, rotation_matrix
from dap.io import REC709_LUMA, atomic_write

MAX_RANGE = 100.0  # metres; farther hits and sky form the range mask
EPS = 1e-4  # smallest accepted ray distance (metres)
KINDS = ("indoor", "outdoor")
RENDERER_VERSION = 3  # bump whenever the pixels for a given seed change: resuming a dataset checks it

Vec3 = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Material:
    """Random draws in [0, 1) that a `Style` maps to colours and a texture; `role` picks the palette.
    `outdoor` materials are lit by daylight even in an indoor scene (what is seen through a window); `emit`
    ones glow (lamp fittings)."""

    role: str
    hue: float
    sat: float
    val: float
    pattern: float
    scale: float = 1.0  # texture period, metres
    phase: Vec3 = (0.0, 0.0, 0.0)  # texture offset, metres
    tile: float = 0.0  # which photo crop of the texture bank
    outdoor: bool = False
    emit: bool = False  # a light fitting: drawn bright whatever the lighting


@dataclass(frozen=True)
class Box:
    """Solid box [lo, hi], turned by `tilt` about its own x axis, then by `yaw` about the vertical axis, both
    through its centre (radians; yaw > 0 turns +z towards +x)."""

    lo: Vec3
    hi: Vec3
    material: int
    instance: int
    yaw: float = 0.0
    tilt: float = 0.0


@dataclass(frozen=True)
class Shell:
    """Room box seen from inside. A `portal` shell is never drawn: it only cuts its cross-section out of the
    walls of the shells it overlaps (a window with the outdoors behind it)."""

    lo: Vec3
    hi: Vec3
    wall: int
    floor: int
    ceiling: int
    instance: int
    portal: bool = False


@dataclass(frozen=True)
class Cylinder:
    x: float
    z: float
    radius: float
    top: float  # y of the top cap (smaller y: y points down)
    bottom: float
    material: int
    instance: int


@dataclass(frozen=True)
class Sphere:
    center: Vec3
    radius: float
    material: int
    instance: int
    inside: bool = False


@dataclass(frozen=True)
class Plane:
    y: float
    material: int
    instance: int


@dataclass
class Scene:
    """Everything `render` needs. `light` is a point light position (indoor, `point_light`) or the unit
    direction towards the sun (outdoor); it casts shadows. `lamps` are further point lights without shadows.
    `rotation` = camera (yaw, pitch, roll) in degrees, `dap.geometry.rotation_matrix`: pixel rays are
    R @ ray, so depth stays the distance along each pixel's ray."""

    seed: int
    kind: str
    camera: Vec3
    light: Vec3 = (0.3, -0.8, 0.5)
    point_light: bool = False
    layout: str = "custom"
    materials: list[Material] = field(default_factory=lambda: [Material("wall", 0.5, 0.5, 0.5, 0.0)])
    shells: list[Shell] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    cylinders: list[Cylinder] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)
    planes: list[Plane] = field(default_factory=list)
    rotation: Vec3 = (0.0, 0.0, 0.0)
    lamps: list[Vec3] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        def items(kind, key):
            return [kind(**{k: tup(v) for k, v in item.items()}) for item in d.get(key, [])]

        return cls(seed=d["seed"], kind=d["kind"], camera=tup(d["camera"]), light=tup(d["light"]),
                   point_light=d["point_light"], layout=d["layout"], materials=items(Material, "materials"),
                   shells=items(Shell, "shells"), boxes=items(Box, "boxes"),
                   cylinders=items(Cylinder, "cylinders"), spheres=items(Sphere, "spheres"),
                   planes=items(Plane, "planes"), rotation=tup(d.get("rotation", [0.0, 0.0, 0.0])),
                   lamps=[tup(v) for v in d.get("lamps", [])])

    @property
    def num_primitives(self) -> int:
        return len(self.shells) + len(self.boxes) + len(self.cylinders) + len(self.spheres) + len(self.planes)


class _Builder:
    def __init__(self, seed: int, kind: str):
        self.rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        self.scene = Scene(seed=seed, kind=kind, camera=(0.0, 0.0, 0.0), materials=[])
        self._instance = 0

    def material(self, role: str, scale: tuple[float, float] = (0.3, 1.5), outdoor: bool = False,
                 emit: bool = False) -> int:
        r = self.rng
        self.scene.materials.append(Material(role, *(float(v) for v in r.random(4)),
                                             scale=float(r.uniform(*scale)),
                                             phase=tuple(float(v) for v in r.uniform(0, 10, 3)),
                                             tile=float(r.random()), outdoor=outdoor, emit=emit))
        return len(self.scene.materials) - 1

    def instance(self) -> int:
        self._instance += 1
        return self._instance

    def box(self, lo, hi, material: int, instance: int | None = None) -> None:
        self.scene.boxes.append(Box(_v(lo), _v(hi), material, instance or self.instance()))

    def part(self, origin: tuple[float, float, float], yaw: float, center, size, material: int, instance: int,
             tilt: float = 0.0) -> None:
        """A box of `size` centred at `center` in an object frame (x width, y down, z depth) placed at `origin`
        (x, y, z) and turned by `yaw`: composite furniture, cars and houses at any heading."""
        c, s = math.cos(yaw), math.sin(yaw)
        x = origin[0] + c * center[0] + s * center[2]
        z = origin[2] - s * center[0] + c * center[2]
        y = origin[1] + center[1]
        h = np.asarray(size, dtype=np.float64) / 2
        if tilt == 0 and abs(math.sin(2 * yaw)) < 1e-9:  # a quarter turn: an axis-aligned box, cheaper to cast
            h, yaw = (h[[2, 1, 0]] if abs(c) < 0.5 else h), 0.0
        self.scene.boxes.append(Box(_v((x - h[0], y - h[1], z - h[2])), _v((x + h[0], y + h[1], z + h[2])),
                                    material, instance, float(yaw), float(tilt)))

    def cylinder(self, x, z, radius, top, bottom, material: int, instance: int | None = None) -> None:
        self.scene.cylinders.append(Cylinder(float(x), float(z), float(radius), float(top), float(bottom),
                                             material, instance or self.instance()))

    def sphere(self, center, radius, material: int, instance: int | None = None) -> None:
        self.scene.spheres.append(Sphere(_v(center), float(radius), material, instance or self.instance()))


def _v(x) -> Vec3:
    return (float(x[0]), float(x[1]), float(x[2]))


def make_scene(seed: int, kind: str = "indoor") -> Scene:
    """A random scene fully determined by (seed, kind). kind: 'indoor' or 'outdoor'."""
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; use one of {', '.join(KINDS)}")
    b = _Builder(seed, kind)
    (_indoor if kind == "indoor" else _outdoor)(b)
    _drop_solids_around_camera(b.scene)
    return b.scene


def kind_for_seed(seed: int, kind: str) -> str:
    """Resolve 'mixed' to indoor (even seeds) or outdoor (odd seeds)."""
    if kind == "mixed":
        return KINDS[seed % 2]
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; use indoor, outdoor or mixed")
    return kind


def _capture_spot(r: np.random.Generator, w: float, d: float) -> tuple[float, float]:
    """Where a 360 camera stands in a w x d room: people put the tripod or selfie stick in the open middle of the
    space, not against a wall, so the position is drawn around the centre (at most 40% of the way to each wall) and
    at least 0.6 m from the walls where the room allows it."""
    spot = []
    for size in (w, d):
        reach = max(0.0, min(0.4 * size / 2, size / 2 - 0.6))
        spot.append(size / 2 + float(r.uniform(-reach, reach)))
    return spot[0], spot[1]


def _camera_rotation(r: np.random.Generator) -> Vec3:
    """Hand-held or monopod 360 cameras: any heading, a few degrees of pitch and roll."""
    pitch, roll = np.clip(r.normal(0.0, 2.5, 2), -8.0, 8.0)
    return float(r.uniform(-180, 180)), float(pitch), float(roll)


def _indoor(b: _Builder) -> None:
    r, s = b.rng, b.scene
    # rooms as footprints (x0, z0, x1, z1, height); later rooms only grow towards +x/+z so they never overlap
    w, d, h = r.uniform(2.5, 8.0), r.uniform(2.5, 8.0), r.uniform(2.4, 3.6)
    if r.random() < 0.15:  # a hall, an open-plan office or a shop
        w, d, h = r.uniform(8.0, 18.0), r.uniform(6.0, 14.0), r.uniform(3.0, 6.0)
    wall, floor, ceil = b.material("wall"), b.material("floor", (0.4, 1.5)), b.material("ceiling", (0.6, 2.0))
    inst = b.instance()
    rooms = [(0.0, 0.0, w, d, h)]
    s.shells.append(Shell((0.0, -h, 0.0), (w, 0.0, d), wall, floor, ceil, inst))
    s.layout = str(r.choice(["box", "l_shape", "rooms"], p=[0.3, 0.3, 0.4]))
    doors = []  # doorway shells (lo, hi): furniture, closed doors and pictures keep out of them
    if s.layout == "l_shape":
        ww, ext, ov = r.uniform(1.5, max(1.6, 0.7 * w)), r.uniform(2.0, 6.0), 0.5
        x0 = 0.0 if r.random() < 0.5 else w - ww
        s.shells.append(Shell((x0, -h, d - ov), (x0 + ww, 0.0, d + ext), wall, floor, ceil, inst))
        rooms.append((x0, d, x0 + ww, d + ext, h))
    elif s.layout == "rooms":
        gap = 0.2  # wall thickness between rooms
        for _ in range(int(r.integers(1, 3))):
            px0, pz0, px1, pz1, ph = rooms[-1]
            w2, d2, h2 = r.uniform(2.5, 7.0), r.uniform(2.5, 7.0), r.uniform(2.4, 3.6)
            door_h, door_w = min(2.1, min(ph, h2) - 0.25), r.uniform(0.8, 1.2)
            along_x = r.random() < 0.5
            if along_x:
                x0, z0 = px1 + gap, pz0 + r.uniform(0.0, 1.0)
                lo_o, hi_o = max(pz0, z0), min(pz1, z0 + d2)  # shared span of the two walls
                c = r.uniform(lo_o + 0.1, hi_o - door_w - 0.1)
                door_lo, door_hi = (px1 - 0.05, -door_h, c), (x0 + 0.05, 0.0, c + door_w)
            else:
                x0, z0 = px0 + r.uniform(0.0, 1.0), pz1 + gap
                lo_o, hi_o = max(px0, x0), min(px1, x0 + w2)
                c = r.uniform(lo_o + 0.1, hi_o - door_w - 0.1)
                door_lo, door_hi = (c, -door_h, pz1 - 0.05), (c + door_w, 0.0, z0 + 0.05)
            s.shells.append(Shell(door_lo, door_hi, wall, floor, wall, b.instance()))
            doors.append((door_lo, door_hi))
            wall = b.material("wall")
            floor, ceil = b.material("floor", (0.4, 1.5)), b.material("ceiling", (0.6, 2.0))
            s.shells.append(Shell((x0, -h2, z0), (x0 + w2, 0.0, z0 + d2), wall, floor, ceil, b.instance()))
            rooms.append((x0, z0, x0 + w2, z0 + d2, h2))

    x, z = _capture_spot(r, w, d)
    height = min(float(r.triangular(1.1, 1.5, 1.8)), h - 0.4)  # tripods and selfie sticks: mostly about eye level
    cam = (x, -height, z)
    s.camera, s.rotation = _v(cam), _camera_rotation(r)
    s.point_light = True
    s.light = _v((w / 2 + r.uniform(-0.5, 0.5), -h + 0.15, d / 2 + r.uniform(-0.5, 0.5)))
    for k, (rx0, rz0, rx1, rz1, rh) in enumerate(rooms):  # ceiling lamps besides `light` in the first room
        for _ in range(int(r.integers(0 if k == 0 else 1, 3))):
            s.lamps.append(_v((r.uniform(rx0 + 0.5, rx1 - 0.5), -rh + 0.15, r.uniform(rz0 + 0.5, rz1 - 0.5))))
    glow = b.material("lamp", emit=True)
    for x, y, z in [s.light, *s.lamps]:  # the fittings: glowing discs just under the ceiling, above the light
        b.cylinder(x, z, r.uniform(0.12, 0.3), y - 0.15, y - 0.15 + r.uniform(0.03, 0.1), glow)

    taken = [(cam[0], cam[2], 0.45)]  # footprint circles (x, z, radius): the camera and placed furniture

    def free(x: float, z: float, rad: float) -> bool:
        return (all(math.hypot(x - tx, z - tz) > rad + tr for tx, tz, tr in taken)
                and not any(lo[0] - rad - 0.6 < x < hi[0] + rad + 0.6 and lo[2] - rad - 0.6 < z < hi[2] + rad + 0.6
                            for lo, hi in doors))

    n_windows = 0
    for k, room in enumerate(rooms):
        n_windows += _windows_of_room(b, rooms, k)
        keep_out = doors + [(q.lo, q.hi) for q in s.shells if q.portal]
        if r.random() < 0.5:
            _on_wall(b, room, "door", keep_out)
        if r.random() < 0.15 and k == 0:
            _stairs(b, room, free, taken)
        for _ in range(int(r.integers(4, 13))):
            item = str(r.choice(_FURNITURE, p=_FURNITURE_P))
            any(_place_furniture(b, item, room, free, taken) for _try in range(8))
        for _ in range(int(r.integers(0, 3))):
            _on_wall(b, room, "picture", keep_out)
        rx0, rz0, rx1, rz1, rh = room
        if r.random() < 0.4:  # rug
            sx, sz = r.uniform(1.2, min(3.0, rx1 - rx0 - 0.2)), r.uniform(1.0, min(2.5, rz1 - rz0 - 0.2))
            x0, z0 = r.uniform(rx0 + 0.1, rx1 - sx), r.uniform(rz0 + 0.1, rz1 - sz)
            b.box((x0, -0.012, z0), (x0 + sx, 0.0, z0 + sz), b.material("rug", (0.5, 2.0)))
    if n_windows:
        _view_outside(b, rooms)


_FURNITURE = ("table", "shelf", "bed", "sofa", "cabinet", "chair", "plant", "floor_lamp", "stool", "ball", "pillar")
_FURNITURE_P = np.array([0.17, 0.13, 0.08, 0.12, 0.15, 0.13, 0.07, 0.05, 0.04, 0.03, 0.03])


def _place_furniture(b: _Builder, item: str, room: tuple, free, taken: list) -> bool:
    """Try one random spot for `item`: back against a wall, or free-standing at any yaw. On success the item is
    built and its footprint circle appended to `taken`."""
    r, (rx0, rz0, rx1, rz1, rh) = b.rng, room
    sizes = dict(table=(r.uniform(0.8, 1.8), r.uniform(0.6, 1.0)), shelf=(r.uniform(0.6, 1.8), r.uniform(0.3, 0.45)),
                 bed=(r.uniform(1.0, 1.8), r.uniform(1.9, 2.1)), sofa=(r.uniform(1.6, 2.6), r.uniform(0.8, 1.0)),
                 cabinet=(r.uniform(0.5, 2.0), r.uniform(0.4, 0.7)), chair=(0.48, 0.5), plant=(0.5, 0.5),
                 floor_lamp=(0.4, 0.4), stool=(0.4, 0.4), ball=(0.5, 0.5), pillar=(0.5, 0.5))
    sx, sz = sizes[item]
    rad = math.hypot(sx, sz) / 2
    if rx1 - rx0 < 2 * rad + 0.1 or rz1 - rz0 < 2 * rad + 0.1:
        return False
    if item in ("table", "chair", "plant", "floor_lamp", "stool", "ball", "pillar") or r.random() < 0.25:
        yaw = r.uniform(-math.pi, math.pi)
        x, z = r.uniform(rx0 + rad, rx1 - rad), r.uniform(rz0 + rad, rz1 - rad)
    else:  # back against one of the four walls
        side = int(r.integers(4))
        yaw = (math.pi / 2, -math.pi / 2, 0.0, math.pi)[side] + r.normal(0, 0.03)
        off = sz / 2 + 0.03
        if side < 2:
            x, z = (rx0 + off, rx1 - off)[side], r.uniform(rz0 + sx / 2, rz1 - sx / 2)
        else:
            x, z = r.uniform(rx0 + sx / 2, rx1 - sx / 2), (rz0 + off, rz1 - off)[side - 2]
    if not free(x, z, rad):
        return False
    taken.append((x, z, rad))
    _furniture(b, item, (x, 0.0, z), yaw, sx, sz, rh)
    return True


def _furniture(b: _Builder, item: str, o: tuple[float, float, float], yaw: float, sx: float, sz: float,
               room_h: float) -> None:
    """Composite furniture in its own frame: x across, z from back (-) to front (+), y up (-); floor at y = 0."""
    r, inst = b.rng, b.instance()
    m = b.material("furniture", (0.3, 1.2))

    def part(cx, cy, cz, wx, wy, wz, mat=m):
        b.part(o, yaw, (cx, cy, cz), (wx, wy, wz), mat, inst)

    if item == "table":
        top, th, leg = r.uniform(0.45, 0.95), 0.04, 0.05
        part(0, -top + th / 2, 0, sx, th, sz)
        legs = b.material("furniture", (0.1, 0.5)) if r.random() < 0.5 else m
        for lx in (-1, 1):
            for lz in (-1, 1):
                part(lx * (sx - leg) / 2, -(top - th) / 2, lz * (sz - leg) / 2, leg, top - th, leg, legs)
    elif item == "chair":
        seat = r.uniform(0.42, 0.5)
        part(0, -seat + 0.02, 0, sx, 0.04, sz)
        part(0, -seat - 0.22, -sz / 2 + 0.02, sx, 0.44, 0.04)
        for lx in (-1, 1):
            for lz in (-1, 1):
                part(lx * (sx - 0.04) / 2, -(seat - 0.04) / 2, lz * (sz - 0.04) / 2, 0.04, seat - 0.04, 0.04)
    elif item == "shelf":
        hs, t = r.uniform(0.8, min(2.2, room_h - 0.2)), 0.025
        part(0, -hs / 2, -sz / 2 + t / 2, sx, hs, t)  # back
        for lx in (-1, 1):
            part(lx * (sx - t) / 2, -hs / 2, 0, t, hs, sz)
        n = max(2, int(hs / r.uniform(0.3, 0.45)))
        books = b.material("books", (0.1, 0.3))
        for i in range(n + 1):
            y = -i * (hs - t) / n - t / 2
            part(0, y, 0, sx - 2 * t, t, sz)
            if 0 < i <= n and r.random() < 0.7:  # a block of books standing on the shelf below
                bw, bh = r.uniform(0.2, sx - 0.1), r.uniform(0.15, (hs - t) / n - 0.05)
                bx = r.uniform(-(sx - 2 * t - bw) / 2, (sx - 2 * t - bw) / 2)
                part(bx, -(i - 1) * (hs - t) / n - t - bh / 2, -0.02, bw, bh, sz * 0.8, books)
    elif item == "bed":
        base, mat = r.uniform(0.25, 0.4), b.material("fabric", (0.3, 1.0))
        part(0, -base / 2, 0, sx, base, sz)
        part(0, -base - 0.1, 0.05, sx - 0.04, 0.2, sz - 0.1, mat)
        part(0, -0.5, -sz / 2 - 0.03, sx + 0.04, 1.0, 0.06)  # headboard
        pil = b.material("fabric", (0.3, 1.0))
        for px in ((0.0,) if sx < 1.3 else (-sx / 4, sx / 4)):
            part(px, -base - 0.26, -sz / 2 + 0.3, min(0.6, sx / 2 - 0.05), 0.12, 0.35, pil)
    elif item == "sofa":
        seat, arm, fab = r.uniform(0.38, 0.46), r.uniform(0.12, 0.25), b.material("fabric", (0.3, 1.0))
        part(0, -seat / 2, 0.05, sx - 2 * arm, seat, sz - 0.1, fab)
        part(0, -r.uniform(0.75, 0.95) / 2, -sz / 2 + 0.1, sx, r.uniform(0.75, 0.95), 0.2, fab)
        for lx in (-1, 1):
            part(lx * (sx - arm) / 2, -0.3, 0, arm, 0.6, sz, fab)
    elif item == "cabinet":
        hc = r.uniform(0.4, min(2.2, room_h - 0.1))
        part(0, -hc / 2, 0, sx, hc, sz)
        if hc < 1.2 and r.random() < 0.5:  # a television or a box on top
            tw = min(sx - 0.1, r.uniform(0.6, 1.4))
            part(0, -hc - tw * 0.3, 0, tw, tw * 0.6, 0.05, b.material("screen", (0.5, 1.0)))
    elif item == "plant":
        pot, ph = r.uniform(0.12, 0.22), r.uniform(0.25, 0.45)
        b.cylinder(o[0], o[2], pot, -ph, 0.0, m, inst)
        b.sphere((o[0], -ph - pot * 1.5, o[2]), pot * r.uniform(1.5, 2.5), b.material("canopy"), inst)
    elif item == "floor_lamp":
        hl = r.uniform(1.2, min(1.8, room_h - 0.4))
        b.cylinder(o[0], o[2], 0.02, -hl, 0.0, m, inst)
        b.cylinder(o[0], o[2], 0.15, -hl - 0.25, -hl, b.material("shade"), inst)
    elif item == "stool":
        b.cylinder(o[0], o[2], 0.2, -r.uniform(0.4, 0.75), 0.0, m, inst)
    elif item == "ball":
        rb = r.uniform(0.1, 0.25)
        b.sphere((o[0], -rb, o[2]), rb, m, inst)
    else:  # pillar to the ceiling
        b.cylinder(o[0], o[2], r.uniform(0.12, 0.25), -room_h, 0.0, m, inst)


def _room_walls(x0: float, z0: float, x1: float, z1: float) -> list[tuple[int, float, float, float]]:
    """Walls as (axis 0 = x / 2 = z, coordinate, span start, span end), facing outwards towards -x, +x, -z, +z
    in that order."""
    return [(0, x0, z0, z1), (0, x1, z0, z1), (2, z0, x0, x1), (2, z1, x0, x1)]


def _windows_of_room(b: _Builder, rooms: list, k: int) -> int:
    """Windows in the walls of room k that face no other room: a portal shell cut through the wall, a frame
    and a sill. Returns how many."""
    r, s = b.rng, b.scene
    rx0, rz0, rx1, rz1, rh = rooms[k]
    frame = b.material("frame", (0.3, 1.0))
    count = 0
    for side, (axis, at, a0, a1) in enumerate(_room_walls(rx0, rz0, rx1, rz1)):
        # no window where another room lies beyond this wall: it would be seen from outside
        perp, span = ((0, 2), (1, 3)) if axis == 0 else ((1, 3), (0, 2))
        blocked = any(max(q[span[0]], a0) < min(q[span[1]], a1)
                      and (q[perp[1]] > at + 0.01 if side % 2 else q[perp[0]] < at - 0.01)
                      for j, q in enumerate(rooms) if j != k)
        if blocked or r.random() > 0.45 or a1 - a0 < 1.4:
            continue
        for _ in range(int(r.integers(1, 3))):
            ww = r.uniform(0.6, min(2.6, a1 - a0 - 0.4))
            c0 = r.uniform(a0 + 0.2, a1 - 0.2 - ww)
            sill = r.uniform(0.0, 1.0) if r.random() < 0.8 else 0.02
            top = r.uniform(min(rh - 0.15, sill + 0.9), rh - 0.15)
            lo, hi = [0.0, -top, 0.0], [0.0, -sill, 0.0]
            lo[axis], hi[axis] = at - 0.1, at + 0.1
            lo[2 - axis], hi[2 - axis] = c0, c0 + ww
            if any(_overlap(lo, hi, q.lo, q.hi) for q in s.shells if q.portal):
                continue
            s.shells.append(Shell(_v(lo), _v(hi), 0, 0, 0, b.instance(), portal=True))
            count += 1
            inst, fw, fd = b.instance(), 0.05, 0.08
            for bar_lo, bar_hi in (((c0, top), (c0 + fw, sill)), ((c0 + ww - fw, top), (c0 + ww, sill)),
                                   ((c0, top), (c0 + ww, top - fw)), ((c0, sill + fw), (c0 + ww, sill)),
                                   ((c0 + ww / 2 - 0.025, top), (c0 + ww / 2 + 0.025, sill))):
                blo, bhi = [0.0, -bar_lo[1], 0.0], [0.0, -bar_hi[1], 0.0]
                blo[axis], bhi[axis] = at - fd / 2, at + fd / 2
                blo[2 - axis], bhi[2 - axis] = bar_lo[0], bar_hi[0]
                if bar_lo[0] < bar_hi[0]:
                    b.box(blo, bhi, frame, inst)
    return count


def _overlap(lo, hi, lo2, hi2) -> bool:
    return all(lo[i] < hi2[i] and lo2[i] < hi[i] for i in range(3))


def _on_wall(b: _Builder, room: tuple, item: str, keep_out: list) -> None:
    """A closed door (a leaf standing 3.5 cm proud of the wall, in a frame) or a picture on a random wall of
    `room`, unless it would cover a doorway or a window (`keep_out` boxes)."""
    r, (rx0, rz0, rx1, rz1, rh) = b.rng, room
    axis, at, a0, a1 = _room_walls(rx0, rz0, rx1, rz1)[int(r.integers(4))]
    if item == "door":
        w, y0, y1 = r.uniform(0.75, 0.95), 0.0, r.uniform(1.95, 2.1)
        layers = ((0.06, 0.02, b.material("frame", (0.3, 1.0))), (0.0, 0.035, b.material("door")))
    else:
        w, y0 = r.uniform(0.3, 1.2), r.uniform(1.1, 1.6)
        y1 = min(rh - 0.2, y0 + r.uniform(0.3, 0.9))
        layers = ((0.0, 0.02, b.material("picture", (0.3, 1.0))),)
    if a1 - a0 < w + 0.4:
        return
    c0, inst = r.uniform(a0 + 0.2, a1 - 0.2 - w), b.instance()
    for grow, depth, mat in layers:
        lo, hi = [0.0, -y1 - grow, 0.0], [0.0, -y0, 0.0]
        lo[axis], hi[axis] = at - depth, at + depth
        lo[2 - axis], hi[2 - axis] = c0 - grow, c0 + w + grow
        if any(_overlap(lo, hi, klo, khi) for klo, khi in keep_out):
            return
        b.box(lo, hi, mat, inst)


def _stairs(b: _Builder, room: tuple, free, taken: list) -> None:
    """A straight flight of solid steps along the -x wall, rising towards +z up to under the ceiling."""
    r, (rx0, rz0, rx1, rz1, rh) = b.rng, room
    rise, run, sw = r.uniform(0.15, 0.19), r.uniform(0.25, 0.32), r.uniform(0.8, 1.2)
    n = min(int((rh - 0.3) / rise), int((rz1 - rz0 - 0.3) / run))
    # footprint as circles along the flight: clear of the camera and of doorways, then kept from furniture
    steps = [(rx0 + sw / 2, rz0 + 0.1 + (i + 0.5) * run, 0.6 * sw) for i in range(n)]
    if n < 4 or rx1 - rx0 < sw + 1.0 or not all(free(*c) for c in steps):
        return
    m, inst = b.material("stairs", (0.3, 1.0)), b.instance()
    for i in range(n):
        b.box((rx0, -(i + 1) * rise, rz0 + 0.1 + i * run), (rx0 + sw, 0.0, rz0 + 0.1 + (i + 1) * run), m, inst)
    taken.extend(steps)


def _view_outside(b: _Builder, rooms: list) -> None:
    """What the windows look out on: ground (the room is on the ground floor or higher up), facades across
    the street, trees, hills; lit by daylight."""
    r = b.rng
    x0, z0 = min(q[0] for q in rooms), min(q[1] for q in rooms)
    x1, z1 = max(q[2] for q in rooms), max(q[3] for q in rooms)
    storey = 0.0 if r.random() < 0.5 else float(r.integers(1, 8)) * 3.0
    ground = storey + r.uniform(0.05, 0.4)
    b.scene.planes.append(Plane(ground, b.material("ground", (0.5, 3.0), outdoor=True), b.instance()))
    cx, cz, reach = (x0 + x1) / 2, (z0 + z1) / 2, math.hypot(x1 - x0, z1 - z0) / 2
    for ang in np.arange(4) * math.pi / 2 + r.uniform(-0.3, 0.3):
        if r.random() < 0.25:
            continue
        dist = r.uniform(8, 50) + reach
        width, dep, hb = r.uniform(15, 60), r.uniform(8, 20), r.uniform(6, 40) + storey
        b.part((cx + dist * math.sin(ang), ground, cz + dist * math.cos(ang)), ang, (0, -hb / 2, dep / 2),
               (width, hb, dep), b.material("building", (1.0, 4.0), outdoor=True), b.instance())
    trunk, canopy = b.material("trunk", (0.1, 0.4), outdoor=True), b.material("canopy", (0.3, 1.5), outdoor=True)
    for _ in range(int(r.integers(0, 6))):
        ang, dist = r.uniform(-math.pi, math.pi), r.uniform(6, 18) + reach  # canopies stay outside
        _tree(b, cx + dist * math.sin(ang), cz + dist * math.cos(ang), trunk, canopy, ground)
    _far_hills(b, ground, outdoor=True)


def _outdoor(b: _Builder) -> None:
    r, s = b.rng, b.scene
    s.layout = str(r.choice(["street", "square", "park"], p=[0.45, 0.3, 0.25]))
    s.planes.append(Plane(0.0, b.material("ground", (0.5, 3.0)), b.instance()))
    el, az = math.radians(r.uniform(10, 70)), r.uniform(-math.pi, math.pi)
    s.light = (math.cos(el) * math.sin(az), -math.sin(el), math.cos(el) * math.cos(az))
    # hand-held or on a pole; from a balcony or a mast; from a drone (as in AirSim360), which sees far more ground
    cam_h = float(r.choice([r.uniform(1.3, 2.0), r.uniform(2.5, 12.0), r.uniform(15.0, 80.0)], p=[0.6, 0.2, 0.2]))
    s.rotation = _camera_rotation(r)
    (_street if s.layout == "street" else _square if s.layout == "square" else _park)(b, cam_h)
    _far_hills(b, 0.0)


def _building(b: _Builder, x: float, z: float, yaw: float, width: float, depth: float, height: float) -> None:
    """A building whose front face (local -z) is at (x, z) facing along yaw: a block, sometimes a narrower
    tower on top, sometimes a ground-floor shop band and a roof parapet."""
    r, inst = b.rng, b.instance()
    m = b.material("building", (1.0, 4.0))
    b.part((x, 0.0, z), yaw, (0, -height / 2, depth / 2), (width, height, depth), m, inst)
    if r.random() < 0.3:  # setback tower
        th = height * r.uniform(0.3, 1.5)
        b.part((x, 0.0, z), yaw, (0, -height - th / 2, depth / 2 + 2), (width * 0.6, th, depth * 0.6),
               b.material("building", (1.0, 4.0)), inst)
    if r.random() < 0.5:  # shop fronts / ground floor band standing slightly proud
        b.part((x, 0.0, z), yaw, (0, -1.6, -0.05), (width, 3.2, 0.12), b.material("shopfront", (0.5, 2.0)), inst)


def _car(b: _Builder, x: float, z: float, yaw: float) -> None:
    r, inst = b.rng, b.instance()
    body, glass = b.material("car", (0.5, 2.0)), b.material("glass", (0.5, 2.0))
    ln, wd = r.uniform(3.8, 4.8), r.uniform(1.65, 1.85)
    h1 = r.uniform(0.75, 0.95)
    b.part((x, 0.0, z), yaw, (0, -0.2 - (h1 - 0.2) / 2, 0), (wd, h1 - 0.2, ln), body, inst)
    b.part((x, 0.0, z), yaw, (0, -h1 - 0.25, -0.2), (wd - 0.1, 0.5, ln * r.uniform(0.45, 0.6)), glass, inst)
    tyre = b.material("tyre")
    for lz in (-1, 1):
        b.part((x, 0.0, z), yaw, (0, -0.22, lz * ln * 0.32), (wd - 0.05, 0.44, 0.6), tyre, inst)


def _street(b: _Builder, cam_h: float) -> None:
    r, s = b.rng, b.scene
    length = r.uniform(150.0, 500.0)  # street half-length
    road, walk = r.uniform(3.0, 8.0), r.uniform(1.5, 5.0)  # half road width, sidewalk width
    b.box((-road, -0.02, -length), (road, 0.0, length), b.material("road", (1.0, 4.0)))
    walk_m = b.material("sidewalk", (0.3, 1.5))
    for side in (-1, 1):
        x_in, x_out = side * road, side * (road + walk)
        b.box((min(x_in, x_out), -0.15, -length), (max(x_in, x_out), 0.0, length), walk_m)
        z = -length + r.uniform(0, 10)
        tall = r.uniform(0.5, 3.0)  # district: low houses to towers
        while z < length and len(s.boxes) < 120:
            lz, dep = r.uniform(8, 30), r.uniform(10, 25)
            hb = float(np.clip(r.lognormal(math.log(12 * tall), 0.5), 3.5, 120))
            _building(b, side * (road + walk + r.uniform(0, 2)), z + lz / 2, side * math.pi / 2, lz, dep, hb)
            z += lz + (r.uniform(0, 4) if r.random() < 0.8 else r.uniform(8, 25))  # alleys show far things
        trunk, canopy = b.material("trunk", (0.1, 0.4)), b.material("canopy", (0.3, 1.5))
        z = r.uniform(-30, -5)
        while z < 80 and len(s.cylinders) < 24:
            _tree(b, side * (road + walk * r.uniform(0.3, 0.7)), z, trunk, canopy)
            z += r.uniform(8, 20)
        z = r.uniform(-60, -20)
        while z < 60:  # parked cars along the kerb
            if r.random() < 0.6:
                _car(b, side * (road - 1.1), z, r.normal(0, 0.03) + (0 if r.random() < 0.5 else math.pi))
            z += r.uniform(5, 9)
    if r.random() < 0.5:  # the street ends at a facade far away
        far = length * r.uniform(0.4, 1.0)
        _building(b, 0.0, far, 0.0, 2 * (road + walk) + 40, 20, r.uniform(10, 60))
    _skyline(b, int(r.integers(0, 16)), tall)
    cam_x = r.uniform(-road - walk * 0.5, road + walk * 0.5)
    cam_x = float(np.clip(cam_x, -road + 1.5, road - 1.5)) if abs(cam_x) > road - 1.5 else cam_x
    s.camera = _v((cam_x, -cam_h, r.uniform(-10, 10)))
    for _ in range(int(r.integers(0, 4))):  # cars in the lanes, not on top of the camera
        _car(b, r.choice([-1, 1]) * road / 2, s.camera[2] + r.choice([-1, 1]) * r.uniform(5, 60), r.normal(0, 0.05))
    pole_m = b.material("pole", (0.2, 1.0))
    for _ in range(int(r.integers(0, 5))):
        b.cylinder(r.choice([-1, 1]) * road * 0.95, r.uniform(-50, 50), 0.08, -r.uniform(4, 9), 0.0, pole_m)


def _square(b: _Builder, cam_h: float) -> None:
    """A paved square with buildings round it, streets leaving it between them, far buildings beyond."""
    r, s = b.rng, b.scene
    half = r.uniform(15, 60)
    b.box((-half, -0.03, -half), (half, 0.0, half), b.material("paving", (0.3, 2.0)))
    tall = r.uniform(0.6, 2.5)
    for side in range(4):
        yaw = side * math.pi / 2  # the front (local -z) faces the centre, the depth points away
        along = -half
        while along < half:
            wb = r.uniform(8, 30)
            if r.random() < 0.2:  # a street leaving the square: open view to the distance
                along += r.uniform(8, 20)
                continue
            hb = float(np.clip(r.lognormal(math.log(12 * tall), 0.5), 4, 100))
            c, sn = math.cos(side * math.pi / 2), math.sin(side * math.pi / 2)
            px, pz = c * min(along + wb / 2, half) + sn * half, -sn * min(along + wb / 2, half) + c * half
            _building(b, px, pz, yaw, wb, r.uniform(10, 25), hb)
            along += wb + r.uniform(0, 2)
    _skyline(b, int(r.integers(3, 16)), tall)
    cam = (r.uniform(-half * 0.6, half * 0.6), -cam_h, r.uniform(-half * 0.6, half * 0.6))
    s.camera = _v(cam)
    inst, m = b.instance(), b.material("stone", (0.3, 1.5))
    if math.hypot(cam[0], cam[2]) > 5:  # a fountain or monument in the middle
        b.cylinder(0, 0, r.uniform(2, 4), -0.5, 0.0, m, inst)
        b.cylinder(0, 0, r.uniform(0.3, 0.8), -r.uniform(1.5, 8), -0.5, m, inst)
    trunk, canopy = b.material("trunk", (0.1, 0.4)), b.material("canopy", (0.3, 1.5))
    bench = b.material("furniture", (0.1, 0.5))
    for _ in range(int(r.integers(2, 12))):
        x, z = r.uniform(-half + 2, half - 2), r.uniform(-half + 2, half - 2)
        if math.hypot(x - cam[0], z - cam[2]) < 3:
            continue
        roll = r.random()
        if roll < 0.5:
            _tree(b, x, z, trunk, canopy)
        elif roll < 0.75:
            _car(b, x, z, r.uniform(-math.pi, math.pi))
        else:
            b.part((x, 0.0, z), r.uniform(-math.pi, math.pi), (0, -0.22, 0), (1.6, 0.45, 0.5), bench, b.instance())
    if r.random() < 0.4:  # steps up to a building
        yaw, w, n = r.integers(4) * math.pi / 2, r.uniform(6, 20), int(r.integers(3, 8))
        m, inst = b.material("stairs", (0.3, 1.0)), b.instance()
        for i in range(n):
            b.part((half * 0.8 * math.sin(yaw), 0.0, half * 0.8 * math.cos(yaw)), yaw,
                   (0, -(i + 1) * 0.08, (i - n) * 0.35), (w, (i + 1) * 0.16, 0.35), m, inst)


def _park(b: _Builder, cam_h: float) -> None:
    """Open terrain: slopes, trees, rocks, benches, a few houses, a forest edge."""
    r, s = b.rng, b.scene
    cam = (r.uniform(-2, 2), -cam_h, r.uniform(-2, 2))
    s.camera = _v(cam)
    trunk, canopy = b.material("trunk", (0.1, 0.4)), b.material("canopy", (0.3, 1.5))
    rock = b.material("rock", (0.2, 1.0))
    for _ in range(int(r.integers(6, 24))):
        dist, ang = r.uniform(4, 80), r.uniform(-math.pi, math.pi)
        x, z = cam[0] + dist * math.sin(ang), cam[2] + dist * math.cos(ang)
        if r.random() < 0.75:
            _tree(b, x, z, trunk, canopy)
        else:
            rr = r.uniform(0.3, 2.0)
            b.sphere((x, rr * r.uniform(0.2, 0.7), z), rr, rock)
    for _ in range(int(r.integers(0, 3))):  # forest edges: bands of trees 20-200 m away
        ang0, dist = r.uniform(-math.pi, math.pi), r.uniform(20, 200)
        for a in ang0 + np.linspace(0, r.uniform(0.5, 2.5), int(r.integers(10, 30))):
            dd = dist + r.uniform(-5, 5)
            _tree(b, dd * math.sin(a), dd * math.cos(a), trunk, canopy, scale=r.uniform(1.5, 3))
    slope = b.material("ground", (0.5, 3.0))
    for _ in range(int(r.integers(1, 4))):  # slopes: tilted slabs half sunk into the ground
        dist, ang = r.uniform(25, 250), r.uniform(-math.pi, math.pi)
        size = r.uniform(30, 200)
        tilt = r.uniform(0.08, 0.35)
        b.part((dist * math.sin(ang), 0.0, dist * math.cos(ang)), ang, (0, 0, size / 2), (size, 2.0, size), slope,
               b.instance(), tilt=tilt)
    bench = b.material("furniture", (0.1, 0.5))
    for _ in range(int(r.integers(0, 3))):
        x, z = r.uniform(-12, 12), r.uniform(-12, 12)
        if math.hypot(x - cam[0], z - cam[2]) > 2.5:
            b.part((x, 0.0, z), r.uniform(-math.pi, math.pi), (0, -0.22, 0), (1.6, 0.45, 0.5), bench, b.instance())
    for _ in range(int(r.integers(0, 4))):  # houses
        dist, ang = r.uniform(15, 120), r.uniform(-math.pi, math.pi)
        _building(b, dist * math.sin(ang), dist * math.cos(ang), r.uniform(-math.pi, math.pi), r.uniform(6, 14),
                  r.uniform(6, 12), r.uniform(3, 9))
    _skyline(b, int(r.integers(0, 6)), 1.0)


def _skyline(b: _Builder, count: int, tall: float) -> None:
    """Blocks and towers 100-800 m away: the city seen above and between the near buildings."""
    r = b.rng
    for _ in range(count):
        dist, ang = r.uniform(100, 800), r.uniform(-math.pi, math.pi)
        _building(b, dist * math.sin(ang), dist * math.cos(ang), ang, r.uniform(20, 80), r.uniform(15, 40),
                  float(np.clip(r.lognormal(math.log(30 * tall), 0.6), 10, 300)))


def _far_hills(b: _Builder, ground: float, outdoor: bool = False) -> None:
    """Big spheres sunk into the ground: hills 150 m - 1 km away and mountains a few km away."""
    r = b.rng
    hill = b.material("hill", (5.0, 30.0), outdoor=outdoor)
    for _ in range(int(r.integers(3, 9))):
        rad, ang, k = r.uniform(100, 600), r.uniform(-math.pi, math.pi), r.uniform(0.4, 0.95)
        dist = rad * math.sqrt(1 - k * k) + r.uniform(40, 400)
        b.sphere((dist * math.sin(ang), ground + k * rad, dist * math.cos(ang)), rad, hill)
    if r.random() < 0.8:
        mountain = b.material("mountain", (20.0, 80.0), outdoor=outdoor)
        for _ in range(int(r.integers(1, 5))):
            rad, ang, k = r.uniform(1500, 5000), r.uniform(-math.pi, math.pi), r.uniform(0.7, 0.97)
            dist = rad * math.sqrt(1 - k * k) + r.uniform(1000, 4000)
            b.sphere((dist * math.sin(ang), ground + k * rad, dist * math.cos(ang)), rad, mountain)


def _tree(b: _Builder, x: float, z: float, trunk: int, canopy: int, ground: float = 0.0, scale: float = 1.0) -> None:
    r, inst = b.rng, b.instance()
    th, cr = r.uniform(1.8, 4.0) * scale, r.uniform(1.0, 3.0) * scale
    b.cylinder(x, z, r.uniform(0.1, 0.3) * scale, ground - th - 0.5 * cr, ground, trunk, inst)
    b.sphere((x, ground - th - cr * 0.8, z), cr, canopy, inst)
    if r.random() < 0.5:  # a second, offset lobe: less of a lollipop
        off = r.uniform(-0.5, 0.5, 2) * cr
        b.sphere((x + off[0], ground - th - cr * 1.3, z + off[1]), cr * r.uniform(0.5, 0.8), canopy, inst)


def _drop_solids_around_camera(s: Scene, margin: float = 0.2) -> None:
    """Remove solid primitives that contain (or nearly touch) the camera: a camera inside a solid sees nothing."""
    c = np.asarray(s.camera)
    s.boxes = [q for q in s.boxes if not np.all(np.abs(_box_local(q, c)) < _box_half(q) + margin)]
    s.cylinders = [q for q in s.cylinders
                   if not (math.hypot(c[0] - q.x, c[2] - q.z) < q.radius + margin
                           and q.top - margin < c[1] < q.bottom + margin)]
    s.spheres = [q for q in s.spheres
                 if q.inside or np.linalg.norm(c - np.asarray(q.center)) > q.radius + margin]


def _box_rotation(q: Box) -> np.ndarray:
    """Local -> world rotation of a box: R_y(yaw) @ R_x(tilt)."""
    cy, sy, ct, st = math.cos(q.yaw), math.sin(q.yaw), math.cos(q.tilt), math.sin(q.tilt)
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])


def _box_half(q: Box) -> np.ndarray:
    return (np.asarray(q.hi) - np.asarray(q.lo)) / 2


def _box_local(q: Box, p: np.ndarray) -> np.ndarray:
    """World point -> the box's frame (origin at its centre)."""
    return _box_rotation(q).T @ (p - (np.asarray(q.lo) + np.asarray(q.hi)) / 2)


# ----------------------------------------------------------------------------------------------- style

TEXTURES = ("flat", "checker", "stripes", "brick", "noise", "wood", "image")

# role -> (hue, saturation, value) ranges of the "natural" palette; HSV in display space
_NATURAL = {
    "wall": ((0.05, 0.15), (0.03, 0.25), (0.6, 0.9)),
    "floor": ((0.04, 0.11), (0.25, 0.6), (0.3, 0.65)),
    "ceiling": ((0.08, 0.15), (0.0, 0.08), (0.8, 0.95)),
    "furniture": ((0.0, 1.0), (0.15, 0.6), (0.2, 0.75)),
    "fabric": ((0.0, 1.0), (0.1, 0.5), (0.25, 0.8)),
    "rug": ((0.0, 1.0), (0.2, 0.6), (0.25, 0.7)),
    "books": ((0.0, 1.0), (0.3, 0.7), (0.3, 0.7)),
    "screen": ((0.55, 0.65), (0.0, 0.2), (0.03, 0.12)),
    "shade": ((0.08, 0.14), (0.1, 0.4), (0.75, 0.95)),
    "lamp": ((0.1, 0.14), (0.0, 0.2), (0.95, 1.0)),
    "door": ((0.05, 0.1), (0.1, 0.6), (0.35, 0.9)),
    "frame": ((0.05, 0.12), (0.0, 0.3), (0.3, 0.95)),
    "picture": ((0.0, 1.0), (0.2, 0.7), (0.2, 0.8)),
    "stairs": ((0.05, 0.1), (0.1, 0.5), (0.3, 0.75)),
    "ground": ((0.17, 0.3), (0.3, 0.6), (0.25, 0.45)),
    "road": ((0.55, 0.65), (0.0, 0.08), (0.2, 0.35)),
    "sidewalk": ((0.06, 0.12), (0.02, 0.1), (0.5, 0.7)),
    "paving": ((0.05, 0.12), (0.02, 0.2), (0.45, 0.75)),
    "stone": ((0.06, 0.12), (0.02, 0.2), (0.5, 0.8)),
    "building": ((0.0, 0.12), (0.05, 0.45), (0.35, 0.85)),
    "shopfront": ((0.0, 1.0), (0.0, 0.4), (0.1, 0.6)),
    "car": ((0.0, 1.0), (0.0, 0.7), (0.1, 0.85)),
    "glass": ((0.5, 0.6), (0.05, 0.25), (0.08, 0.25)),
    "tyre": ((0.0, 1.0), (0.0, 0.05), (0.05, 0.12)),
    "trunk": ((0.05, 0.09), (0.4, 0.7), (0.15, 0.3)),
    "canopy": ((0.2, 0.35), (0.4, 0.75), (0.15, 0.4)),
    "hill": ((0.18, 0.3), (0.2, 0.5), (0.3, 0.5)),
    "mountain": ((0.55, 0.65), (0.05, 0.25), (0.45, 0.7)),
    "pole": ((0.0, 1.0), (0.0, 0.1), (0.2, 0.5)),
    "rock": ((0.05, 0.12), (0.05, 0.2), (0.35, 0.6)),
}


@dataclass(frozen=True)
class Style:
    """Appearance controls; geometry never depends on them. Ranges are sampled per image from the seed."""

    name: str
    default_textures: tuple[str, ...] = ("flat", "checker", "stripes")
    textures: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per-role override; repeats weigh more
    palette: str = "vivid"  # "vivid" (any hue, saturated) or "natural" (per-role plausible colours)
    ambient: float = 0.6
    light: float = 0.7  # direct light intensity
    shadows: bool = False
    lamps: bool = False  # light from the scene's further lamps (the shadow-casting light is always on)
    occlusion: float = 0.0  # ambient-occlusion strength (0 = off)
    haze: bool = False  # aerial perspective outdoors
    exposure: tuple[float, float] = (0.0, 0.0)  # EV range (on top of auto exposure when grading > 0)
    noise: tuple[float, float] = (0.0, 0.0)  # sensor noise std range (display units)
    blur: tuple[float, float] = (0.0, 0.0)  # gaussian sigma range in pixels at width 1024
    jpeg: tuple[int, int] | None = None  # JPEG quality range; None = no JPEG round trip
    grading: float = 0.0  # strength of auto exposure, random white balance / contrast / saturation, lens seams
    texture_dirs: tuple[str, ...] = ()  # folders the "image" texture bank is cut from; () = the package's bank

    def textures_for(self, role: str) -> tuple[str, ...]:
        return self.textures.get(role, self.default_textures)


_IMG3 = ("image", "image", "image")
STYLES: dict[str, Style] = {
    "clean": Style("clean"),
    "photo": Style(
        "photo",
        default_textures=("flat", "noise", "image"),
        textures={"wall": ("image", "image", "flat", "flat", "noise", "noise", "stripes", "brick"), "lamp": ("flat",),
                  "floor": _IMG3 + ("wood", "checker", "noise"),
                  "ceiling": ("flat", "flat", "noise"),
                  "furniture": _IMG3 + ("wood", "noise", "flat", "checker"), "fabric": ("image", "noise", "flat"),
                  "rug": ("image", "stripes", "checker"), "picture": ("image",), "door": ("wood", "flat", "image"),
                  "frame": ("flat", "wood"), "screen": ("flat",), "glass": ("flat", "noise"), "tyre": ("flat",),
                  "road": ("noise", "stripes"), "sidewalk": ("checker", "noise", "brick", "image"),
                  "paving": ("checker", "brick", "image", "image"), "building": _IMG3 + ("brick", "noise", "stripes"),
                  "shopfront": ("image", "stripes"), "trunk": ("wood", "noise"), "canopy": ("noise",),
                  "ground": ("noise",), "hill": ("noise",), "mountain": ("noise",),
                  "rock": ("noise",), "stone": ("noise", "image")},
        palette="natural", ambient=0.45, light=1.1, shadows=True, lamps=True, occlusion=0.6, haze=True,
        exposure=(-0.6, 0.5), noise=(0.005, 0.03), blur=(0.0, 1.2), jpeg=(60, 95), grading=1.0),
}


def get_style(style: str | Style) -> Style:
    """A preset by name, a Style as is, or "NAME@DIR[:DIR...]": the preset with its photo textures cut from
    those folders (the form `dap synth --texture-dir` stores, so a resumed dataset checks the folders too)."""
    if isinstance(style, Style):
        return style
    name, _, dirs = style.partition("@")
    if name not in STYLES:
        raise ValueError(f"unknown style {name!r}; use one of {', '.join(STYLES)} or pass a Style")
    if not dirs:
        return STYLES[name]
    st = STYLES[name]
    if "image" not in st.default_textures and not any("image" in v for v in st.textures.values()):
        raise ValueError(f"style {name!r} uses no photo textures, so texture folders do nothing; use photo")
    return dataclasses.replace(st, texture_dirs=tuple(dirs.split(os.pathsep)))


# --------------------------------------------------------------------------------------- texture bank

TILE = 128  # texture bank crops are TILE x TILE pixels
TEXTURE_ATLAS = Path(__file__).resolve().parents[1] / "assets" / "synth_textures.jpg"


def cut_tiles(rgb: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to `count` TILE x TILE crops of a uint8 (H, W, 3) photo that show some detail (not a blank sky), from
    the band between 35 degrees above and 60 below the horizon of a panorama, where ERP stretching is small.
    Large images are first shrunk to 1024 wide so a crop shows a patch of a scene rather than a few pixels."""
    h, w = rgb.shape[:2]
    if max(h, w) > 16 * min(h, w):  # a strip: enlarging its short side to a tile would make the long one huge
        return []
    if w > 1024 or min(h, w) < TILE:
        f = max(1024 / w if w > 1024 else 1.0, TILE / min(h, w))
        rgb = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        h, w = rgb.shape[:2]
    y0, y1 = min(int(0.3 * h), h - TILE), max(min(int(0.85 * h), h) - TILE, min(int(0.3 * h), h - TILE))
    out = []
    for _ in range(count * 8):
        y, x = int(rng.integers(y0, y1 + 1)), int(rng.integers(0, w - TILE + 1))
        crop = rgb[y:y + TILE, x:x + TILE]
        if crop.std() > 12:
            out.append(crop)
            if len(out) == count:
                break
    return out


TEXTURE_BANK_SIZE = 512  # crops cut from a user's texture folders at most (from as many images at most)


def load_texture_tiles(dirs: tuple[str, ...] | list[str] = (), unreadable: list[str] | None = None) -> np.ndarray:
    """Photo crops (N, TILE, TILE, 3) uint8: the bank shipped with the package (`dirs` empty; see
    assets/synth_textures_credits.csv) or crops cut from every image in the folders (deterministic). Images that
    cannot be read are left out, their names appended to `unreadable`."""
    from dap.io import IMAGE_SUFFIXES, is_image_file, read_rgb

    if not dirs:
        atlas = (read_rgb(TEXTURE_ATLAS) * 255 + 0.5).astype(np.uint8)
        rows, cols = atlas.shape[0] // TILE, atlas.shape[1] // TILE
        return atlas.reshape(rows, TILE, cols, TILE, 3).transpose(0, 2, 1, 3, 4).reshape(-1, TILE, TILE, 3)
    for d in dirs:
        if not Path(d).is_dir():
            what = "is a file, not a folder" if Path(d).exists() else "does not exist"
            raise DapError(f"texture folder {d} {what}; pass a folder of photos ({', '.join(IMAGE_SUFFIXES)})")
    # the folders' own images, not their sub-folders' nor hidden files (macOS's ._ files beside each photo)
    files = sorted(f for d in dirs for f in Path(d).iterdir() if is_image_file(f) and not f.name.startswith("."))
    if not files:
        raise DapError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, dirs))}; pass folders of "
                       "photos")
    if len(files) > TEXTURE_BANK_SIZE:  # one crop each grew the bank, and every worker's memory, with the folder
        files = [files[len(files) * i // TEXTURE_BANK_SIZE] for i in range(TEXTURE_BANK_SIZE)]  # spread evenly
    per_image = max(1, min(16, TEXTURE_BANK_SIZE // len(files)))  # a bank of at most ~512 crops (~25 MB in memory)
    tiles, bad = [], []
    for f in files:
        try:
            rgb = (read_rgb(f) * 255 + 0.5).astype(np.uint8)
        except DapError:  # one bad photo costs its crops, not the run
            bad.append(f.name)
            continue
        tiles += cut_tiles(rgb, per_image, np.random.default_rng(zlib.crc32(os.fsencode(f.name))))
    if unreadable is not None:
        unreadable += bad
    if not tiles:
        names = f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
        plain = "too plain (no crop with detail) or strips narrower than 1:16"
        why = (f"none of the {len(files)} can be read ({names})" if len(bad) == len(files)
               else f"{len(bad)} of the {len(files)} cannot be read ({names}), the others are {plain}" if bad
               else f"they are all {plain}")
        raise DapError(f"the images in {', '.join(map(str, dirs))} give no texture: {why}")
    return np.stack(tiles)


def write_texture_atlas(files: list[str], out: str, per_image: int = 6, columns: int = 16) -> int:
    """Cut `per_image` crops from each photo and save them as one JPEG grid (`columns` wide; the last row is
    filled up from the first crops) for `load_texture_tiles()`. Returns the number of crops."""
    tiles = []
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        tiles += cut_tiles(rgb, per_image, np.random.default_rng(zlib.crc32(os.fsencode(Path(f).name))))
    tiles += tiles[: -len(tiles) % columns]
    grid = np.stack(tiles).reshape(-1, columns, TILE, TILE, 3).transpose(0, 2, 1, 3, 4)
    with atomic_write(out) as tmp:
        Image.fromarray(grid.reshape(grid.shape[0] * TILE, columns * TILE, 3)).save(tmp, quality=85, optimize=True)
    return len(tiles)


@functools.lru_cache(maxsize=4)
def _texture_bank(dirs: tuple[str, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mip pyramid of the bank in linear RGB, all levels in one (texels, 3) float16 table, level offsets, N.
    Each crop is scaled towards a mean luminance of 1 (dark ones by at most 3x), so a material's brightness
    comes mostly from its palette whether the crop was cut from a night scene or a snow field."""
    x = (load_texture_tiles(dirs).astype(np.float32) / 255) ** 2.2
    lum = (x * np.array(REC709_LUMA, dtype=np.float32)).sum(-1).mean((1, 2))
    x = np.minimum(x * np.minimum(1 / np.maximum(lum, 1e-3), 3.0)[:, None, None, None], 2.5)
    levels, offsets, off = [], [], 0
    while x.shape[1] >= 4:
        levels.append(x.reshape(-1, 3))
        offsets.append(off)
        off += x.shape[0] * x.shape[1] ** 2
        x = 0.25 * (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2])
    table = torch.from_numpy(np.concatenate(levels)).to(device=device, dtype=torch.float16)
    return table, torch.tensor(offsets, device=device), len(levels[0]) // TILE**2


def _photo_texture(bank: tuple, tile: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   texels_per_pixel: torch.Tensor) -> torch.Tensor:
    """Bilinear, mip-mapped lookup (M, 3) of crops `tile` at surface coordinates (u, v) in tiles (wrapping)."""
    table, offsets, _ = bank
    level = torch.log2(texels_per_pixel.clamp_min(1.0)).floor().clamp(0, len(offsets) - 1).long()
    size = torch.div(TILE, 2**level, rounding_mode="floor")
    base = offsets.index_select(0, level) + tile * size * size
    x, y = torch.frac(u - torch.floor(u)) * size - 0.5, torch.frac(v - torch.floor(v)) * size - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = torch.remainder(x0.long(), size), torch.remainder(y0.long(), size)
    x1, y1 = torch.remainder(x0 + 1, size), torch.remainder(y0 + 1, size)

    def at(yy, xx):
        return table.index_select(0, base + yy * size + xx).float()

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    return top + (at(y1, x0) * (1 - fx) + at(y1, x1) * fx - top) * fy


def _material_table(materials: list[Material], style: Style, device) -> dict[str, torch.Tensor]:
    """Per-material colours (linear RGB), texture code, scale, phase, bank tile and daylight flag as tensors
    indexed by material id. For photo textures `a` is a mild tint of the crop's own colours."""
    a, b, code, scale, phase, tile, outdoor, emit = [], [], [], [], [], [], [], []
    n_tiles = _texture_bank(style.texture_dirs, torch.device(device))[2] if any(
        "image" in style.textures_for(m.role) for m in materials) else 1
    for m in materials:
        if style.palette == "natural":
            (h0, h1), (s0, s1), (v0, v1) = _NATURAL.get(m.role, ((0.0, 1.0), (0.1, 0.5), (0.3, 0.8)))
            h, s, v = h0 + (h1 - h0) * m.hue, s0 + (s1 - s0) * m.sat, v0 + (v1 - v0) * m.val
        else:
            h, s, v = m.hue, 0.45 + 0.45 * m.sat, 0.55 + 0.4 * m.val
        kinds = style.textures_for(m.role)
        name = kinds[min(int(m.pattern * len(kinds)), len(kinds) - 1)]
        ca = colorsys.hsv_to_rgb(h, s, v)
        cb = (0.75, 0.74, 0.7) if name == "brick" else colorsys.hsv_to_rgb(h, min(1.0, s * 1.1), v * 0.6)
        if name == "image":  # the palette's brightness with 30 % of its hue: the crop brings its own colours
            grey = (0.2126 * ca[0] ** 2.2 + 0.7152 * ca[1] ** 2.2 + 0.0722 * ca[2] ** 2.2) ** (1 / 2.2)
            ca = tuple(0.7 * grey + 0.3 * c for c in ca)
        a.append(ca)
        b.append(cb)
        code.append(TEXTURES.index(name))
        scale.append(m.scale)
        phase.append(m.phase)
        tile.append(min(int(m.tile * n_tiles), n_tiles - 1))
        outdoor.append(m.outdoor)
        emit.append(m.emit)
    t = dict(a=torch.tensor(a), b=torch.tensor(b), code=torch.tensor(code), scale=torch.tensor(scale),
             phase=torch.tensor(phase), tile=torch.tensor(tile), outdoor=torch.tensor(outdoor),
             emit=torch.tensor(emit))
    t["a"], t["b"] = t["a"] ** 2.2, t["b"] ** 2.2  # palettes are display-space; shade in linear light
    return {k: v.to(device) for k, v in t.items()}


# ----------------------------------------------------------------------------------------- ray casting

_INF = float("inf")


@dataclass
class _Prim:
    kind: str  # box, shell, plane, cyl, sphere, dome
    p: tuple  # parameters, camera-relative
    center: np.ndarray | None  # bounding sphere, camera-relative (None: unbounded)
    radius: float
    material: int
    instance: int
    faces: tuple[int, int, int] | None = None  # shell materials: wall, floor, ceiling


def _prims(scene: Scene) -> list[_Prim]:
    """Flatten the scene into camera-relative primitives; shells first (they are cast as a group)."""
    cam = np.asarray(scene.camera, dtype=np.float64)
    out = []
    for q in scene.shells:
        lo, hi = np.asarray(q.lo) - cam, np.asarray(q.hi) - cam
        out.append(_Prim("portal" if q.portal else "shell", (lo, hi), (lo + hi) / 2,
                         float(np.linalg.norm(hi - lo)) / 2, q.wall, q.instance, (q.wall, q.floor, q.ceiling)))
    for q in scene.planes:
        out.append(_Prim("plane", (q.y - cam[1],), None, _INF, q.material, q.instance))
    for q in scene.boxes:
        lo, hi = np.asarray(q.lo) - cam, np.asarray(q.hi) - cam
        c, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2
        if q.yaw == 0 and q.tilt == 0:
            out.append(_Prim("box", (lo, hi), c, radius, q.material, q.instance))
        else:  # oriented box: centre, half size, local -> world rotation as nested float tuples
            rot = tuple(tuple(float(v) for v in row) for row in _box_rotation(q))
            out.append(_Prim("obox", (c, (hi - lo) / 2, rot), c, radius, q.material, q.instance))
    for q in scene.cylinders:
        c = np.array([q.x, (q.top + q.bottom) / 2, q.z]) - cam
        out.append(_Prim("cyl", (q.x - cam[0], q.z - cam[2], q.radius, q.top - cam[1], q.bottom - cam[1]), c,
                         math.hypot(q.radius, (q.bottom - q.top) / 2), q.material, q.instance))
    for q in scene.spheres:
        c = np.asarray(q.center) - cam
        out.append(_Prim("dome" if q.inside else "sphere", (c, q.radius), c, q.radius, q.material, q.instance))
    return out


def _safe_inv(d: torch.Tensor) -> torch.Tensor:
    """1 / d. A zero component gives an infinity, which the slab and plane tests handle (IEEE); only a ray
    exactly parallel to and exactly on a face plane gives NaN, which counts as a miss."""
    return torch.reciprocal(d)


@functools.lru_cache(maxsize=2)
def _rays(height: int, width: int, device: torch.device) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...],
                                                                 torch.Tensor]:
    """Ray components (x, y, z) as (H, W) tensors, their safe reciprocals, and the (H * W, 3) ray list.
    Cached: the same grid is reused for every panorama of a dataset. Callers must not modify them."""
    rays = erp_rays(height, width, device=device)
    d = tuple(rays[..., i].contiguous() for i in range(3))
    return d, tuple(_safe_inv(x) for x in d), rays.reshape(-1, 3)


def _slab(lo, hi, o, inv) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays o + t d through the box [lo, hi] (slab method)."""
    tn = tf = None
    for i in range(3):
        ta, tb = (lo[i] - o[i]) * inv[i], (hi[i] - o[i]) * inv[i]
        near, far = torch.minimum(ta, tb), torch.maximum(ta, tb)
        tn = near if tn is None else torch.maximum(tn, near)
        tf = far if tf is None else torch.minimum(tf, far)
    return tn, tf


def _dot(coefs, v):
    """sum(c * x) over the non-zero coefficients, for floats or tensors (explicit sums: matmul results can
    depend on the thread count; a yawed box has five zero or unit entries in its rotation)."""
    out = None
    for c, x in zip(coefs, v, strict=True):
        if c != 0:
            x = x if c == 1 else c * x
            out = x if out is None else out + x
    return out


def _to_local(rot, v) -> list:
    """rot^T @ v."""
    return [_dot((rot[0][i], rot[1][i], rot[2][i]), v) for i in range(3)]


def _to_world(rot, v) -> list:
    """rot @ v."""
    return [_dot(rot[i], v) for i in range(3)]


def _hit(P: _Prim, o, d, inv) -> torch.Tensor:
    """Distance to the first hit of rays o + t d (t > EPS) with a non-shell primitive; inf where missed.
    `o` holds floats (primary rays start at the camera = origin) or tensors (shadow rays)."""
    if P.kind == "box":
        tn, tf = _slab(P.p[0], P.p[1], o, inv)
        return torch.where((tn <= tf) & (tn > EPS), tn, _INF)
    if P.kind == "obox":  # the slab test in the box's own frame (a rotation keeps distances along the ray)
        c, half, rot = P.p
        dl = _to_local(rot, d)
        tn, tf = _slab(-half, half, _to_local(rot, [o[i] - c[i] for i in range(3)]), [_safe_inv(x) for x in dl])
        return torch.where((tn <= tf) & (tn > EPS), tn, _INF)
    if P.kind == "plane":
        t = (P.p[0] - o[1]) * inv[1]
        return torch.where(t > EPS, t, _INF)
    if P.kind in ("sphere", "dome"):
        c, rad = P.p
        ox, oy, oz = c[0] - o[0], c[1] - o[1], c[2] - o[2]
        b = ox * d[0] + oy * d[1] + oz * d[2]
        disc = b * b - (ox * ox + oy * oy + oz * oz - rad * rad)
        sq = disc.clamp_min(0).sqrt()
        t = b + sq if P.kind == "dome" else b - sq
        return torch.where((disc >= 0) & (t > EPS), t, _INF)
    # vertical capped cylinder
    cx, cz, rad, top, bot = P.p
    ox, oz = cx - o[0], cz - o[2]
    a = (d[0] * d[0] + d[2] * d[2]).clamp_min(1e-12)
    b = ox * d[0] + oz * d[2]
    disc = b * b - a * (ox * ox + oz * oz - rad * rad)
    ts = (b - disc.clamp_min(0).sqrt()) / a
    y = o[1] + ts * d[1]
    t = torch.where((disc >= 0) & (ts > EPS) & (y >= top) & (y <= bot), ts, _INF)
    # the cap facing the ray origin (a ray starting beside the cylinder cannot hit a cap from outside)
    oy = o[1]
    if isinstance(oy, torch.Tensor):
        cap_y = torch.where(oy < top, top, torch.where(oy > bot, bot, _INF))
    else:
        cap_y = top if oy < top else bot if oy > bot else _INF
    tc = (cap_y - oy) * inv[1]
    ex, ez = tc * d[0] - ox, tc * d[2] - oz
    cap_ok = (tc > EPS) & (ex * ex + ez * ez <= rad * rad) & (tc < t)
    return torch.where(cap_ok, tc, t)


def _windows(center: np.ndarray | None, radius: float, height: int, width: int, rot: np.ndarray,
             plane_y: float = 0.0) -> list[tuple[slice, slice]]:
    """Pixel windows (rows, cols) that contain every ray that can reach a bounding sphere (camera-relative
    world `center`, `radius`): its ERP footprint in the camera rotated by `rot` (one window, or two when it
    wraps around the seam). Casting only there is what keeps many small objects cheap. center None: the
    plane y = plane_y, reached by the rays below (or above) the horizon, give or take the camera's tilt."""
    full = [(slice(None), slice(None))]
    if center is None:
        tilt = math.acos(max(-1.0, min(1.0, float(rot[1, 1]))))
        _, v = lonlat_to_pixel(0.0, tilt if plane_y > 0 else -tilt, height, width)
        return ([(slice(max(0, math.floor(v) - 1), None), slice(None))] if plane_y > 0 else
                [(slice(0, min(height, math.ceil(v) + 1)), slice(None))])
    center = rot.T @ center  # into the camera frame
    dist = float(np.linalg.norm(center))
    if dist <= radius * 1.001 + 1e-6:
        return full
    a = math.asin(radius / dist)
    lat = math.asin(max(-1.0, min(1.0, -center[1] / dist)))
    lon = math.atan2(center[0], center[2])
    _, v_top = lonlat_to_pixel(0.0, min(lat + a, math.pi / 2), height, width)
    _, v_bot = lonlat_to_pixel(0.0, max(lat - a, -math.pi / 2), height, width)
    rows = slice(max(0, math.floor(v_top) - 1), min(height, math.ceil(v_bot) + 2))
    if abs(lat) + a >= math.pi / 2 - 1e-6:  # cap over a pole: every longitude
        return [(rows, slice(None))]
    half = math.asin(min(1.0, math.sin(a) / math.cos(lat)))
    u0, _ = lonlat_to_pixel(lon - half, 0.0, height, width)
    u1, _ = lonlat_to_pixel(lon + half, 0.0, height, width)
    c0, c1 = math.floor(u0) - 1, math.ceil(u1) + 2
    if c1 - c0 >= width:
        return [(rows, slice(None))]
    if c0 < 0:
        return [(rows, slice(c0 + width, width)), (rows, slice(0, c1))]
    if c1 > width:
        return [(rows, slice(c0, width)), (rows, slice(0, c1 - width))]
    return [(rows, slice(c0, c1))]


def _normals(P: _Prim, px: torch.Tensor, py: torch.Tensor, pz: torch.Tensor) -> torch.Tensor:
    """Unit normals (M, 3) facing the camera side, at camera-relative hit points on P."""
    if P.kind == "obox":
        c, half, rot = P.p
        n = _normals(_Prim("box", (-half, half), None, 0.0, 0, 0), *_to_local(rot, [px - c[0], py - c[1], pz - c[2]]))
        return torch.stack(_to_world(rot, n.unbind(-1)), -1)
    if P.kind in ("box", "shell"):  # the face is the axis where the point is farthest out, relative to size
        lo, hi = P.p
        q = [(x - (lo[i] + hi[i]) / 2) / ((hi[i] - lo[i]) / 2) for i, x in enumerate((px, py, pz))]
        a = [x.abs() for x in q]
        ax0 = (a[0] >= a[1]) & (a[0] >= a[2])
        ax1 = ~ax0 & (a[1] >= a[2])
        ax2 = ~ax0 & ~ax1
        sign = -1.0 if P.kind == "shell" else 1.0
        return torch.stack([torch.where(m, torch.sign(x) * sign, 0.0) for m, x in zip((ax0, ax1, ax2), q, strict=True)],
                           -1)
    if P.kind == "plane":
        return torch.tensor([0.0, -1.0, 0.0], device=px.device).expand(*px.shape, 3)
    if P.kind in ("sphere", "dome"):
        c, rad = P.p
        n = torch.stack([px - c[0], py - c[1], pz - c[2]], -1) / rad
        return -n if P.kind == "dome" else n
    cx, cz, rad, top, bot = P.p
    ex, ez = px - cx, pz - cz
    radial = torch.sqrt(ex * ex + ez * ez).clamp_min(1e-9)
    which = torch.stack([(radial - rad).abs(), (py - top).abs(), (py - bot).abs()], -1).argmin(-1)
    side = torch.stack([ex / radial, torch.zeros_like(ex), ez / radial], -1)
    cap = torch.tensor([0.0, -1.0, 0.0], device=px.device) * torch.where(which == 1, 1.0, -1.0)[..., None]
    return torch.where((which == 0)[..., None], side, cap)


def _boxes_overlap(a: _Prim, b: _Prim) -> bool:
    return bool(np.all(a.p[0] < b.p[1]) and np.all(b.p[0] < a.p[1]))


def _camera(scene: Scene, height: int, width: int, device) -> tuple[tuple, tuple, torch.Tensor, np.ndarray]:
    """World-frame pixel rays of the (rotated) camera: components (H, W), reciprocals, (H * W, 3) list, and
    the rotation (camera -> world, float64)."""
    rot = rotation_matrix(*scene.rotation).numpy()
    d, inv, ray_list = _rays(height, width, torch.device(device))
    if not any(scene.rotation):
        return d, inv, ray_list, rot
    r = rot.astype(np.float32).tolist()
    comps = _to_world(r, ray_list.unbind(-1))
    ray_list = torch.stack(comps, -1)
    d = tuple(x.reshape(height, width) for x in comps)
    return d, tuple(_safe_inv(x) for x in d), ray_list, rot


def _cast(scene: Scene, height: int, width: int, device) -> dict[str, torch.Tensor]:
    """Primary rays: closest-hit distance, primitive index, normal, material and instance per pixel. Everything
    is in world axes (camera-relative positions); `normal` is returned in the camera frame."""
    prims = _prims(scene)
    d, inv, ray_list, rot = _camera(scene, height, width, device)
    o = (0.0, 0.0, 0.0)
    t = torch.full((height, width), _INF, device=device)
    ids = torch.full((height, width), -1, dtype=torch.int32, device=device)
    wins = [_windows(P.center, P.radius, height, width, rot, P.p[0] if P.kind == "plane" else 0.0) for P in prims]

    def update(k: int, rs: slice, cs: slice, tk: torch.Tensor) -> None:
        sub = t[rs, cs]
        ids[rs, cs].masked_fill_(tk < sub, k)
        torch.fmin(sub, tk, out=sub)  # fmin: a NaN (a ray exactly on a face plane) is a miss

    def slab(q: int, rs: slice, cs: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return _slab(prims[q].p[0], prims[q].p[1], o, tuple(x[rs, cs] for x in inv))

    # room shells: exits of each box, dropped where the exit point lies strictly inside another shell or a
    # portal (portals are small: their slabs are computed where needed instead of stored image-sized)
    shells = [k for k, P in enumerate(prims) if P.kind == "shell"]
    tn = {k: torch.full((height, width), _INF, device=device) for k in shells}
    tf = {k: torch.full((height, width), -_INF, device=device) for k in shells}
    for k in shells:
        for rs, cs in wins[k]:
            tn[k][rs, cs], tf[k][rs, cs] = slab(k, rs, cs)
    for k in shells:
        inside = torch.zeros((height, width), dtype=torch.bool, device=device)
        for q, Q in enumerate(prims):
            if q != k and Q.kind in ("shell", "portal") and _boxes_overlap(prims[k], Q):
                for rs, cs in wins[q]:
                    e = tf[k][rs, cs]
                    tnq, tfq = (tn[q][rs, cs], tf[q][rs, cs]) if q in tn else slab(q, rs, cs)
                    inside[rs, cs] |= (e > tnq + EPS) & (e < tfq - EPS)
        for rs, cs in wins[k]:
            e = tf[k][rs, cs]
            update(k, rs, cs, torch.where((e > EPS) & (tn[k][rs, cs] <= e) & ~inside[rs, cs], e, _INF))

    for k, P in enumerate(prims):
        if P.kind not in ("shell", "portal"):
            for rs, cs in wins[k]:
                update(k, rs, cs, _hit(P, o, tuple(x[rs, cs] for x in d), tuple(x[rs, cs] for x in inv)))

    # Bucket the pixels by primitive (a stable sort of the ids) so that each primitive's normals and materials
    # are computed on one contiguous slice: much cheaper than a boolean mask per primitive.
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat.long() + 1, minlength=len(prims) + 1).tolist()
    t_s, d_s = t.reshape(-1).index_select(0, order), ray_list.index_select(0, order)
    n_s = torch.zeros_like(d_s)
    mat_s = torch.zeros(t_s.shape, dtype=torch.int64, device=device)
    planar_s = torch.zeros(t_s.shape, dtype=torch.bool, device=device)
    start = counts[0]  # sky (id -1) sorts first
    for k, P in enumerate(prims):
        end = start + counts[k + 1]
        if end > start:
            p = t_s[start:end, None] * d_s[start:end]
            n = n_s[start:end] = _normals(P, p[:, 0], p[:, 1], p[:, 2])
            planar_s[start:end] = P.kind in ("box", "obox", "shell", "plane")
            if P.faces is None:
                mat_s[start:end] = P.material
            else:  # inward normal pointing up (-y) is the floor, down (+y) the ceiling
                wall, floor, ceil = P.faces
                mat_s[start:end] = torch.where(n[:, 1] < -0.5, floor, torch.where(n[:, 1] > 0.5, ceil, wall))
        start = end
    normal = torch.zeros_like(d_s).index_copy_(0, order, n_s).reshape(height, width, 3)
    if any(scene.rotation):
        normal = torch.stack(_to_local(rot.astype(np.float32).tolist(), normal.unbind(-1)), -1)
    inst_table = torch.tensor([0] + [P.instance for P in prims], dtype=torch.int32, device=device)
    inst = inst_table.index_select(0, flat.long() + 1).reshape(height, width)
    return dict(t=t, ids=ids, normal=normal, inst=inst, prims=prims, order=order, n_sky=counts[0], t_s=t_s,
                d_s=d_s, n_s=n_s, mat_s=mat_s, planar_s=planar_s, d=d, rot=rot)


# ------------------------------------------------------------------------------------------------ shading

# fixed directions/frequencies for a cheap smooth 3-D noise (a sum of plane waves)
_WAVES = torch.from_numpy(
    np.random.default_rng(1234).normal(size=(3, 8)).astype(np.float32)
    / np.linalg.norm(np.random.default_rng(1234).normal(size=(3, 8)), axis=0).astype(np.float32)
    * np.array([1.0, 1.3, 2.1, 2.9, 4.3, 6.1, 8.7, 12.5], dtype=np.float32)
)
_WAVE_PHASE = torch.from_numpy(np.random.default_rng(99).uniform(0, 6.3, 8).astype(np.float32))
_WAVE_AMP = torch.tensor([1.0, 0.8, 0.6, 0.45, 0.33, 0.25, 0.18, 0.13])


def _noise3(q: torch.Tensor) -> torch.Tensor:
    """Smooth pseudo-random field in [0, 1], (M,) for points (M, 3)."""
    # explicit products and sums instead of matmul: BLAS results may depend on the thread count
    wv = _WAVES.to(q.device)
    arg = q[:, 0:1] * wv[0] + q[:, 1:2] * wv[1] + q[:, 2:3] * wv[2] + _WAVE_PHASE.to(q.device)
    w = (torch.sin(arg) * _WAVE_AMP.to(q.device)).sum(-1)
    return (0.5 + 0.5 * w / 2.2).clamp(0, 1)


_MAT_KEYS = ("a", "b", "scale", "phase")


def _texture(name: str, p: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
             scale: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Albedo (M, 3) of procedural texture `name` at world points p with normals n."""
    if name == "flat":
        return a
    q = (p + phase) / scale[:, None]
    if name in ("noise", "wood"):
        f = _noise3(q) * 0.6  # subtle: strong blotches read as bumps in the geometry
        if name == "wood":  # rings around the x axis, disturbed by noise: planks on floors, grain on sides
            f = torch.frac(3.0 * torch.sqrt(q[:, 1] ** 2 + q[:, 2] ** 2) + 2.5 * f) ** 3
    else:  # 2-D patterns on the plane of the dominant normal axis (triplanar)
        ax = n.abs().argmax(-1)
        u = torch.where(ax == 0, q[:, 2], q[:, 0])
        v = torch.where(ax == 1, q[:, 2], q[:, 1])
        if name == "checker":
            f = torch.remainder(torch.floor(u) + torch.floor(v), 2.0)
        elif name == "stripes":
            f = (torch.sin(2 * math.pi * u) * 3 + 0.5).clamp(0, 1)
        else:  # brick: half-offset rows, mortar in colour b, per-brick tint
            row = torch.floor(v * 2)
            uu = u + 0.5 * torch.remainder(row, 2.0)
            mortar = (torch.frac(uu) < 0.06) | (torch.frac(v * 2) < 0.12)
            tint = 0.8 + 0.4 * torch.frac(torch.sin(row * 12.9898 + torch.floor(uu) * 78.233) * 437.5453).abs()
            return torch.where(mortar[:, None], b, a * tint[:, None])
    return a + (b - a) * f[:, None]


def _look(scene: Scene, style: Style) -> dict:
    """Per-image appearance draws (exposure, grading, blur, noise, JPEG quality) from the seed and style."""
    rng = np.random.default_rng([scene.seed, zlib.crc32(style.name.encode()), 1])
    g = style.grading
    return dict(
        ev=float(rng.uniform(*style.exposure)),
        # white balance: a random cast plus a colour temperature (indoor lamps are often warm)
        wb=((1 + g * rng.uniform(-0.06, 0.06, 3))
            * (1 + g * rng.uniform(-0.4, 1.0 if scene.point_light else 0.4) * np.array([0.12, 0.0, -0.15]))
            ).astype(np.float32),
        contrast=float(1 + g * rng.uniform(-0.1, 0.15)),
        saturation=float(1 + g * rng.uniform(-0.25, 0.2)),
        sun=float(1 + g * rng.uniform(-0.25, 0.2)),
        sky=(g * rng.uniform(-0.06, 0.06, 3)).astype(np.float32),
        blur=float(rng.uniform(*style.blur)),
        noise=float(rng.uniform(*style.noise)),
        jpeg=int(rng.integers(style.jpeg[0], style.jpeg[1] + 1)) if style.jpeg else None,
        noise_seed=int(rng.integers(2**31)),
        haze=float(rng.uniform(500, 5000)),  # metres for 63 % of the way to the horizon colour
        clouds=float(rng.uniform(0.0, 0.7)) if style.haze else 0.0,  # cloud cover
        cloud_shift=float(rng.uniform(0, 100)),
        lens=(float(g * rng.uniform(-0.08, 0.08)), float(rng.uniform(-math.pi, math.pi))),  # two-lens gain, seam
    )


def _occlusion(geo: dict, height: int, width: int, radius: float) -> torch.Tensor:
    """Ambient occlusion (H, W) in [0, 1] from distance fields: 1 - how much the nearest solid comes closer than
    `radius` to the point `radius` off the surface along its normal. One field sample per 2 x 2 pixels (it
    varies slowly; a quarter of the cost), evaluated only in the pixel windows where a primitive's bounding
    sphere (grown by `radius`) can be near a hit."""
    t, d, rot = geo["t"][::2, ::2], [x[::2, ::2] for x in geo["d"]], geo["rot"]
    n_world = torch.zeros_like(geo["d_s"]).index_copy_(0, geo["order"], geo["n_s"]).reshape(height, width, 3)
    n_world = n_world[::2, ::2]
    height, width = t.shape
    hit = torch.isfinite(t)
    tt = torch.where(hit, t, 0.0)
    q_all = [tt * d[i] + radius * n_world[..., i] for i in range(3)]
    ratio = torch.ones_like(t)
    for P in geo["prims"]:
        if P.kind in ("plane", "portal", "dome") or P.radius > 200:
            continue
        for rs, cs in _windows(P.center, P.radius + radius, height, width, rot):
            q = [x[rs, cs] for x in q_all]
            if P.kind in ("box", "obox", "shell"):
                if P.kind == "obox":
                    c, half, rr = P.p
                    q = _to_local(rr, [q[i] - c[i] for i in range(3)])
                    lo, hi = -half, half
                else:
                    lo, hi = P.p
                if P.kind == "shell":  # distance to the nearest wall from inside; no effect outside the room
                    e = [torch.minimum(q[i] - lo[i], hi[i] - q[i]) for i in range(3)]
                    sdf = torch.minimum(torch.minimum(e[0], e[1]), e[2])
                    sdf = torch.where(sdf < 0, radius, sdf)
                else:
                    e = [(q[i] - (lo[i] + hi[i]) / 2).abs() - (hi[i] - lo[i]) / 2 for i in range(3)]
                    out = torch.sqrt(sum(x.clamp_min(0) ** 2 for x in e))
                    sdf = out + torch.maximum(torch.maximum(e[0], e[1]), e[2]).clamp_max(0)
            elif P.kind == "sphere":
                c, rad = P.p
                sdf = torch.sqrt((q[0] - c[0]) ** 2 + (q[1] - c[1]) ** 2 + (q[2] - c[2]) ** 2) - rad
            else:  # vertical cylinder
                cx, cz, rad, top, bot = P.p
                er = torch.sqrt((q[0] - cx) ** 2 + (q[2] - cz) ** 2) - rad
                ey = torch.maximum(top - q[1], q[1] - bot)
                sdf = torch.sqrt(er.clamp_min(0) ** 2 + ey.clamp_min(0) ** 2) + torch.maximum(er, ey).clamp_max(0)
            sub = ratio[rs, cs]
            sub.copy_(torch.minimum(sub, sdf / radius))
    ratio = torch.where(hit, ratio.clamp(0, 1), 1.0)
    return ratio.repeat_interleave(2, 0).repeat_interleave(2, 1)[: geo["t"].shape[0], : geo["t"].shape[1]]


def _shade(geo: dict, scene: Scene, style: Style, mats: dict, look: dict) -> torch.Tensor:
    """Linear RGB (H, W, 3): textured surfaces lit by ambient (with occlusion) + a shadowed light (sun or lamp)
    + further lamps, daylight on outdoor materials, haze far away outdoors, sky elsewhere.
    Works on the primitive-sorted pixel lists of `_cast` (sky first), then scatters back to the image."""
    d_s, order, ns = geo["d_s"], geo["order"], geo["n_sky"]
    h, w = geo["t"].shape
    dev = d_s.device
    out = torch.empty_like(d_s)
    light = torch.tensor(scene.light, dtype=torch.float32, device=dev)
    cam = torch.tensor(scene.camera, dtype=torch.float32, device=dev)
    sun = light if not scene.point_light else torch.tensor([0.36, -0.8, 0.48], device=dev)

    ds = d_s[:ns]
    up = (-ds[:, 1]).clamp(0, 1)
    zenith = (torch.tensor([0.25, 0.45, 0.85], device=dev) + torch.from_numpy(look["sky"]).to(dev)) ** 2.2
    horizon = torch.tensor([0.78, 0.86, 0.95], device=dev) ** 2.2
    sky = horizon + (zenith - horizon) * up.sqrt()[:, None]
    c = (ds * sun).sum(-1)  # sun disc and glow
    glow = 6 * torch.exp((c - 1) * 2000) + 0.3 * torch.exp((c - 1) * 6)
    sky = sky + torch.tensor([1.0, 0.9, 0.75], device=dev) * glow[:, None]
    if look["clouds"] > 0:  # a cloud layer: noise on the plane 1 km up, so clouds shrink towards the horizon
        q = ds / (-ds[:, 1:2]).clamp_min(0.03) * torch.tensor([0.003, 0.0, 0.003], device=dev) + look["cloud_shift"]
        cover = ((_noise3(q * 4) - 1 + look["clouds"]) * 4).clamp(0, 1) * up.clamp(0, 0.2)[:, None].squeeze(1) * 5
        sky = sky + (torch.tensor([0.85, 0.86, 0.88], device=dev) * (1 - 0.4 * up)[:, None] - sky) * cover[:, None]
    out[:ns] = torch.where((ds[:, 1] > 0)[:, None], horizon * 0.5, sky)  # below the horizon: open test scenes

    th, dh, n, mid = geo["t_s"][ns:], d_s[ns:], geo["n_s"][ns:], geo["mat_s"][ns:]
    p_rel = th[:, None] * dh
    p = p_rel + cam
    albedo = torch.empty_like(p)
    image, noise = TEXTURES.index("image"), TEXTURES.index("noise")
    codes = mats["code"].index_select(0, mid)
    codes = torch.where((codes == image) & ~geo["planar_s"][ns:], noise, codes)  # photos only on flat faces
    for code, count in enumerate(torch.bincount(codes, minlength=len(TEXTURES)).tolist()):
        if count == 0:
            continue
        idx = (codes == code).nonzero().squeeze(1)
        ms = mid.index_select(0, idx)
        if code == image:
            a = _image_albedo(mats, ms, *(x.index_select(0, idx) for x in (p, n, dh, th)), h, style)
        else:
            a = _texture(TEXTURES[code], p.index_select(0, idx), n.index_select(0, idx),
                         *(mats[k].index_select(0, ms) for k in _MAT_KEYS))
        albedo.index_copy_(0, idx, a)

    amb = style.ambient * (0.75 - 0.25 * n[:, 1])
    if style.occlusion > 0:
        ao = _occlusion(geo, h, w, 0.5 if scene.kind == "indoor" else 1.5).reshape(-1).index_select(0, order[ns:])
        amb = amb * (1 - style.occlusion * (1 - ao))
    # lighting on separate x, y, z components: reductions over a last axis of 3 are slow in torch
    pc, nc = p_rel.unbind(-1), n.unbind(-1)
    outdoor = mats["outdoor"].index_select(0, mid)
    sun_ndl = sum(float(sun[i]) * nc[i] for i in range(3)).clamp_min(0)
    if scene.point_light:
        ndl, dist2 = _lamp(pc, nc, [float(light[i] - cam[i]) for i in range(3)])
        power = 1.6 * style.light * look["sun"] / (1 + 0.04 * dist2)
    else:
        ndl, power = sun_ndl, style.light * look["sun"]
    if style.shadows:
        ldir = (light - cam - p_rel) / torch.sqrt(dist2)[:, None] if scene.point_light else sun.expand_as(p)
        # fittings sit above their lamps; what is seen through windows is lit by daylight, not by the lamp
        casters = [P for P in geo["prims"] if not (scene.materials[P.material].emit
                                                   or scene.point_light and scene.materials[P.material].outdoor)]
        receivers = (ndl > 0) & ~outdoor if scene.point_light else ndl > 0
        ndl = ndl * ~_shadowed(casters, p_rel, n, ldir, receivers, light - cam if scene.point_light else light,
                               scene.point_light)
    shade = amb + power * ndl
    for lamp in scene.lamps if style.lamps else ():  # no shadows: dimmer, and each would cost a shadow pass
        ndl, dist2 = _lamp(pc, nc, [lamp[i] - scene.camera[i] for i in range(3)])
        shade = shade + style.light * ndl / (1 + 0.08 * dist2)
    if scene.point_light and bool(outdoor.any()):  # the view through windows: daylight, brighter than inside
        shade = torch.where(outdoor, 2.5 * (style.ambient * (0.75 - 0.25 * n[:, 1]) + style.light * sun_ndl), shade)
    if bool(mats["emit"].any()):
        shade = torch.where(mats["emit"].index_select(0, mid), 4.0 * style.light, shade)
    col = albedo * shade[:, None]
    if style.haze and (not scene.point_light or bool(outdoor.any())):  # aerial perspective outdoors
        f = (1 - torch.exp(-th / look["haze"]))[:, None]
        if scene.point_light:
            f = f * outdoor[:, None]
        col = col + (horizon * (2.5 if scene.point_light else 1.0) - col) * f
    out[ns:] = col
    return torch.empty_like(out).index_copy_(0, order, out).reshape(h, w, 3)


def _lamp(p: tuple, n: tuple, lamp: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine towards a point light at camera-relative `lamp` (clamped at 0) and the squared distance to it,
    for points p and normals n given as (x, y, z) component tensors."""
    v = [lamp[i] - p[i] for i in range(3)]
    dist2 = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).clamp_min(1e-12)
    return ((n[0] * v[0] + n[1] * v[1] + n[2] * v[2]) * torch.rsqrt(dist2)).clamp_min(0), dist2


def _image_albedo(mats: dict, mid: torch.Tensor, p: torch.Tensor, n: torch.Tensor, d: torch.Tensor,
                  t: torch.Tensor, height: int, style: Style) -> torch.Tensor:
    """Photo-crop albedo on planar faces: coordinates along the face (horizontal and vertical on walls, x and
    z on floors) in metres, one crop per 2 * scale metres, mip level from the pixel's footprint."""
    bank = _texture_bank(style.texture_dirs, p.device)
    wall = n[:, 1].abs() < 0.7
    tx, tz = torch.where(wall, n[:, 2], 1.0), torch.where(wall, -n[:, 0], 0.0)
    size = 2 * mats["scale"].index_select(0, mid)
    phase = mats["phase"].index_select(0, mid)
    u = ((p[:, 0] * tx + p[:, 2] * tz) / torch.sqrt(tx * tx + tz * tz) + phase[:, 0]) / size
    v = (torch.where(wall, p[:, 1], p[:, 2]) + phase[:, 1]) / size
    footprint = t * (math.pi / height) / (n * d).sum(-1).abs().clamp_min(0.05)  # metres per pixel on the face
    rgb = _photo_texture(bank, mats["tile"].index_select(0, mid), u, v, footprint / size * TILE)
    return rgb * mats["a"].index_select(0, mid)


def _shadowed(prims: list[_Prim], p: torch.Tensor, n: torch.Tensor, ldir: torch.Tensor, lit: torch.Tensor,
              light: torch.Tensor, point_light: bool) -> torch.Tensor:
    """True where a solid primitive blocks the segment from the surface point (camera-relative) to the light.

    Each shadow ray gets two coordinates in which an occluder's bounding sphere covers one interval: across
    the sun direction (two axes perpendicular to it) for the sun, azimuth and elevation seen from the lamp for
    a point light. Rays are sorted by the first, so an occluder only looks at a contiguous run of rays,
    filters that run by the second, and is tested exactly against the few rays left.
    """
    out = torch.zeros_like(lit)
    idx = lit.nonzero().squeeze(1)
    if idx.numel() == 0:
        return out
    # start just off the surface so it does not shadow itself
    o = p.index_select(0, idx) + n.index_select(0, idx) * 2e-3
    light_np = light.cpu().double().numpy()
    if point_light:
        rel = o - light
        key = torch.atan2(rel[:, 0], rel[:, 2])
        key2 = torch.atan2(-rel[:, 1], torch.sqrt(rel[:, 0] ** 2 + rel[:, 2] ** 2))
    else:
        e1 = np.cross(light_np, [0.0, 1.0, 0.0])
        e1 = e1 / np.linalg.norm(e1) if np.linalg.norm(e1) > 1e-6 else np.array([1.0, 0.0, 0.0])
        e2 = np.cross(light_np, e1)
        key = o[:, 0] * float(e1[0]) + o[:, 1] * float(e1[1]) + o[:, 2] * float(e1[2])
        key2 = o[:, 0] * float(e2[0]) + o[:, 1] * float(e2[1]) + o[:, 2] * float(e2[2])
    # quantised integer keys: a stable integer argsort is several times faster than sorting floats
    k0, scale = float(key.min()), 65535.0 / max(float(key.max() - key.min()), 1e-9)
    order = torch.argsort(((key - k0) * scale).to(torch.int32), stable=True)
    qkey = ((key.index_select(0, order) - k0) * scale).to(torch.int32)
    o, key2 = o.index_select(0, order), key2.index_select(0, order)
    blocked = torch.zeros(o.shape[0], dtype=torch.bool, device=p.device)
    for P in prims:
        if P.kind not in ("box", "obox", "cyl", "sphere") or P.radius > 200:  # hills are too far away to matter
            continue
        c, rad = np.asarray(P.center, dtype=np.float64), P.radius
        if point_light:
            cl = c - light_np
            dist, dh = float(np.linalg.norm(cl)), math.hypot(cl[0], cl[2])
            if dist <= rad:
                ranges, band = [(-math.inf, math.inf)], (-math.inf, math.inf)
            else:
                el, half_el = math.atan2(-cl[1], dh), math.asin(rad / dist)
                band = (el - half_el, el + half_el)
                if dh <= rad or abs(el) + half_el >= math.pi / 2:
                    ranges = [(-math.inf, math.inf)]
                else:
                    mid, half = math.atan2(cl[0], cl[2]), math.asin(min(1.0, rad / dh))
                    lo, hi = mid - half, mid + half
                    ranges = ([(lo + 2 * math.pi, math.inf), (-math.inf, hi)] if lo < -math.pi else
                              [(lo, math.inf), (-math.inf, hi - 2 * math.pi)] if hi > math.pi else [(lo, hi)])
        else:
            u, v = float(c @ e1), float(c @ e2)
            ranges, band = [(u - rad, u + rad)], (v - rad, v + rad)
        for lo, hi in ranges:
            qlo, qhi = (max(-1.0, min(65536.0, (x - k0) * scale)) for x in (lo, hi))
            bounds = torch.tensor([math.floor(qlo), math.floor(qhi) + 1], dtype=torch.int32, device=qkey.device)
            a, b = torch.searchsorted(qkey, bounds).tolist()
            if b <= a:
                continue
            k2 = key2[a:b]
            cand = ((k2 >= band[0]) & (k2 <= band[1])).nonzero().squeeze(1) + a
            if cand.numel() == 0:
                continue
            oc = o.index_select(0, cand)
            if point_light:
                v = light - oc
                tmax = v.norm(dim=-1)
                dd = (v / tmax[:, None]).unbind(-1)
            else:
                dd, tmax = tuple(x.reshape(1) for x in light.unbind(-1)), math.inf
            tk = _hit(P, oc.unbind(-1), dd, tuple(_safe_inv(x) for x in dd))
            blocked[cand] |= tk < tmax
    out[idx.index_select(0, order)] = blocked
    return out


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of an (H, W, C) image that wraps around in longitude and clamps at the poles."""
    r = max(1, math.ceil(3 * sigma))
    x = np.pad(img.cpu().numpy(), ((0, 0), (r, r), (0, 0)), mode="wrap")
    y = cv2.GaussianBlur(x, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REPLICATE)
    return torch.from_numpy(np.ascontiguousarray(y[:, r:-r])).to(img.device)


def _finish(lin: torch.Tensor, style: Style, look: dict) -> torch.Tensor:
    """Camera model: exposure, white balance, tone curve, gamma, grading, blur, sensor noise, JPEG."""
    x = lin * (2.0 ** look["ev"]) * torch.from_numpy(look["wb"]).to(lin.device)
    if style.grading > 0:
        # auto exposure: the log-average luminance maps to mid grey, as a camera meters a bright window or sky
        lum = (x * torch.tensor(REC709_LUMA, device=x.device)).sum(-1)
        # summed in float64: a float32 sum's rounding depends on how many threads split it, and the image with it
        key = float(torch.exp(torch.log(lum.double() + 1e-3).mean()).float())
        x = x * min(4.0, max(0.25, 0.25 / key))
        # a dual-lens 360 camera: the two halves differ slightly in gain, blended across the stitching seams
        gain, seam = look["lens"]
        lon = (torch.arange(x.shape[1], device=x.device) + 0.5) / x.shape[1] * 2 * math.pi - math.pi
        x = x * (1 + gain * torch.tanh(3 * torch.cos(lon - seam)))[None, :, None]
        x = x * (1 + x / 4) / (1 + x)  # soft highlight roll-off instead of a hard clip
    y = x.clamp(0, 1) ** (1 / 2.2)
    if style.grading > 0:
        y = (y - 0.5) * look["contrast"] + 0.5
        grey = (y * torch.tensor([0.299, 0.587, 0.114], device=y.device)).sum(-1, keepdim=True)
        y = (grey + (y - grey) * look["saturation"]).clamp(0, 1)
    sigma = look["blur"] * y.shape[1] / 1024
    if sigma > 0.3:
        y = _blur(y, sigma)
    if look["noise"] > 0:
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(look["noise_seed"]))
        y = (y + look["noise"] * g.to(y.device)).clamp(0, 1)
    if look["jpeg"] is not None:
        buf = io.BytesIO()
        Image.fromarray((y.cpu().numpy() * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=look["jpeg"])
        y = torch.from_numpy(np.asarray(Image.open(buf)).astype(np.float32) / 255).to(y.device)
    return y.clamp(0, 1)


def render(scene: Scene, height: int, width: int, style: str | Style = "clean", supersample: int = 1, *,
           device: torch.device | str | None = None) -> dict[str, np.ndarray]:
    """Ray-cast `scene` into an ERP panorama.

    Returns numpy arrays: rgb float32 (H, W, 3) in [0, 1]; depth float32 (H, W) metres along the ray (0 = sky);
    normals float32 (H, W, 3) camera frame, facing the camera (0 for sky); sky_mask bool (rays that hit
    nothing); instance int32 (0 = sky); range_mask bool (sky or depth > 100 m).
    Geometry is always cast at pixel centres; `supersample` s > 1 shades an (sH, sW) grid and box-filters it
    for anti-aliased RGB.
    """
    check_erp_shape(height, width, "render size")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    st = get_style(style)
    look = _look(scene, st)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.no_grad():
        mats = _material_table(scene.materials, st, device)
        geo = _cast(scene, height, width, device)
        if supersample == 1:
            lin = _shade(geo, scene, st, mats, look)
        else:
            s = supersample
            fine = _cast(scene, height * s, width * s, device)
            lin = _shade(fine, scene, st, mats, look).reshape(height, s, width, s, 3).mean((1, 3))
        rgb = _finish(lin, st, look)
        hit = geo["ids"] >= 0
        depth = torch.where(hit, geo["t"], 0.0)
    sky = ~hit
    return dict(rgb=rgb.cpu().numpy().astype(np.float32), depth=depth.cpu().numpy().astype(np.float32),
                normals=geo["normal"].cpu().numpy(), sky_mask=sky.cpu().numpy(),
                instance=geo["inst"].cpu().numpy(), range_mask=(sky | (depth > MAX_RANGE)).cpu().numpy())


def depth_stats(out: dict[str, np.ndarray]) -> dict[str, float]:
    """Summary of a render for manifests: depth min/median/max over hit pixels, sky and out-of-range fractions."""
    d = out["depth"][~out["sky_mask"]]
    return dict(depth_min=float(d.min()) if d.size else 0.0, depth_median=float(np.median(d)) if d.size else 0.0,
                depth_max=float(d.max()) if d.size else 0.0, sky_fraction=float(out["sky_mask"].mean()),
                range_fraction=float(out["range_mask"].mean()))


def contact_sheet(path: str, seeds: tuple[int, ...] = (0, 1, 2, 3), height: int = 192, supersample: int = 2) -> None:
    """Save a PNG grid: for indoor and outdoor scenes of each seed, a row of clean RGB | photo RGB | depth
    (turbo, 0.3-10 m indoor, 0.3-100 m outdoor; black = range mask: sky or beyond 100 m)."""
    from PIL import ImageDraw

    from dap.io import colorize_depth, write_rgb

    rows = []
    for kind in KINDS:
        for seed in seeds:
            scene = make_scene(seed, kind)
            clean = render(scene, height, 2 * height, "clean", supersample)
            photo = render(scene, height, 2 * height, "photo", supersample)
            depth = np.where(clean["range_mask"], 0.0, clean["depth"])
            color = colorize_depth(depth, min_depth=0.3, max_depth=10.0 if kind == "indoor" else 100.0)
            tiles = [(clean["rgb"] * 255 + 0.5).astype(np.uint8), (photo["rgb"] * 255 + 0.5).astype(np.uint8), color]
            row = Image.fromarray(np.concatenate(tiles, axis=1))
            ImageDraw.Draw(row).text((4, 2), f"{kind} seed {seed} ({scene.layout}): clean | photo | depth",
                                     fill=(255, 255, 255))
            rows.append(np.asarray(row))
    write_rgb(path, np.concatenate(rows, axis=0))
