"""`dap predict`: panoramas, folders, globs and videos in; depth, masks, point clouds out (see dap.inference)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dap.cli import parse_device, parse_network_size, positive_int, unit_interval
from dap.errors import DapError
from dap.inference import (
    DEFAULT_SEAM_PAD,
    NAMING_RULE,
    OUTPUT_KINDS,
    PNG16_SCALE,
    ScaleSmoother,
    check_seam_pad,
    expand_inputs,
    iter_frames,
    output_paths,
    outputs_complete,
    predict,
    resolve_model,
    select_device,
    write_outputs,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="panorama files, folders of images, glob patterns (quoted) or video files. "
                             + NAMING_RULE)
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--model", "--checkpoint", dest="model", default=None,
                        help="a model name (`dap models`: dap-vitl is the official release, fetched from the Hugging "
                             "Face Hub on first use), an official model.pth, a folder written by `dap convert`/"
                             "`dap train`, or hf:<repo>; with --backend onnxruntime, a .onnx file from `dap export`. "
                             "--checkpoint is the same option under its older name. Default: dap-tiny-synth, the "
                             "small model bundled with the package (synthetic data only)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="run the network with PyTorch, or an exported ONNX graph with onnxruntime (same pre- "
                             "and post-processing)")
    parser.add_argument("--outputs", default="npy,color,mask",
                        help=f"comma-separated outputs to write, any of: {', '.join(OUTPUT_KINDS)}; "
                             "npy/exr = float32 metres (0 = out of range), png16 = 16-bit PNG with "
                             f"{PNG16_SCALE:g} m per unit stored in the file")
    parser.add_argument("--resolution", type=parse_network_size, default=None,
                        help="working resolution HxW, 2:1, multiples of 16 (default: the model's own, 512x1024 for the "
                             "official model)")
    parser.add_argument("--seam-pad", type=float, default=DEFAULT_SEAM_PAD,
                        help="fraction of the width wrapped around each side of the 0/360 seam (0 = off)")
    parser.add_argument("--pad-to-erp", action="store_true",
                        help="accept partial panoramas wider than 2:1 by padding the missing latitudes")
    parser.add_argument("--upsample", choices=("bilinear", "guided"), default="bilinear",
                        help="how depth is brought from the working resolution back to a larger input: "
                             "bilinear, or guided by the full-resolution RGB (edge-aware)")
    parser.add_argument("--point-stride", type=positive_int, default=1, help="keep every Nth row/column in PLY/GLB")
    parser.add_argument("--smooth-scale", type=unit_interval, default=0.0, metavar="ALPHA",
                        help="videos only: smooth the depth scale over frames with an exponential moving average "
                             "of weight ALPHA on the past (e.g. 0.8; 0 = off)")
    parser.add_argument("--device", type=parse_device, default=None,
                        help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--overwrite", action="store_true", help="recompute inputs whose outputs already exist")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    kinds = [k.strip() for k in args.outputs.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown:
        raise DapError(f"unknown output kind(s) {unknown}; choose from {', '.join(OUTPUT_KINDS)}")
    check_seam_pad(args.seam_pad)
    items = expand_inputs(args.inputs)
    device = select_device(args.device)
    if args.backend == "onnxruntime":
        from dap.export import OnnxModel

        if args.model is None:
            raise DapError("--backend onnxruntime needs --model model.onnx (written by `dap export onnx`)")
        model = OnnxModel(args.model)
    else:
        model = resolve_model(args.model, device)
        if args.model is None:
            print("dap predict: using the bundled dap-tiny-synth (5 M parameters, trained on synthetic panoramas "
                  "only); for the paper's model pass --model dap-vitl", file=sys.stderr)
    missing = [s for s in args.inputs if not any(c in s for c in "*?[") and not os.path.exists(s)]
    if missing:
        raise DapError(f"no such file or folder: {', '.join(missing)}; check the path (quote glob patterns)")
    _check_writable(args.out)  # creates the folder: only once the inputs and the model are known to be good
    smooth = ScaleSmoother(args.smooth_scale)
    failures: list[tuple[str, str]] = []
    done = skipped = 0
    sources: dict[str, str] = {}  # output name -> input that has it this run
    start = time.perf_counter()
    for item in tqdm(iter_frames(items, failures), desc="predict", unit="pano", disable=None):
        # Names are distinct by construction except for video frames (<video>_000001) against an image of
        # that name: the later input fails rather than overwrite the earlier one's outputs.
        if item.name in sources:
            failures.append((item.source, f"its output name {item.name!r} is taken by {sources[item.name]}; "
                                          "rename one of them or predict them into different --out folders"))
            continue
        sources[item.name] = item.source
        paths = output_paths(args.out, item.name, kinds)
        if not args.overwrite and outputs_complete(paths):
            skipped += 1
            continue
        try:
            pred = predict(item.load(), model, resolution=args.resolution, seam_pad=args.seam_pad,
                           pad_to_erp=args.pad_to_erp, device=device, upsample=args.upsample)
            smooth(pred, item.video)
            write_outputs(pred, paths, point_stride=args.point_stride)
            done += 1
        except DapError as e:  # a bad input fails alone; write errors (disk full, ...) and bugs end the run
            failures.append((item.source, str(e)))
    elapsed = time.perf_counter() - start
    per = f", {elapsed / done:.2f} s per panorama" if done else ""
    print(f"predicted {done} panorama(s){per}; skipped {skipped} with existing outputs; "
          f"{len(failures)} failed. Outputs ({', '.join(kinds)}) in {args.out}")
    for source, reason in failures:
        reason = " ".join(reason.split())
        print(f"dap predict: error: {reason if source in reason else f'{source}: {reason}'}", file=sys.stderr)
    if failures:
        return 1 if done or skipped else 2  # some inputs failed / every input was bad
    return 0


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".dap-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DapError(f"cannot write to the output folder {out_dir}: {e.strerror or e}. Choose another --out.") from e
