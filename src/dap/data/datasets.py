"""Loaders for the standard panoramic depth benchmarks and for generic folders/manifests.

Every loader indexes its root on construction (raising DatasetLayoutError that names the expected layout
and what is missing) and decodes a sample on access. A sample is a dict:
    rgb   float32 (H, W, 3) in [0, 1], equirectangular
    depth float32 (H, W) metres along the ray, invalid = 0
    name  str, unique within the dataset (may contain '/'); saved predictions are looked up as <name>.npy
    notes list[str], what dap predict would say of the panorama's file (transparency, several frames)
All decoding goes through dap.io. See docs/evaluation.md for units, splits and layout assumptions.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from dap.errors import DatasetLayoutError, DepthUnitError
from dap.geometry import check_erp_shape, erp_rays
from dap.io import IMAGE_SUFFIXES, read_depth, read_rgb_notes


@dataclass(frozen=True)
class Item:
    name: str
    rgb: Path
    depth: Path


class PanoDataset:
    """Base class: an indexed list of (name, rgb file, depth file); subclasses define `_index` and units."""

    name: ClassVar[str] = "dataset"
    layout: ClassVar[str] = ""  # the expected on-disk layout, quoted in every DatasetLayoutError
    expected_sizes: ClassVar[dict[str, int]] = {}  # sizes of the standard splits, for a comparability note

    def __init__(self, root: str | Path, split: str = "test"):
        self.root = Path(root)
        self.split = split
        if not self.root.exists():
            raise self.layout_error(f"the root {self.root} does not exist")
        self.items: list[Item] = self._index()
        if not self.items:
            raise self.layout_error("no samples found" + (f" for split '{self.split}'" if self.split != "all" else ""))
        seen: dict[str, Item] = {}
        for it in self.items:  # predictions are saved and reported by name: two samples must not share one
            if (first := seen.setdefault(it.name, it)) is not it:
                raise self.layout_error(f"two samples share the name {it.name!r} ({first.rgb} and {it.rgb}); give "
                                        "them distinct names (a manifest's name column, or distinct file stems)")
        depths: dict[Path, Item] = {}
        for it in self.items:  # a slip in a split file or manifest: one ground truth scored for two photographs
            if (first := depths.setdefault(it.depth, it)) is not it:
                raise self.layout_error(f"two samples, {first.name!r} and {it.name!r}, list one depth file, {it.depth}; "
                                        "each panorama needs its own")
        missing = [p for it in self.items for p in (it.rgb, it.depth) if not p.is_file()]
        if missing:
            shown = "\n  ".join(str(p) for p in missing[:3])
            raise self.layout_error(f"{len(missing)} listed files are missing, e.g.\n  {shown}\n")

    @functools.cached_property
    def rgb_sizes(self) -> list[tuple[int, int] | None]:
        """(width, height) of each sample's panorama as read, from its file's header (`io.image_size`; None for a
        file Pillow does not open: HDR, EXR): one pass for every check that needs them."""
        from dap.io import image_size

        return [image_size(it.rgb) for it in self.items]

    def header_problem(self) -> str | None:
        """What the files' headers already show would fail when a sample is read (an empty file; a depth map of
        another shape than its panorama), else None: a training run finds it before its first step, not when it
        draws that sample."""
        from dap.io import depth_size

        for it, rgb in zip(self.items, self.rgb_sizes, strict=True):
            if empty := next((p for p in (it.rgb, it.depth) if p.stat().st_size == 0), None):
                return f"{empty} is empty (0 bytes)"
            depth = depth_size(it.depth)
            if rgb and depth and rgb[0] * depth[1] != rgb[1] * depth[0]:
                return (f"{it.depth} is {depth[0]}x{depth[1]} but its RGB {it.rgb} is {rgb[0]}x{rgb[1]}: a depth map "
                        "and its panorama must have the same shape (2:1; the resolution may differ)")
        return None

    def _unsplit(self, items: list[Item], why: str) -> list[Item]:
        """Every sample of a collection without splits, which is then split 'all' whatever it was asked as (as a
        `dap synth` folder); a name that is no split at all is refused, as it would have scored everything under
        that name. `why`: what has no splits, for the message."""
        if self.split not in ("test", "val", "train", "all"):
            raise self.layout_error(f"unknown split '{self.split}': {why} has no splits, so every sample is scored; "
                                    "leave --split out or pass all")
        self.split = "all"
        return items

    @property
    def expected_size(self) -> int | None:
        return self.expected_sizes.get(self.split)

    def layout_error(self, problem: str) -> DatasetLayoutError:
        return DatasetLayoutError(
            # sentences end in full stops: `dap` prints errors on one line, joining these lines with spaces
            f"{self.name} (split '{self.split}'): {problem.rstrip().rstrip('.')}.\nExpected this layout under the "
            f"root {self.root}:\n{self.layout.rstrip()}.\nPoint the root (dap eval's --root, a training source's "
            "path) at the folder that contains it"
            + (", or give the folder a manifest." if self.name == "folder" else ", or use the 'folder' loader with a "
               "manifest (CSV/Parquet: rgb, depth, metres_per_unit) for another layout.")
        )

    def _index(self) -> list[Item]:
        raise NotImplementedError

    def load_rgb(self, path: Path) -> tuple[np.ndarray, list[str]]:
        """The panorama and the notes on its file (transparency, frames: `dap.io.read_rgb_notes`)."""
        return read_rgb_notes(path)

    def load_depth(self, path: Path) -> np.ndarray:
        return read_depth(path)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        it = self.items[index]
        (rgb, notes), depth = self.load_rgb(it.rgb), self.load_depth(it.depth)
        (h, w), (dh, dw) = rgb.shape[:2], depth.shape[:2]
        # named here, not later as "input panorama"; no --pad-to-erp where samples are read (eval, training)
        check_erp_shape(h, w, what=f"{it.rgb} (sample {it.name})", paddable=False)
        if dh * w != dw * h:  # scored after resizing one to the other, a mismatched pair would pass unnoticed
            raise DatasetLayoutError(
                f"{it.depth} is {dw}x{dh} but its RGB {it.rgb} is {w}x{h}: a depth map and its panorama must have "
                "the same shape (2:1; the resolution may differ). Check that the two files belong together."
            )
        return {"rgb": rgb, "depth": depth, "name": it.name, "notes": notes}

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]


def _read_pair_list(path: Path) -> list[tuple[str, str]]:
    """UniFuse/BiFuse-style split file: one 'rgb_path depth_path' pair per line, relative to the root."""
    if not path.is_file():
        raise DatasetLayoutError(f"the split file {path} does not exist or is not a file; pass a text file of "
                                 "'<rgb path> <depth path>' lines")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetLayoutError(f"the split file {path} is not UTF-8 text ({e}); it should hold "
                                 "'<rgb path> <depth path>' lines") from e
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.replace("\\", "/").split()  # Windows-made lists use backslashes
        if not parts or parts[0].startswith("#"):  # blank, or a comment
            continue
        if len(parts) == 1:  # one path: a list of the wrong kind (more than two: lists with extra columns exist)
            raise DatasetLayoutError(f"line {number} of the split file {path} holds one path ({parts[0]!r}); each "
                                     "line needs '<rgb path> <depth path>' (for paths with spaces, use the 'folder' "
                                     "loader with a manifest.csv)")
        pairs.append((_listed_path(parts[0]), _listed_path(parts[1])))
    return pairs


def _listed_path(text: str) -> str:
    """A split file's path as it is joined to the root: an absolute path that exists stays one; another leading "/"
    is dropped (lists that write their root-relative paths so)."""
    return text if os.path.isabs(text) and os.path.exists(text) else text.lstrip("/")


def _split_file(root: str | Path, split_file: str | Path | None) -> Path | None:
    """The split file as given, or under the dataset root when that is where it is (lists ship with the data)."""
    if split_file is None:
        return None
    given = Path(split_file)
    return Path(root) / given if not given.exists() and (Path(root) / given).is_file() else given


def _visible(paths) -> list[Path]:
    """Sorted, without hidden files: a dataset copied through macOS to an exFAT drive gets a `._<name>` beside
    every file, which would match the loaders' patterns."""
    return sorted(p for p in paths if not p.name.startswith("."))


