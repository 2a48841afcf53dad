"""`dap curate`: ingest | label | score | select | run | status (argument checks live here, work in the library)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dap.cli import (
    HelpFormatter,
    check_output,
    folder_name,
    parse_device,
    parse_network_size,
    positive_float,
    positive_int,
    share,
)
from dap.errors import DapError


def _keep(text: str) -> dict[str, float]:
    """indoor=300000,outdoor=300000 or indoor=0.5,outdoor=0.2"""
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if k.strip() in out:
            raise argparse.ArgumentTypeError(f"{k.strip()} is given twice in {text!r}")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            sep = ""
        if not sep or out.get(k.strip(), -1) < 0:
            raise argparse.ArgumentTypeError(f"expected DOMAIN=K pairs like indoor=300000,outdoor=0.2, got {text!r}")
    return out


def _label_device(text: str) -> str:
    if text not in ("auto", "cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu or cuda (under torchrun each rank takes its own "
                                         "GPU)")
    return text if text != "cuda" else parse_device(text)  # no CUDA device: said here, not as training's run.device


NO_PROGRESS = "no progress bar (there is none either when stderr is not a terminal)"


def _step(sub, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="curate_command", required=True, metavar="STEP")

    p = _step(sub, "ingest", "add panoramas and 360° videos to a pool (checks, dedupe, tags)")
    p.add_argument("sources", nargs="+", help="files, folders (searched recursively) or glob patterns")
    p.add_argument("--pool", required=True, type=folder_name,
                   help="pool folder (created; re-ingesting adds only new items)")
    p.add_argument("--source", default=None, help="source name for these items (default: each file's folder name)")
    p.add_argument("--generated", action="store_true", help="the items are generated panoramas (text-to-panorama)")
    p.add_argument("--every", type=positive_float, default=2.0, metavar="SECONDS",
                   help="sample one frame of a video every this many seconds")
    p.add_argument("--pad-to-erp", action="store_true",
                   help="accept partial panoramas wider than 2:1 by padding black rows, where the file's Photo "
                        "Sphere XMP puts the image, else centred on the horizon (without it they are rejected)")
    p.add_argument("--max-width", type=positive_int, default=2048, help="store panoramas at most this wide")
    p.add_argument("--min-width", type=positive_int, default=512,
                   help="reject panoramas narrower than this (too little to label or to train on)")
    p.add_argument("--dedupe-bits", type=int, default=6,
                   help="near-duplicate when 64-bit perceptual hashes differ in at most this many bits (-1: off)")
    p.add_argument("--max-tilt", type=float, default=8.0, metavar="DEGREES",
                   help="reject panoramas whose camera tilt, estimated from vertical edges, exceeds this")
    p.add_argument("--level", action="store_true",
                   help="store panoramas tilted beyond --max-tilt levelled (from how their vertical edges lean) "
                        "instead of rejecting them; those it cannot level are still rejected")
    p.add_argument("--tags", default=None, metavar="CSV",
                   help="indoor/outdoor tags: CSV with columns file (or path) and domain (or scene); a tag wins "
                        "over the labeler's sky-fraction rule")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)

    p = _step(sub, "label", "pseudo-label the pool with a model (torchrun-ready, resumable)")
    p.add_argument("--pool", required=True, type=folder_name, help="pool folder made by `dap curate ingest`")
    p.add_argument("--model", required=True, help="labeler: a model name (`dap models`), our folder or an official "
                                                  "model.pth")
    p.add_argument("--stage", choices=("stage1", "stage3"), default="stage1",
                   help="stage1: Scene-Invariant Labeler; stage3: Realism-Invariant Labeler")
    p.add_argument("--resolution", type=parse_network_size, default=(256, 512), metavar="HxW",
                   help="working and stored label resolution (2:1, multiples of 16)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="panoramas per forward")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding panoramas (0: in-process)")
    p.add_argument("--no-tta", action="store_true",
                   help="skip the test-time-augmentation agreement (two forwards fewer per panorama: about 2x faster)")
    p.add_argument("--outdoor-sky-fraction", type=share, default=0.05,
                   help="tag a panorama outdoor when this share of its upper hemisphere is sky / out of range")
    p.add_argument("--device", default="auto", type=_label_device,
                   help="auto | cpu | cuda; auto: CUDA where there is one, else the CPU (under torchrun each rank "
                        "takes its own GPU)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)

    p = _step(sub, "score", "score the stage-1 labels with a trained discriminator")
    p.add_argument("--pool", required=True, type=folder_name, help="pool folder")
    p.add_argument("--discriminator", required=True, help="discriminator folder (written by `dap curate run`)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)

    p = _step(sub, "select", "keep the top-k stage-1 labels per domain")
    p.add_argument("--pool", required=True, type=folder_name, help="pool folder")
    p.add_argument("--keep", type=_keep, default=None, metavar="DOMAIN=K,...",
                   help="per domain a count (>= 1) or a fraction (< 1); default: the paper's 300K+300K of 1.9M as "
                        "fractions (indoor 0.667, outdoor 0.207)")
    p.add_argument("--score", choices=("disc", "tta", "disc_tta"), default="disc",
                   help="rank by discriminator P(real), TTA agreement, or the mean of both ranks")

    p = _step(sub, "run", "all stages from a config; a rerun resumes")
    p.add_argument("--config", required=True, help="curation config (YAML), e.g. configs/curate_tiny.yaml")
    p.add_argument("--work", required=True, type=folder_name,
                   help="work folder: pool/, runs/, discriminator/, state.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set label.batch_size=8")
    p.add_argument("--stop-after", default=None, metavar="STEP",
                   help="stop after this step: ingest, stage1, label1, disc, select, stage2, label3, final")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)

    p = _step(sub, "status", "progress of a pool; histograms and a contact sheet")
    p.add_argument("--pool", required=True, type=folder_name, help="pool folder")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write score histograms and a contact sheet here (plots of those names this run has no data "
                        "for are removed from it)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def run(args: argparse.Namespace) -> int:
    from dap.curation.manifest import manifest_path

    cmd = args.curate_command
    option, folder = ("--work", Path(args.work)) if cmd == "run" else ("--pool", Path(args.pool))
    if cmd in ("ingest", "run"):  # the commands that may create the folder
        check_output(folder, "dir", option)
    elif not manifest_path(folder).is_file():
        raise DapError(f"{folder} is not a curation pool (no manifest.parquet); create one with "
                       f"`dap curate ingest SOURCES --pool {folder}`")
    if cmd == "ingest":
        from dap.curation.ingest import IngestOptions, ingest

        opts = IngestOptions(source=args.source, generated=args.generated, every_s=args.every,
                             pad_to_erp=args.pad_to_erp, max_width=args.max_width, min_width=args.min_width,
                             dedupe_bits=args.dedupe_bits,
                             max_tilt_deg=args.max_tilt, level=args.level, tags=args.tags)
        counts = ingest(args.sources, args.pool, opts, progress=_progress(args))
        print("dap curate ingest: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; pool {args.pool}")
        if not any(counts.values()):
            pool = os.path.realpath(args.pool) + os.sep
            own = any(os.path.realpath(s).startswith(pool) for s in args.sources)
            print(f"dap curate ingest: note: no images or videos found in {' '.join(args.sources)}"
                  + (" (the pool's own images and labels are its copies, never ingested again)" if own else ""),
                  file=sys.stderr)
    elif cmd == "label":
        from dap.curation.label import LabelOptions, label_pool
        from dap.models import registry

        model = args.model
        if not Path(model).exists() and model not in registry.MODELS:
            raise DapError(f"--model {model} does not exist; pass a checkpoint folder, an official model.pth or a "
                           f"model name ({', '.join(registry.MODELS)})")
        opts = LabelOptions(resolution=args.resolution, batch_size=args.batch_size, num_workers=max(0, args.workers),
                            tta=not args.no_tta, outdoor_sky_fraction=args.outdoor_sky_fraction, device=args.device)
        counts = label_pool(args.pool, model, args.stage, opts, progress=_progress(args))
        if counts.get("labelled") is not None:
            print(f"dap curate label: {args.stage}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    elif cmd == "score":
        from dap.curation.discriminator import load_discriminator
        from dap.curation.selection import score_pool

        n = score_pool(args.pool, load_discriminator(args.discriminator), progress=_progress(args))
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"dap curate score: {n} stage-1 labels scored")
    elif cmd == "select":
        from dap.curation.selection import PAPER_FRACTIONS, select_pool

        kept = select_pool(args.pool, args.keep or dict(PAPER_FRACTIONS), args.score)
        left = [d for d in PAPER_FRACTIONS if args.keep and d not in args.keep]
        print("dap curate select: kept " + ", ".join(f"{k} {v}" for k, v in kept.items())
              + "".join(f", {d} none (not in --keep)" for d in left))
    elif cmd == "run":
        from dap.curation.pipeline import Pipeline, load_curate_config

        state = Pipeline(load_curate_config(args.config, args.overrides), args.work,
                         progress=_progress(args)).run(args.stop_after)
        print(f"dap curate run: done: {', '.join(state['done'])}; state in {Path(args.work) / 'state.json'}")
    elif cmd == "status":
        from dap.curation.report import format_summary, status

        if args.plots is not None:  # before the pool is read: a file there failed as "file exists" at the end
            check_output(Path(args.plots), "dir", "--plots")
        summary, written = status(args.pool, args.plots)
        print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
        for p in written:
            print(f"wrote {p}")
        if args.plots is not None and not written:
            print(f"dap curate status: nothing to plot in {args.pool} yet: the plots show discriminator scores, TTA "
                  "disagreement and camera tilt, and no accepted row has any of them", file=sys.stderr)
    return 0
