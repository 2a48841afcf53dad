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

import argparse
import colorsys
import dataclasses
import functools
import io
import math
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from dap.geometry import check_erp_shape, erp_rays, lonlat_to_pixel

MAX_RANGE = 100.0  # metres; farther hits and sky form the range mask
EPS = 1e-4  # smallest accepted ray distance (metres)
KINDS = ("indoor", "outdoor")
RENDERER_VERSION = 1  # bump whenever the pixels for a given seed change: resuming a dataset checks it

Vec3 = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Material:
    """Random draws in [0, 1) that a `Style` maps to colours and a texture; `role` picks the palette."""

    role: str
    hue: float
    sat: float
    val: float
    pattern: float
    scale: float = 1.0  # texture period, metres
    phase: Vec3 = (0.0, 0.0, 0.0)  # texture offset, metres


@dataclass(frozen=True)
class Box:
    lo: Vec3
    hi: Vec3
    material: int
    instance: int


@dataclass(frozen=True)
class Shell:
    lo: Vec3
    hi: Vec3
    wall: int
    floor: int
    ceiling: int
    instance: int


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
    direction towards the sun (outdoor)."""

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
                   planes=items(Plane, "planes"))

    @property
    def num_primitives(self) -> int:
        return len(self.shells) + len(self.boxes) + len(self.cylinders) + len(self.spheres) + len(self.planes)


class _Builder:
    def __init__(self, seed: int, kind: str):
        self.rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        self.scene = Scene(seed=seed, kind=kind, camera=(0.0, 0.0, 0.0), materials=[])
        self._instance = 0

    def material(self, role: str, scale: tuple[float, float] = (0.3, 1.5)) -> int:
        r = self.rng
        self.scene.materials.append(Material(role, *(float(v) for v in r.random(4)),
                                             scale=float(r.uniform(*scale)),
                                             phase=tuple(float(v) for v in r.uniform(0, 10, 3))))
        return len(self.scene.materials) - 1

    def instance(self) -> int:
        self._instance += 1
        return self._instance

    def box(self, lo, hi, material: int, instance: int | None = None) -> None:
        self.scene.boxes.append(Box(_v(lo), _v(hi), material, instance or self.instance()))

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


def _indoor(b: _Builder) -> None:
    r, s = b.rng, b.scene
    # rooms as footprints (x0, z0, x1, z1, height); later rooms only grow towards +x/+z so they never overlap
    w, d, h = r.uniform(2.5, 8.0), r.uniform(2.5, 8.0), r.uniform(2.4, 3.6)
    wall, floor, ceil = b.material("wall"), b.material("floor", (0.2, 0.8)), b.material("ceiling")
    inst = b.instance()
    rooms = [(0.0, 0.0, w, d, h)]
    s.shells.append(Shell((0.0, -h, 0.0), (w, 0.0, d), wall, floor, ceil, inst))
    s.layout = str(r.choice(["box", "l_shape", "rooms"], p=[0.3, 0.3, 0.4]))
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
            wall, floor, ceil = b.material("wall"), b.material("floor", (0.2, 0.8)), b.material("ceiling")
            s.shells.append(Shell((x0, -h2, z0), (x0 + w2, 0.0, z0 + d2), wall, floor, ceil, b.instance()))
            rooms.append((x0, z0, x0 + w2, z0 + d2, h2))

    margin = min(r.uniform(0.25, 1.0), w / 2 - 0.05, d / 2 - 0.05)
    cam = (r.uniform(margin, w - margin), -r.uniform(1.0, min(1.9, h - 0.3)), r.uniform(margin, d - margin))
    s.camera = _v(cam)
    s.point_light = True
    s.light = _v((w / 2 + r.uniform(-0.5, 0.5), -h + 0.3, d / 2 + r.uniform(-0.5, 0.5)))

    def clear_of_camera(x0, z0, x1, z1) -> bool:
        return not (x0 - 0.3 < cam[0] < x1 + 0.3 and z0 - 0.3 < cam[2] < z1 + 0.3)

    for rx0, rz0, rx1, rz1, rh in rooms:
        for _ in range(int(r.integers(2, 7))):
            item = r.choice(["cabinet", "table", "stool", "ball", "lamp", "pillar"])
            for _try in range(6):
                sx, sz = r.uniform(0.3, 1.6), r.uniform(0.3, 1.6)
                if rx1 - rx0 < sx + 0.1 or rz1 - rz0 < sz + 0.1:
                    break
                x0, z0 = r.uniform(rx0 + 0.02, rx1 - sx), r.uniform(rz0 + 0.02, rz1 - sz)
                if clear_of_camera(x0, z0, x0 + sx, z0 + sz):
                    _furniture(b, str(item), x0, z0, sx, sz, rh)
                    break


def _furniture(b: _Builder, item: str, x0: float, z0: float, sx: float, sz: float, room_h: float) -> None:
    r = b.rng
    m, inst = b.material("furniture", (0.1, 0.6)), b.instance()
    cx, cz, rad = x0 + sx / 2, z0 + sz / 2, min(sx, sz) / 2
    if item == "cabinet":
        b.box((x0, -r.uniform(0.4, min(2.2, room_h - 0.1)), z0), (x0 + sx, 0.0, z0 + sz), m, inst)
    elif item == "table":
        top, th, leg = -r.uniform(0.45, 1.0), 0.04, 0.05
        b.box((x0, top - th, z0), (x0 + sx, top, z0 + sz), m, inst)
        for lx in (x0, x0 + sx - leg):
            for lz in (z0, z0 + sz - leg):
                b.box((lx, top, lz), (lx + leg, 0.0, lz + leg), m, inst)
    elif item == "stool":
        b.cylinder(cx, cz, rad, -r.uniform(0.3, 0.8), 0.0, m, inst)
    elif item == "ball":
        rb = min(rad, r.uniform(0.1, 0.5))
        b.sphere((cx, -rb, cz), rb, m, inst)
    elif item == "lamp":
        hl = r.uniform(1.0, min(1.9, room_h - 0.4))
        b.cylinder(cx, cz, 0.03, -hl, 0.0, m, inst)
        b.sphere((cx, -hl - 0.15, cz), 0.18, b.material("furniture"), inst)
    else:  # pillar to the ceiling
        b.cylinder(cx, cz, min(rad, 0.3), -room_h, 0.0, m, inst)


def _outdoor(b: _Builder) -> None:
    r, s = b.rng, b.scene
    s.layout = str(r.choice(["street", "park"], p=[0.65, 0.35]))
    s.planes.append(Plane(0.0, b.material("ground", (0.5, 3.0)), b.instance()))
    el, az = math.radians(r.uniform(15, 70)), r.uniform(-math.pi, math.pi)
    s.light = (math.cos(el) * math.sin(az), -math.sin(el), math.cos(el) * math.cos(az))
    cam_h = r.uniform(1.4, 2.0) if r.random() < 0.8 else r.uniform(3.0, 12.0)
    length = r.uniform(120.0, 250.0)  # street half-length: buildings beyond 100 m down the street

    if s.layout == "street":
        road, walk = r.uniform(3.0, 6.0), r.uniform(1.5, 4.0)  # half road width, sidewalk width
        b.box((-road, -0.02, -length), (road, 0.0, length), b.material("road", (1.0, 4.0)))
        walk_m = b.material("sidewalk", (0.3, 1.0))
        for side in (-1, 1):
            x_in, x_out = side * road, side * (road + walk)
            b.box((min(x_in, x_out), -0.15, -length), (max(x_in, x_out), 0.0, length), walk_m)
            z = -length + r.uniform(0, 10)
            while z < length and len(s.boxes) < 40:
                lz, dep, hb = r.uniform(8, 30), r.uniform(8, 25), r.uniform(4, 40) * (1.5 if r.random() < 0.1 else 1)
                x_near = road + walk + r.uniform(0, 3)
                xa, xb = side * x_near, side * (x_near + dep)
                b.box((min(xa, xb), -hb, z), (max(xa, xb), 0.0, z + lz), b.material("building", (0.5, 3.0)))
                z += lz + r.uniform(0, 6)
            z = r.uniform(-20, -5)
            trunk, canopy = b.material("trunk", (0.1, 0.4)), b.material("canopy", (0.3, 1.5))
            while z < 60 and len(s.cylinders) < 16:
                _tree(b, side * (road + walk * r.uniform(0.3, 0.7)), z, trunk, canopy)
                z += r.uniform(8, 20)
        cam_x = r.uniform(-road - walk * 0.5, road + walk * 0.5)
        if abs(cam_x) > road - 0.5:  # on the sidewalk: stay clear of the tree line
            cam_x = float(np.clip(cam_x, -road + 0.5, road - 0.5))
        cam = (cam_x, -cam_h, r.uniform(-10, 10))
        pole_m = b.material("pole", (0.2, 1.0))
        for _ in range(int(r.integers(0, 4))):
            b.cylinder(r.choice([-1, 1]) * road * 0.95, r.uniform(-40, 40), 0.08, -r.uniform(5, 9), 0.0, pole_m)
    else:
        cam = (r.uniform(-2, 2), -cam_h, r.uniform(-2, 2))
        trunk, canopy = b.material("trunk", (0.1, 0.4)), b.material("canopy", (0.3, 1.5))
        rock = b.material("rock", (0.2, 1.0))
        for _ in range(int(r.integers(6, 20))):
            dist, ang = r.uniform(4, 80), r.uniform(-math.pi, math.pi)
            x, z = dist * math.sin(ang), dist * math.cos(ang)
            if r.random() < 0.75:
                _tree(b, x, z, trunk, canopy)
            else:
                rr = r.uniform(0.3, 2.0)
                b.sphere((x, rr * r.uniform(0.2, 0.7), z), rr, rock)
        bench = b.material("furniture", (0.1, 0.5))
        for _ in range(int(r.integers(0, 3))):
            x, z = r.uniform(-12, 12), r.uniform(-12, 12)
            if abs(x - cam[0]) > 2 and abs(z - cam[2]) > 2:
                b.box((x, -0.45, z), (x + 1.6, 0.0, z + 0.5), bench)
        for _ in range(int(r.integers(0, 6))):  # skyline far away
            dist, ang = r.uniform(150, 400), r.uniform(-math.pi, math.pi)
            x, z, size = dist * math.sin(ang), dist * math.cos(ang), r.uniform(15, 40)
            b.box((x, -r.uniform(20, 90), z), (x + size, 0.0, z + size), b.material("building", (1.0, 4.0)))

    hill = b.material("hill", (5.0, 30.0))
    for _ in range(int(r.integers(2, 6))):  # big spheres sunk into the ground: distant hills
        rad, ang, k = r.uniform(150, 600), r.uniform(-math.pi, math.pi), r.uniform(0.6, 0.95)
        dist = rad * math.sqrt(1 - k * k) + r.uniform(120, 600)
        b.sphere((dist * math.sin(ang), k * rad, dist * math.cos(ang)), rad, hill)
    s.camera = _v(cam)


def _tree(b: _Builder, x: float, z: float, trunk: int, canopy: int) -> None:
    r, inst = b.rng, b.instance()
    th, cr = r.uniform(1.8, 4.0), r.uniform(1.0, 3.0)
    b.cylinder(x, z, r.uniform(0.1, 0.3), -th - 0.5 * cr, 0.0, trunk, inst)
    b.sphere((x, -th - cr * 0.8, z), cr, canopy, inst)


def _drop_solids_around_camera(s: Scene, margin: float = 0.2) -> None:
    """Remove solid primitives that contain (or nearly touch) the camera: a camera inside a solid sees nothing."""
    c = np.asarray(s.camera)
    s.boxes = [q for q in s.boxes
               if not (np.all(c > np.asarray(q.lo) - margin) and np.all(c < np.asarray(q.hi) + margin))]
    s.cylinders = [q for q in s.cylinders
                   if not (math.hypot(c[0] - q.x, c[2] - q.z) < q.radius + margin
                           and q.top - margin < c[1] < q.bottom + margin)]
    s.spheres = [q for q in s.spheres
                 if q.inside or np.linalg.norm(c - np.asarray(q.center)) > q.radius + margin]


# ----------------------------------------------------------------------------------------------- style

TEXTURES = ("flat", "checker", "stripes", "brick", "noise", "wood")

# role -> (hue, saturation, value) ranges of the "natural" palette; HSV in display space
_NATURAL = {
    "wall": ((0.05, 0.15), (0.03, 0.25), (0.6, 0.9)),
    "floor": ((0.04, 0.11), (0.25, 0.6), (0.3, 0.65)),
    "ceiling": ((0.08, 0.15), (0.0, 0.08), (0.8, 0.95)),
    "furniture": ((0.0, 1.0), (0.15, 0.6), (0.2, 0.75)),
    "ground": ((0.17, 0.3), (0.3, 0.6), (0.25, 0.45)),
    "road": ((0.55, 0.65), (0.0, 0.08), (0.2, 0.35)),
    "sidewalk": ((0.06, 0.12), (0.02, 0.1), (0.5, 0.7)),
    "building": ((0.0, 0.12), (0.05, 0.45), (0.35, 0.85)),
    "trunk": ((0.05, 0.09), (0.4, 0.7), (0.15, 0.3)),
    "canopy": ((0.2, 0.35), (0.4, 0.75), (0.15, 0.4)),
    "hill": ((0.18, 0.3), (0.2, 0.5), (0.3, 0.5)),
    "pole": ((0.0, 1.0), (0.0, 0.1), (0.2, 0.5)),
    "rock": ((0.05, 0.12), (0.05, 0.2), (0.35, 0.6)),
}


@dataclass(frozen=True)
class Style:
    """Appearance controls; geometry never depends on them. Ranges are sampled per image from the seed."""

    name: str
    default_textures: tuple[str, ...] = ("flat", "checker", "stripes")
    textures: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per-role override
    palette: str = "vivid"  # "vivid" (any hue, saturated) or "natural" (per-role plausible colours)
    ambient: float = 0.6
    light: float = 0.7  # direct light intensity
    shadows: bool = False
    exposure: tuple[float, float] = (0.0, 0.0)  # EV range
    noise: tuple[float, float] = (0.0, 0.0)  # sensor noise std range (display units)
    blur: tuple[float, float] = (0.0, 0.0)  # gaussian sigma range in pixels at width 1024
    jpeg: tuple[int, int] | None = None  # JPEG quality range; None = no JPEG round trip
    grading: float = 0.0  # strength of random white balance / contrast / saturation

    def textures_for(self, role: str) -> tuple[str, ...]:
        return self.textures.get(role, self.default_textures)


STYLES: dict[str, Style] = {
    "clean": Style("clean"),
    "photo": Style(
        "photo",
        default_textures=("flat", "noise"),
        textures={"wall": ("flat", "noise", "stripes", "brick"), "floor": ("wood", "checker", "noise"),
                  "furniture": ("wood", "noise", "flat", "checker"), "road": ("noise", "stripes"),
                  "sidewalk": ("checker", "noise", "brick"), "building": ("brick", "noise", "stripes", "flat"),
                  "trunk": ("wood", "noise"), "canopy": ("noise",), "ground": ("noise",), "hill": ("noise",),
                  "rock": ("noise",)},
        palette="natural", ambient=0.45, light=1.1, shadows=True, exposure=(-0.7, 0.5), noise=(0.005, 0.03),
        blur=(0.0, 1.2), jpeg=(60, 95), grading=1.0),
}


def get_style(style: str | Style) -> Style:
    if isinstance(style, Style):
        return style
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {', '.join(STYLES)} or pass a Style")
    return STYLES[style]


def _material_table(materials: list[Material], style: Style, device) -> dict[str, torch.Tensor]:
    """Per-material colours (linear RGB), texture code, scale and phase as tensors indexed by material id."""
    a, b, code, scale, phase = [], [], [], [], []
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
        a.append(ca)
        b.append(cb)
        code.append(TEXTURES.index(name))
        scale.append(m.scale)
        phase.append(m.phase)
    t = dict(a=torch.tensor(a), b=torch.tensor(b), code=torch.tensor(code), scale=torch.tensor(scale),
             phase=torch.tensor(phase))
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
        out.append(_Prim("shell", (lo, hi), (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2, q.wall, q.instance,
                         (q.wall, q.floor, q.ceiling)))
    for q in scene.planes:
        out.append(_Prim("plane", (q.y - cam[1],), None, _INF, q.material, q.instance))
    for q in scene.boxes:
        lo, hi = np.asarray(q.lo) - cam, np.asarray(q.hi) - cam
        out.append(_Prim("box", (lo, hi), (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2, q.material, q.instance))
    for q in scene.cylinders:
        c = np.array([q.x, (q.top + q.bottom) / 2, q.z]) - cam
        out.append(_Prim("cyl", (q.x - cam[0], q.z - cam[2], q.radius, q.top - cam[1], q.bottom - cam[1]), c,
                         math.hypot(q.radius, (q.bottom - q.top) / 2), q.material, q.instance))
    for q in scene.spheres:
        c = np.asarray(q.center) - cam
        out.append(_Prim("dome" if q.inside else "sphere", (c, q.radius), c, q.radius, q.material, q.instance))
    return out


def _safe_inv(d: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


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


def _hit(P: _Prim, o, d, inv) -> torch.Tensor:
    """Distance to the first hit of rays o + t d (t > EPS) with a non-shell primitive; inf where missed.
    `o` holds floats (primary rays start at the camera = origin) or tensors (shadow rays)."""
    if P.kind == "box":
        tn, tf = _slab(P.p[0], P.p[1], o, inv)
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


def _windows(P: _Prim, height: int, width: int) -> list[tuple[slice, slice]]:
    """Pixel windows (rows, cols) that contain every ray that can hit P: the ERP footprint of its bounding
    sphere (one window, or two when it wraps around the seam). Casting only there is what keeps many small
    objects cheap."""
    full = [(slice(None), slice(None))]
    if P.kind == "plane":  # rays towards the plane only: the lower (camera above) or upper hemisphere
        return [(slice(height // 2, None), slice(None))] if P.p[0] > 0 else [(slice(0, (height + 1) // 2), slice(None))]
    dist = float(np.linalg.norm(P.center))
    if dist <= P.radius * 1.001 + 1e-6:
        return full
    a = math.asin(P.radius / dist)
    lat = math.asin(max(-1.0, min(1.0, -P.center[1] / dist)))
    lon = math.atan2(P.center[0], P.center[2])
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


def _cast(scene: Scene, height: int, width: int, device) -> dict[str, torch.Tensor]:
    """Primary rays: closest-hit distance, primitive index, normal, material and instance per pixel."""
    prims = _prims(scene)
    d, inv, ray_list = _rays(height, width, torch.device(device))
    o = (0.0, 0.0, 0.0)
    t = torch.full((height, width), _INF, device=device)
    ids = torch.full((height, width), -1, dtype=torch.int32, device=device)
    wins = [_windows(P, height, width) for P in prims]

    def update(k: int, rs: slice, cs: slice, tk: torch.Tensor) -> None:
        sub = t[rs, cs]
        closer = tk < sub
        sub.copy_(torch.where(closer, tk, sub))
        ids[rs, cs].masked_fill_(closer, k)

    # room shells: exits of each box, dropped where the exit point lies strictly inside another shell
    shells = [k for k, P in enumerate(prims) if P.kind == "shell"]
    tn = {k: torch.full((height, width), _INF, device=device) for k in shells}
    tf = {k: torch.full((height, width), -_INF, device=device) for k in shells}
    for k in shells:
        for rs, cs in wins[k]:
            tn[k][rs, cs], tf[k][rs, cs] = _slab(prims[k].p[0], prims[k].p[1], o, tuple(x[rs, cs] for x in inv))
    for k in shells:
        inside = torch.zeros((height, width), dtype=torch.bool, device=device)
        for q in shells:
            if q != k and _boxes_overlap(prims[k], prims[q]):
                for rs, cs in wins[q]:
                    e = tf[k][rs, cs]
                    inside[rs, cs] |= (e > tn[q][rs, cs] + EPS) & (e < tf[q][rs, cs] - EPS)
        for rs, cs in wins[k]:
            e = tf[k][rs, cs]
            update(k, rs, cs, torch.where((e > EPS) & (tn[k][rs, cs] <= e) & ~inside[rs, cs], e, _INF))

    for k, P in enumerate(prims):
        if P.kind != "shell":
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
    start = counts[0]  # sky (id -1) sorts first
    for k, P in enumerate(prims):
        end = start + counts[k + 1]
        if end > start:
            p = t_s[start:end, None] * d_s[start:end]
            n = n_s[start:end] = _normals(P, p[:, 0], p[:, 1], p[:, 2])
            if P.faces is None:
                mat_s[start:end] = P.material
            else:  # inward normal pointing up (-y) is the floor, down (+y) the ceiling
                wall, floor, ceil = P.faces
                mat_s[start:end] = torch.where(n[:, 1] < -0.5, floor, torch.where(n[:, 1] > 0.5, ceil, wall))
        start = end
    normal = torch.zeros_like(d_s).index_copy_(0, order, n_s).reshape(height, width, 3)
    inst_table = torch.tensor([0] + [P.instance for P in prims], dtype=torch.int32, device=device)
    inst = inst_table.index_select(0, flat.long() + 1).reshape(height, width)
    return dict(t=t, ids=ids, normal=normal, inst=inst, prims=prims, order=order, n_sky=counts[0], t_s=t_s,
                d_s=d_s, n_s=n_s, mat_s=mat_s)


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
        wb=(1 + g * rng.uniform(-0.08, 0.08, 3)).astype(np.float32),
        contrast=float(1 + g * rng.uniform(-0.1, 0.15)),
        saturation=float(1 + g * rng.uniform(-0.25, 0.2)),
        sun=float(1 + g * rng.uniform(-0.25, 0.2)),
        sky=(g * rng.uniform(-0.06, 0.06, 3)).astype(np.float32),
        blur=float(rng.uniform(*style.blur)),
        noise=float(rng.uniform(*style.noise)),
        jpeg=int(rng.integers(style.jpeg[0], style.jpeg[1] + 1)) if style.jpeg else None,
        noise_seed=int(rng.integers(2**31)),
    )


def _shade(geo: dict, scene: Scene, style: Style, mats: dict, look: dict) -> torch.Tensor:
    """Linear RGB (H, W, 3): textured surfaces lit by ambient + one light (optionally shadowed), sky elsewhere.
    Works on the primitive-sorted pixel lists of `_cast` (sky first), then scatters back to the image."""
    d_s, order, ns = geo["d_s"], geo["order"], geo["n_sky"]
    h, w = geo["t"].shape
    dev = d_s.device
    out = torch.empty_like(d_s)
    light = torch.tensor(scene.light, dtype=torch.float32, device=dev)
    cam = torch.tensor(scene.camera, dtype=torch.float32, device=dev)

    ds = d_s[:ns]
    up = (-ds[:, 1]).clamp(0, 1)
    zenith = (torch.tensor([0.25, 0.45, 0.85], device=dev) + torch.from_numpy(look["sky"]).to(dev)) ** 2.2
    horizon = torch.tensor([0.78, 0.86, 0.95], device=dev) ** 2.2
    sky = horizon + (zenith - horizon) * up.sqrt()[:, None]
    if not scene.point_light:  # sun disc and glow
        c = (ds * light).sum(-1)
        glow = 6 * torch.exp((c - 1) * 2000) + 0.3 * torch.exp((c - 1) * 6)
        sky = sky + torch.tensor([1.0, 0.9, 0.75], device=dev) * glow[:, None]
    out[:ns] = torch.where((ds[:, 1] > 0)[:, None], horizon * 0.5, sky)  # below the horizon: open test scenes

    th, dh, n, mid = geo["t_s"][ns:], d_s[ns:], geo["n_s"][ns:], geo["mat_s"][ns:]
    p_rel = th[:, None] * dh
    p = p_rel + cam
    albedo = torch.empty_like(p)
    codes = mats["code"].index_select(0, mid)
    for code, count in enumerate(torch.bincount(codes, minlength=len(TEXTURES)).tolist()):
        if count == 0:
            continue
        if count == len(codes):
            albedo = _texture(TEXTURES[code], p, n, *(mats[k].index_select(0, mid) for k in _MAT_KEYS))
            break
        idx = (codes == code).nonzero().squeeze(1)
        ms = mid.index_select(0, idx)
        a = _texture(TEXTURES[code], p.index_select(0, idx), n.index_select(0, idx),
                     *(mats[k].index_select(0, ms) for k in _MAT_KEYS))
        albedo.index_copy_(0, idx, a)

    if scene.point_light:
        v = light - cam - p_rel
        dist = v.norm(dim=-1).clamp_min(1e-6)
        ldir = v / dist[:, None]
        power = 1.6 * style.light * look["sun"] / (1 + 0.04 * dist * dist)
    else:
        ldir = light.expand_as(p)
        power = style.light * look["sun"]
    ndl = (n * ldir).sum(-1).clamp_min(0)
    if style.shadows:
        ndl = ndl * ~_shadowed(geo["prims"], p_rel, n, ldir, ndl > 0, light - cam if scene.point_light else light,
                               scene.point_light)
    shade = style.ambient * (0.75 - 0.25 * n[:, 1]) + power * ndl
    out[ns:] = albedo * shade[:, None]
    return torch.empty_like(out).index_copy_(0, order, out).reshape(h, w, 3)


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
        if P.kind not in ("box", "cyl", "sphere") or P.radius > 200:  # hills are too far away to matter
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


# ------------------------------------------------------------------------------------------------- CLI


def parse_resolution(text: str) -> tuple[int, int]:
    """'512x1024' -> (height, width); the size must be 2:1."""
    from dap.cli import parse_size

    h, w = parse_size(text)
    if w != 2 * h:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is not 2:1 (HEIGHTxWIDTH); use e.g. {h}x{2 * h}")
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, required=True, help="number of panoramas")
    p.add_argument("--out", required=True, help="output folder (tar shards + manifest.parquet); rerun to resume")
    p.add_argument("--kind", choices=["indoor", "outdoor", "mixed"], default="mixed",
                   help="scene kind; mixed = indoor for even seeds, outdoor for odd")
    p.add_argument("--style", choices=sorted(STYLES), default="clean", help="appearance domain")
    p.add_argument("--resolution", type=parse_resolution, default=(512, 1024), help="HEIGHTxWIDTH, 2:1")
    p.add_argument("--workers", type=int, default=1, help="processes rendering shards in parallel")
    p.add_argument("--shard-size", type=int, default=64, help="panoramas per tar shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the first panorama (sample i uses seed + i)")
    p.add_argument("--supersample", type=int, default=1, help="RGB anti-aliasing factor (geometry stays exact)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    import time

    from dap.data.shards import write_dataset

    start = time.perf_counter()
    manifest = write_dataset(args.out, args.count, kind=args.kind, style=args.style, resolution=args.resolution,
                             workers=args.workers, shard_size=args.shard_size, seed=args.seed,
                             supersample=args.supersample, progress=not args.no_progress)
    print(f"{args.count} panoramas in {manifest.parent} ({time.perf_counter() - start:.1f} s); manifest: {manifest}")
    return 0


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