def _walk(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` anywhere below `root`, following symbolic links to folders (Path.rglob does not,
    before Python 3.13: a building folder linked in from another disk was silently left out)."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree: walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in fnmatch.filter(files, pattern)]
    return found


def _cassini(a: np.ndarray, path: Path) -> np.ndarray:
    """`a` if it is a Cassini panorama (portrait, twice as high as wide), else a layout error naming `path`."""
    h, w = a.shape[:2]
    if h != 2 * w:
        raise DatasetLayoutError(f"{path} is {w}x{h}; Deep360 panoramas are Cassini, twice as high as wide (e.g. "
                                 "512x1024). An equirectangular copy belongs in the 'folder' loader, with a manifest")
    return a


def _strip_suffix(rel: str) -> str:
    return str(Path(rel).with_suffix("")).replace("\\", "/")


# ---------------------------------------------------------------------------------------- Stanford2D3D
class Stanford2D3D(PanoDataset):
    """Stanford 2D-3D-Semantics panoramas. Depth: 16-bit PNG, 1/512 m per unit, 65535 = no data.
    Test split = area_5a + area_5b (373 panoramas), or the pairs of `split_file`."""

    name = "stanford2d3d"
    layout = """\
  area_5a/pano/rgb/camera_<uuid>_<room>_frame_equirectangular_domain_rgb.png
  area_5a/pano/depth/camera_<uuid>_<room>_frame_equirectangular_domain_depth.png
  area_5b/pano/...   (same; training areas: area_1 area_2 area_3 area_4 area_6)"""
    expected_sizes = {"test": 373}
    AREAS = {"test": ("area_5a", "area_5b"), "train": ("area_1", "area_2", "area_3", "area_4", "area_6")}
    METRES_PER_UNIT = 1 / 512

    def __init__(self, root: str | Path, split: str = "test", *, split_file: str | Path | None = None):
        self.split_file = _split_file(root, split_file)
        super().__init__(root, split)

    def _index(self) -> list[Item]:
        if self.split_file is not None:  # named as found without a list, whatever folders it uses (UniFuse: rgb_/)
            return [Item(f"{Path(r).parts[0]}/{_strip_suffix(Path(r).name).removesuffix('_rgb')}", self.root / r,
                         self.root / d) for r, d in _read_pair_list(self.split_file)]
        if self.split == "all":
            areas = sorted(p.name for p in self.root.glob("area_*") if p.is_dir())
        elif self.split in self.AREAS:
            areas = self.AREAS[self.split]
        else:
            raise self.layout_error(f"unknown split '{self.split}' (use test, train or all)")
        items = []
        for area in areas:
            rgb_dir = self.root / area / "pano" / "rgb"
            if not rgb_dir.is_dir():
                raise self.layout_error(f"the folder {area}/pano/rgb is missing")
            depth_dir = self.root / area / "pano" / "depth"
            # the suffix in any case: copies through Windows or some archivers come out as _rgb.PNG
            for rgb in _visible(p for p in rgb_dir.iterdir() if p.name.lower().endswith("_rgb.png")):
                stem = rgb.name[: -len("_rgb.png")]
                depth = next((d for d in (depth_dir / f"{stem}_depth{rgb.suffix}", depth_dir / f"{stem}_depth.png")
                              if d.is_file()), depth_dir / f"{stem}_depth.png")
                items.append(Item(f"{area}/{stem}", rgb, depth))
        return items

    def load_depth(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".png":
            return read_depth(path, scale=self.METRES_PER_UNIT)  # dap.io turns 0 and 65535 into invalid
        return read_depth(path)  # a split file's EXR or NPY (3D60's renders): in metres


# ---------------------------------------------------------------------------------------- Matterport3D
class Matterport3D(PanoDataset):
    """Matterport3D panoramas, two encodings:
    - stitched 16-bit PNG depth (1/4000 m per unit, 0 = no data), listed by a split file of
      'rgb depth' lines (the UniFuse/BiFuse list format; the standard test list has 2014 entries);
    - Pano3D renders: float EXR depth in metres, inf = no data (listed by a split file, or found by
      pairing every '*_depth*.exr' with the '*_color*.png' of the same name).
    The depth encoding is chosen per file by extension."""

    name = "matterport3d"
    layout = """\
  matterport3d_test.txt (or test.txt, or --split-file): lines '<rgb path> <depth path>' relative to the root,
    e.g. '<scene>/<pano>_rgb.png <scene>/<pano>_depth.png' (stitched 16-bit PNG, 1/4000 m)
  or Pano3D renders anywhere below the root:
    <building>/<pano>_color_<...>.png + <building>/<pano>_depth_<...>.exr (metres, inf = no data)"""
    expected_sizes = {"test": 2014}
    PNG_METRES_PER_UNIT = 1 / 4000

    def __init__(self, root: str | Path, split: str = "test", *, split_file: str | Path | None = None):
        self.split_file = _split_file(root, split_file)
        super().__init__(root, split)

    def _index(self) -> list[Item]:
        candidates = (
            [self.split_file]
            if self.split_file
            else [self.root / f"matterport3d_{self.split}.txt", self.root / f"{self.split}.txt"]
        )
        for path in candidates:
            if path is not None and path.is_file():
                return [Item(_strip_suffix(r), self.root / r, self.root / d) for r, d in _read_pair_list(path)]
        if self.split_file is not None:
            raise self.layout_error(f"the split file {self.split_file} does not exist")
        items = []
        for depth in _visible(_walk(self.root, "*_depth*.exr")):
            rgb = depth.with_name(depth.name.replace("_depth", "_color", 1)).with_suffix(".png")
            items.append(Item(_strip_suffix(str(depth.relative_to(self.root))), rgb, depth))
        if not items:
            raise self.layout_error(
                f"found neither a split file ({', '.join(p.name for p in candidates)}) nor Pano3D "
                "'*_depth*.exr' renders"
            )
        # every render found, training buildings too: not the test split, whatever --split said
        return self._unsplit(items, "a folder of Pano3D renders without a split file")

    def load_depth(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".png":
            return read_depth(path, scale=self.PNG_METRES_PER_UNIT)
        return read_depth(path)  # EXR in metres; dap.io turns inf into 0


# --------------------------------------------------------------------------------------------- Deep360
def cassini_to_erp(
    image: np.ndarray | torch.Tensor, *, height: int | None = None, mode: str = "bilinear"
) -> np.ndarray | torch.Tensor:
    """Resample a Cassini panorama (Hc, Wc[, C]) to equirectangular (H, 2H[, C]); H defaults to Wc.

    Deep360's Cassini images are portrait (Hc = 2·Wc, e.g. 1024×512): the sphere is an ERP whose polar axis
    is the camera's x axis (right). With our camera frame (x right, y down, z forward) a ray r = (x, y, z)
    sits at
        column angle a = asin(x)        in [-π/2, π/2], left to right,
        row angle    b = atan2(y, z)    in (-π, π], top to bottom (0 = forward, π/2 = down, ±π = back),
    with pixel centres at a = π/2·((2j+1)/Wc − 1) and b = π·((2i+1)/Hc − 1). The image centre looks forward,
    like the ERP centre; near it the two projections agree. This is the inverse of the ERP→Cassini map of
    the MODE/Deep360 code (ERP longitude θ = −lon, φ = lat: a = −asin(cos φ sin θ), b = −atan2(tan φ, cos θ)).

    Each ERP pixel's ray is looked up with grid_sample; rows wrap around (b = ±π meet), columns clamp.
    Use mode='nearest' for depth so that invalid zeros never blend into valid neighbours.
    """
    was_numpy = isinstance(image, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(image)) if was_numpy else image
    dtype = t.dtype
    x = t.to(torch.float32)
    x = x[..., None] if x.ndim == 2 else x
    hc, wc = x.shape[:2]
    h = height or wc
    src = x.permute(2, 0, 1)[None]
    src = torch.cat([src[:, :, -1:], src, src[:, :, :1]], dim=2)  # one wrapped row each side: b = ±π meet
    rays = erp_rays(h, 2 * h, dtype=torch.float64)
    rx, ry, rz = rays.unbind(-1)
    u = torch.asin(rx.clamp(-1, 1)) / (math.pi / 2)  # [-1, 1] over the Cassini width (pixel edges)
    v = torch.atan2(ry, rz) / math.pi * hc / (hc + 2)  # same over the height, shrunk for the padded rows
    grid = torch.stack([u, v], dim=-1)[None].to(torch.float32)
    out = F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=False)[0].permute(1, 2, 0)
    out = out[..., 0] if t.ndim == 2 else out
    out = out.to(dtype) if dtype.is_floating_point else out
    return out.numpy() if was_numpy else out


class Deep360(PanoDataset):
    """Deep360 (MODE, ECCV 2022): outdoor CARLA renders in Cassini projection. Depth `.npz` (array 'arr_0',
    metres along the ray, referenced to camera 1) next to camera 1's image of stereo pair 12. Both are
    converted to ERP (RGB bilinear, depth nearest). Test split: 6 episodes × 100 frames = 600."""

    name = "deep360"
    layout = """\
  ep1_500frames/testing/rgb/<frame>_12_rgb1.png      (Cassini, 512 wide × 1024 high)
  ep1_500frames/testing/depth/<frame>_depth.npz      (Cassini, array 'arr_0', metres)
  ... ep2_500frames .. ep6_500frames; splits: training, validation, testing"""
    expected_sizes = {"test": 600}
    SPLITS = {"test": "testing", "val": "validation", "train": "training"}  # split -> its folder in each episode

    def _index(self) -> list[Item]:
        # the folder's name is accepted too, and recorded (and its size compared) as the split: "testing" is "test"
        self.split = {folder: split for split, folder in self.SPLITS.items()}.get(self.split, self.split)
        if self.split not in self.SPLITS:
            raise self.layout_error(f"unknown split '{self.split}' (use test, val or train)")
        sub = self.SPLITS[self.split]
        episodes = sorted(p for p in self.root.glob("ep*_500frames") if p.is_dir())
        if not episodes:
            raise self.layout_error("no ep*_500frames folders")
        items = []
        for ep in episodes:
            depth_dir = ep / sub / "depth"
            if not depth_dir.is_dir():
                raise self.layout_error(f"the folder {ep.name}/{sub}/depth is missing")
            for depth in _visible(depth_dir.glob("*_depth.npz")):
                frame = depth.name.removesuffix("_depth.npz")
                items.append(Item(f"{ep.name}/{frame}", ep / sub / "rgb" / f"{frame}_12_rgb1.png", depth))
        return items

    def load_rgb(self, path: Path) -> tuple[np.ndarray, list[str]]:
        rgb, notes = read_rgb_notes(path)
        return np.clip(cassini_to_erp(_cassini(rgb, path), mode="bilinear"), 0.0, 1.0), notes

    def load_depth(self, path: Path) -> np.ndarray:
        # 'arr_0' (or 'depth', or the only array)
        return cassini_to_erp(_cassini(read_depth(path), path), mode="nearest")


# ---------------------------------------------------------------------------------------- Structured3D
class Structured3D(PanoDataset):
    """Structured3D panoramas. Depth: 16-bit PNG in millimetres, 0 = no data. Official scene split:
    train scene_00000–02999, val 03000–03249, test 03250–03499."""

    name = "structured3d"
    layout = """\
  scene_XXXXX/2D_rendering/<room id>/panorama/full/rgb_rawlight.png
  scene_XXXXX/2D_rendering/<room id>/panorama/full/depth.png   (16-bit, millimetres)"""
    SCENES = {"train": range(0, 3000), "val": range(3000, 3250), "test": range(3250, 3500)}
    METRES_PER_UNIT = 1 / 1000

    def __init__(self, root: str | Path, split: str = "test", *, lighting: str = "rawlight"):
        self.lighting = lighting  # rawlight | coldlight | warmlight
        super().__init__(root, split)

    def _index(self) -> list[Item]:
        if self.split != "all" and self.split not in self.SCENES:
            raise self.layout_error(f"unknown split '{self.split}' (use test, val, train or all)")
        scenes = sorted(p for p in self.root.glob("scene_*") if p.is_dir())
        if not scenes:
            raise self.layout_error("no scene_XXXXX folders")
        items = []
        for scene in scenes:
            m = re.fullmatch(r"scene_(\d+)", scene.name)
            if m is None or (self.split != "all" and int(m.group(1)) not in self.SCENES[self.split]):
                continue
            for full in sorted(scene.glob("2D_rendering/*/panorama/full")):
                items.append(
                    Item(
                        f"{scene.name}/{full.parent.parent.name}",
                        full / f"rgb_{self.lighting}.png",
                        full / "depth.png",
                    )
                )
        return items

    def load_depth(self, path: Path) -> np.ndarray:
        return read_depth(path, scale=self.METRES_PER_UNIT)


# ---------------------------------------------------------------------------------- folder / manifest
class FolderDataset(PanoDataset):
    """Any ERP RGB + depth collection, from a manifest or a plain folder.

    Manifest: `manifest.csv` / `manifest.parquet` in the root (or the root is the manifest file) with columns
    rgb, depth (paths relative to the manifest's folder, or absolute), and optional metres_per_unit (needed for
    raw 16-bit PNG depth; EXR/NPY/NPZ hold metres unless it is given, e.g. 0.001 for millimetres), name, split
    (read without surrounding spaces; rows of other splits are left out, an empty split or one that differs from
    the asked one only in case is an error; 'all' keeps all). Each sample its own depth file.
    Plain folder: rgb/<stem>.<any image suffix of dap.io.IMAGE_SUFFIXES> with one depth/<stem>.{npy,npz,exr,png}
    (PNG written by dap.io.write_depth, which stores its scale); an rgb/ with sub-folders of images is refused."""

    name = "folder"
    layout = """\
  manifest.csv or manifest.parquet with columns: rgb, depth[, metres_per_unit, name, split]
  or: rgb/<stem>.jpg|png|webp|tif|hdr|exr|...  +  depth/<stem>.npy|npz|exr|png"""
    DEPTH_EXTS = (".npy", ".npz", ".exr", ".png")

    def __init__(self, root: str | Path, split: str = "test"):
        self._scales: dict[Path, float | None] = {}
        self._rows: dict[Path, str] = {}  # a manifest's depth file -> its row, for messages
        super().__init__(root, split)

    def _manifest_path(self) -> Path | None:
        if self.root.is_file():
            return self.root
        for name in ("manifest.parquet", "manifest.csv"):
            if (self.root / name).is_file():
                return self.root / name
        return None

    def _index(self) -> list[Item]:
        manifest = self._manifest_path()
        if manifest is None:
            return self._unsplit(self._index_folder(), "a plain folder")
        rows = _read_table(manifest)
        if not rows:  # a header alone: its columns may be right, but it lists nothing to score
            raise self.layout_error(f"the manifest {manifest.name} lists no samples (no rows under its header); add a "
                                    "row per panorama with its rgb and depth files")
        cols = set(rows[0])
        if not {"rgb", "depth"} <= cols:
            raise self.layout_error(
                f"the manifest {manifest.name} has columns {sorted(cols)}; it needs rgb and "
                "depth (and optionally metres_per_unit, name, split)"
            )
        base = manifest.parent
        items = []
        splits = set()  # those the manifest has, to name when the asked one is not among them
        for line, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them, header = 1
            if all(v in (None, "") for v in row.values()):  # a blank line, or one of only commas
                continue
            if "split" in row and self.split != "all":
                value = "" if row["split"] is None else str(row["split"]).strip()  # a spreadsheet's stray space
                if value != self.split:  # a row left out: never one meant for this split
                    if not value or value.casefold() == self.split.casefold():
                        raise self.layout_error(
                            f"row {line} of the manifest {manifest.name} has "
                            + (f"the split {row['split']!r}, not '{self.split}' (splits are case-sensitive)" if value
                               else "no split") + f"; give every row its split (e.g. {self.split}), or pass all")
                    splits.add(value)
                    continue
            if row["rgb"] in (None, "") or row["depth"] in (None, ""):
                raise self.layout_error(f"row {line} of the manifest {manifest.name} has an empty rgb or depth "
                                        "cell; fill it in or delete the row")
            rgb, depth = base / str(row["rgb"]), base / str(row["depth"])
            name = str(row["name"]) if row.get("name") not in (None, "") else _strip_suffix(str(row["rgb"]))
            scale = row.get("metres_per_unit")
            self._scales[depth] = _unit(scale, line, manifest) if scale not in (None, "") else None
            self._rows[depth] = f"row {line} of {manifest}"
            items.append(Item(name, rgb, depth))
        if not items and splits:
            raise self.layout_error(f"the manifest {manifest.name} has no rows of split '{self.split}'; its splits "
                                    f"are {', '.join(repr(v) for v in sorted(splits))} (pass one of them, or all)")
        return items if "split" in rows[0] else self._unsplit(items, "a manifest without a split column")

    def _index_folder(self) -> list[Item]:
        rgb_dir, depth_dir = self.root / "rgb", self.root / "depth"
        if not rgb_dir.is_dir() or not depth_dir.is_dir():
            raise self.layout_error("found no manifest.csv / manifest.parquet and no rgb/ + depth/ folders")
        nested = [d.name for d in _visible(rgb_dir.iterdir())
                  if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.rglob("*"))]
        if nested:  # their panoramas were left out without a word
            raise self.layout_error(f"{rgb_dir} has sub-folders of images ({', '.join(nested[:3])}"
                                    f"{', ...' if len(nested) > 3 else ''}), which a plain folder does not search; "
                                    "list every pair in a manifest.csv (rgb and depth paths), or give each folder "
                                    "its own rgb/ and depth/")
        items = []
        for rgb in _visible(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            depths = [depth_dir / f"{rgb.stem}{e}" for e in self.DEPTH_EXTS if (depth_dir / f"{rgb.stem}{e}").is_file()]
            if len(depths) > 1:  # in different units, perhaps: one is the ground truth
                raise self.layout_error(f"{rgb} has {len(depths)} depth files ({', '.join(p.name for p in depths)}); "
                                        "keep one, or list the pairs in a manifest.csv")
            items.append(Item(rgb.stem, rgb, depths[0] if depths else depth_dir / f"{rgb.stem}.npy"))
        return items

    def load_depth(self, path: Path) -> np.ndarray:
        scale = self._scales.get(path)  # float formats hold metres unless the manifest gives their unit
        try:
            return read_depth(path, scale=scale)
        except DepthUnitError as e:  # the fix here is the manifest's column, not read_depth's argument
            if scale is not None:  # the manifest's unit disagrees with the file's own: read_depth says both
                raise
            if row := self._rows.get(path):
                raise DepthUnitError(f"{path} is a 16-bit depth PNG that does not say its unit, and {row} leaves "
                                     "metres_per_unit empty: give it (e.g. 0.001 for millimetres)") from e
            raise DepthUnitError(
                f"{path} is a 16-bit depth PNG that does not say its unit. List it in a manifest.csv beside rgb/ and "
                "depth/ with columns rgb, depth, metres_per_unit (e.g. 0.001 for millimetres, 0.00025 for "
                "Matterport3D's quarter-millimetres), or save the depth as .npy/.exr in metres."
            ) from e


def _unit(value, line: int, manifest: Path) -> float:
    """A manifest row's metres_per_unit as a positive number of metres."""
    try:
        unit = float(value)
    except (TypeError, ValueError):
        unit = math.nan
    if not (unit > 0 and math.isfinite(unit)):
        raise DatasetLayoutError(f"row {line} of {manifest}: metres_per_unit must be a positive number (e.g. 0.001 "
                                 f"for millimetres), got {value!r}")
    return unit


def _read_table(path: Path) -> list[dict]:
    """The rows of a manifest (CSV in UTF-8, with or without the byte-order mark spreadsheets write, or Parquet)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DatasetLayoutError(f"cannot read the manifest {path} as Parquet ({e}); write it again, or use a "
                                     "manifest.csv") from e
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise DatasetLayoutError(f"the manifest {path} is not UTF-8 text ({e}); save it as CSV in UTF-8") from e


class SynthShards:
    """`dap synth` output (tar shards + manifest.parquet) as an evaluation set; every panorama is in the split.

    Depth is exact; sky is 0 (invalid) and geometry beyond 100 m keeps its true distance, so `--max-depth`
    decides whether it counts."""

    name = "synth"

    def __init__(self, root: str | Path, split: str = "test"):
        from dap.data.shards import ShardDataset

        if split not in ("test", "val", "train", "all"):
            raise DatasetLayoutError(f"synth ({root}): unknown split '{split}' (use test, val, train or all: a dap "
                                     "synth folder is one split, every name gives all of it)")
        self.root, self.split = Path(root), "all"  # one set whatever it is called: a cached prediction stays valid
        self._shards = ShardDataset(root)

    def __len__(self) -> int:
        return len(self._shards)

    def __getitem__(self, index: int) -> dict:
        s = self._shards[index]
        return {"rgb": s["rgb"].permute(1, 2, 0).numpy(), "depth": s["depth"][0].numpy(), "name": s["key"]}


# ---------------------------------------------------------------------------------------------- registry
DATASETS: dict[str, type] = {
    "synth": SynthShards,
    "stanford2d3d": Stanford2D3D,
    "matterport3d": Matterport3D,
    "deep360": Deep360,
    "structured3d": Structured3D,
    "folder": FolderDataset,
}


def get_dataset(name: str, root: str | Path, split: str = "test", **kwargs) -> PanoDataset:
    """Build the loader registered under `name` (case-insensitive) for `root` and `split`."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[key](root, split, **kwargs)
