"""`dap synth`: render procedural panoramas with exact metric depth into resumable tar shards
(see dap.data.synthetic for the renderer, dap.data.shards for the files)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dap.cli import folder_name, nonnegative_int, parse_device, parse_panorama_size, positive_int
from dap.data.shards import write_dataset
from dap.data.synthetic import STYLES, get_style, load_texture_tiles
from dap.errors import DapError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=positive_int, required=True, help="number of panoramas")
    p.add_argument("--out", required=True, type=folder_name,
                   help="output folder (tar shards + manifest.parquet); rerun to resume")
    p.add_argument("--kind", choices=["indoor", "outdoor", "mixed"], default="mixed",
                   help="scene kind; mixed = indoor for even seeds, outdoor for odd")
    p.add_argument("--style", choices=sorted(STYLES), default="clean", help="appearance domain")
    p.add_argument("--texture-dir", action="append", default=[], metavar="DIR", type=folder_name,
                   help="cut the photo textures of the photo style from the images in DIR (repeatable) instead "
                        "of the bank shipped with the package")
    p.add_argument("--resolution", type=parse_panorama_size, default=(512, 1024), help="HEIGHTxWIDTH, 2:1")
    p.add_argument("--workers", type=positive_int, default=1, help="processes rendering shards in parallel")
    p.add_argument("--shard-size", type=positive_int, default=64, help="panoramas per tar shard")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the first panorama (sample i uses seed + i)")
    p.add_argument("--supersample", type=positive_int, default=1,
                   help="RGB anti-aliasing factor (geometry stays exact)")
    p.add_argument("--device", type=parse_device, default=None,
                   help="torch device for the ray casting, e.g. cuda (default: cpu); with --workers N, N processes "
                        "share it. Depth is the same to float rounding on every device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    style = args.style
    if args.texture_dir:
        dirs = [str(Path(d).resolve()) for d in args.texture_dir]
        for d in dirs:  # the dataset records the folders in one string, joined by os.pathsep
            if os.pathsep in d:
                raise DapError(f"--texture-dir {d}: a folder whose path holds '{os.pathsep}' cannot be recorded with "
                               f"the dataset's settings; copy the photos into a folder whose path has "
                               f"no '{os.pathsep}'")
        style = f"{style}@{os.pathsep.join(dirs)}"
        try:
            get_style(style)
        except ValueError as e:
            raise DapError(f"--texture-dir: {e}") from None
        unreadable: list[str] = []
        load_texture_tiles(dirs, unreadable)  # fail now, not in a worker, on a missing folder or one without images
        if unreadable:
            print(f"dap synth: note: {len(unreadable)} texture image(s) cannot be read and are left out: "
                  f"{', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''}", file=sys.stderr)
    start = time.perf_counter()
    manifest = write_dataset(args.out, args.count, kind=args.kind, style=style, resolution=args.resolution,
                             workers=args.workers, shard_size=args.shard_size, seed=args.seed,
                             supersample=args.supersample, progress=not args.no_progress,
                             device=args.device)
    print(f"{args.count} panoramas in {manifest.parent} ({time.perf_counter() - start:.1f} s); manifest: {manifest}")
    return 0
