"""`dap export onnx`: a model as an ONNX graph for onnxruntime and others (see dap.export)."""

from __future__ import annotations

import argparse
import sys

from dap.cli import file_path, parse_network_size
from dap.errors import DapError
from dap.export import INPUT, OPSET, OUTPUTS, export_onnx, is_dap_export, require_package
from dap.inference import DEFAULT_SEAM_PAD, check_seam_pad, other_resolution_note, seam_pad_columns
from dap.models import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx"], help="export format")
    parser.add_argument("--model", default="dap-tiny-synth",
                        help="a model name (`dap models`), an official model.pth or a folder written by `dap convert`")
    parser.add_argument("--out", required=True, type=file_path,
                        help="the .onnx file to write (new, or an earlier export of dap, which is replaced)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--resolution", type=parse_network_size, default=None,
                      help="fixed working resolution HxW, 2:1, multiples of 16; default: the model's own")
    size.add_argument("--dynamic", action="store_true", help="dynamic height and width (multiples of 16)")
    parser.add_argument("--seam-pad", type=float, default=DEFAULT_SEAM_PAD,
                        help="seam columns (fraction of the width): a fixed-size graph is traced with them, and "
                             "either graph records them, so dap predict and dap.predict use them unless told "
                             "otherwise")


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() != ".onnx":  # a typo such as --out pano.png would replace that file with a graph
        example = args.out.with_name("model.onnx") if args.out.name.startswith(".") else args.out.with_suffix(".onnx")
        raise DapError(f"--out {args.out}: give the ONNX file a .onnx name (e.g. {example})")
    # checked before the model is loaded: a named model not yet cached is a download of up to 1.4 GB
    require_package("onnx")
    check_seam_pad(args.seam_pad)
    if args.out.exists() and not is_dap_export(args.out):
        raise DapError(f"--out {args.out} exists and is not a graph `dap export` wrote, which is all it replaces: "
                       "choose another --out, or delete that file first")
    model = load_model(args.model)
    if note := other_resolution_note(args.resolution, model):
        print(f"dap export: note: {note}", file=sys.stderr)
    out = export_onnx(model, args.out, resolution=args.resolution, dynamic=args.dynamic, seam_pad=args.seam_pad)
    h, w = args.resolution or model.cfg.default_resolution
    w += 2 * seam_pad_columns(w, args.seam_pad, model.cfg.vit.patch_size)
    shape = "(batch, 3, height, width)" if args.dynamic else f"(batch, 3, {h}, {w})"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {model.cfg.name}, opset {OPSET}): input {INPUT} {shape}, "
          f"outputs {', '.join(OUTPUTS)}")
    return 0
