"""`dap eval`: score a checkpoint or saved predictions on a depth benchmark (see dap.evaluation)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dap.cli import (
    folder_name,
    nonnegative_int,
    parse_device,
    parse_network_size,
    parse_panorama_size,
    positive_float,
    positive_int,
)
from dap.data.datasets import DATASETS, get_dataset
from dap.errors import DapError, collect_input_warnings
from dap.evaluation import NO_VALID_GT, PROTOCOLS, EvalConfig, evaluate, format_table, model_predictor
from dap.inference import DEFAULT_SEAM_PAD, check_seam_pad, compute_dtype, model_fingerprint, other_resolution_note
from dap.models import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="benchmark loader")
    parser.add_argument("--root", required=True, help="dataset root directory (or manifest file for 'folder')")
    parser.add_argument("--split", default="test", help="dataset split")
    parser.add_argument(
        "--split-file", default=None,
        help="'rgb depth' pair list relative to the root; an absolute path that exists is read as given "
             "(stanford2d3d, matterport3d)"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model to evaluate: a name (`dap models`), a folder of ours or an official "
                                          "model.pth")
    src.add_argument("--predictions", help="folder of saved predictions, <sample name>.npy, .exr or .depth.png in "
                                           "metres (as `dap predict` writes them; no model)")
    parser.add_argument("--out", required=True, type=folder_name,
                        help="output folder (metrics.json, per_image.*, panels/)")
    parser.add_argument(
        "--protocol", nargs="+", action="extend", choices=PROTOCOLS,  # given twice: both (not the last alone)
        help="alignment protocols to report (default: metric)")
    parser.add_argument(
        "--max-depth",
        type=positive_float,
        default=100.0,
        help="ground truth above this is ignored and predictions are clipped to it "
        "(10 = indoor convention, 100 = DAP convention)",
    )
    parser.add_argument("--min-depth", type=positive_float, default=1e-3,
                        help="ground truth at or below this is ignored (> 0: the metrics divide by it)")
    parser.add_argument(
        "--range-cap",
        type=positive_float,
        default=100.0,
        help="depth given to pixels the model marks out of range (DAP convention: 100)",
    )
    parser.add_argument("--solid-angle", action="store_true", help="weight pixels by their solid angle")
    parser.add_argument("--resolution", type=parse_network_size, default=None,
                        help="model input size HxW, 2:1, multiples of 16 (default: the model's own; 512x1024 for the "
                             "official model, 256x512 for the bundled one, which is much less accurate at any other)")
    parser.add_argument("--seam-pad", type=float, default=DEFAULT_SEAM_PAD,
                        help="fraction of the width wrapped around each side of the 0/360 seam before the model "
                             "(0 = off, as the official evaluation)")
    parser.add_argument(
        "--eval-size",
        type=parse_panorama_size,
        default=None,
        help="compare at this HxW (GT nearest-resampled, and so is a prediction of the GT's size; others "
             "bilinear); default: the GT's own size",
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--panels", type=nonnegative_int, default=4, help="number of qualitative panels to save")
    parser.add_argument("--device", type=parse_device, default="cpu", help="torch device for the model")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                        help="the network's arithmetic (default fp32: the same numbers on every run; auto is what "
                             "dap predict uses: bf16 on CUDA and on CPUs where it is measurably faster)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation, as dap predict --tta: the network averaged over the panorama, "
                             "its mirror image and both turned half a turn (4x the time)")


def run(args: argparse.Namespace) -> int:
    if args.min_depth >= args.max_depth:
        raise DapError(f"--min-depth {args.min_depth:g} must be below --max-depth {args.max_depth:g}")
    if args.predictions and not Path(args.predictions).is_dir():
        raise DapError(f"--predictions {args.predictions} is not a folder; pass the folder of <sample name>.npy files")
    model_only = [o for o, given in (("--resolution", args.resolution is not None),
                                     ("--seam-pad", args.seam_pad != DEFAULT_SEAM_PAD),
                                     ("--precision", args.precision != "fp32"), ("--tta", args.tta)) if given]
    if args.predictions and model_only:
        print(f"dap eval: note: {' and '.join(model_only)} set how a model runs; saved --predictions are scored as "
              "they are", file=sys.stderr)
    kwargs = {}
    if args.split_file:
        if args.dataset not in ("stanford2d3d", "matterport3d"):
            raise DapError(
                f"--split-file applies to stanford2d3d and matterport3d, not {args.dataset}; "
                "use a manifest with the 'folder' loader for a custom list."
            )
        kwargs["split_file"] = args.split_file
    dataset = get_dataset(args.dataset, args.root, split=args.split, **kwargs)
    cfg = EvalConfig(
        protocols=tuple(dict.fromkeys(args.protocol or ["metric"])),  # each once, in order
        min_depth=args.min_depth,
        max_depth=args.max_depth,
        range_cap=args.range_cap,
        weights="solid_angle" if args.solid_angle else None,
        eval_size=args.eval_size,
        limit=args.limit,
        panels=args.panels,
    )
    expected = getattr(dataset, "expected_size", None)
    if expected and len(dataset) != expected and args.limit is None:
        print(f"dap eval: note: {args.dataset} {args.split} has {len(dataset)} samples here; the standard split has "
              f"{expected}. Numbers are not comparable with published ones.", file=sys.stderr)
    check_seam_pad(args.seam_pad)
    with collect_input_warnings() as warned:
        summary = _evaluate(args, dataset, cfg)
    if summary["n_images"] and len(summary["skipped"]) == summary["n_images"] * len(cfg.protocols):
        details = Path(args.out) / "metrics.json"
        # the ground truth's reason, or the model's (no finite depth anywhere): each sends the user to other files
        other = next((s for s in summary["skipped"] if not s["reason"].startswith(NO_VALID_GT)), None)
        if other is None:
            raise DapError(f"none of the {summary['n_images']} samples under {args.root} has valid ground truth (depth "
                           f"in ({args.min_depth:g}, {args.max_depth:g}] m); check the depth files and their scale "
                           f"(metres_per_unit) or --max-depth. Details in {details}")
        raise DapError(f"none of the {summary['n_images']} samples under {args.root} could be scored; sample "
                       f"{other['name']} ({other['protocol']}): {other['reason']} Details in {details}")
    for text in warned:  # one line each, after the error check: a failed run says its error alone
        print(f"dap eval: warning: {text}", file=sys.stderr)
    print(format_table(summary))
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} (image, protocol) pairs that could not be scored (no valid ground "
              "truth, or a prediction without finite depth there; each with its reason in metrics.json)")
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def _evaluate(args: argparse.Namespace, dataset, cfg: EvalConfig) -> dict:
    """`evaluate` on saved predictions or on the model of --checkpoint, with its prediction cache."""
    if args.predictions:
        return evaluate(dataset, config=cfg, out_dir=args.out, predictions_dir=args.predictions,
                        progress=sys.stderr.isatty())
    model = load_model(args.checkpoint, device=args.device)
    if note := other_resolution_note(args.resolution, model):
        print(f"dap eval: note: {note}", file=sys.stderr)
    resolution = tuple(args.resolution or model.cfg.default_resolution)
    predictor = model_predictor(model, device=args.device, resolution=resolution, seam_pad=args.seam_pad,
                                precision=args.precision, tta=args.tta)
    key = {  # the inputs too: sample names (synth shards' are 00000000...) repeat from one dataset to the next
        "dataset": args.dataset,
        "root": str(Path(args.root).resolve()),
        "split": getattr(dataset, "split", args.split),  # the loader's name (every split of a synth folder is "all")
        "split_file": _read_split_file(dataset),
        "checkpoint": str(args.checkpoint),
        "model_sha256": model_fingerprint(model),
        "resolution": list(resolution),
        "seam_pad": args.seam_pad,
        "precision": str(compute_dtype(torch.device(args.device), args.precision)).removeprefix("torch."),
        "range_cap": args.range_cap,
        **({"tta": True} if args.tta else {}),  # absent when off: caches from before it still match
        # 16-bit predictions from before the heads' last two layers and their upsampling ran in float32 (2026-11-28)
        # were rounded to 0.4% steps, then streaked
        **({"float32_in_heads": "upsampling, last 3x3 and 1x1"} if args.precision != "fp32" else {}),
    }
    return evaluate(dataset, predictor, config=cfg, out_dir=args.out, cache_key=key, progress=sys.stderr.isatty())


def _read_split_file(dataset) -> str | None:
    """The split file the loader read (found under --root where --split-file is relative to it), not the option's
    text resolved against the current folder, which named a file that is not there. Every loader that takes
    --split-file holds it (the others refuse the option)."""
    found = getattr(dataset, "split_file", None)
    return str(Path(found).resolve()) if found else None
