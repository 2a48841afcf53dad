"""`dap predict`: panoramas, folders, globs and videos in; depth, masks, point clouds out (see dap.inference)."""

from __future__ import annotations

import argparse
import glob
import os
import queue
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from dap.cli import (
    camera_height,
    folder_path,
    parse_device,
    parse_network_size,
    positive_float,
    positive_int,
    smoothing_weight,
)
from dap.errors import DapError, collect_input_warnings
from dap.inference import (
    DEFAULT_SEAM_PAD,
    NAMING_RULE,
    OUTPUT_KINDS,
    PNG16_SCALE,
    POINT_KINDS,
    PRECISIONS,
    ScaleSmoother,
    blocked_folder,
    check_onnx_precision,
    check_output_kinds,
    check_seam_pad,
    expand_inputs,
    input_file_changed,
    input_identity,
    iter_frames,
    model_fingerprint,
    model_precision,
    model_seam_pad,
    name_too_long,
    other_resolution_note,
    output_paths,
    outputs_complete,
    photo_sphere_top,
    predict,
    prepare_model,
    read_record,
    record_conflict,
    record_path,
    resolve_model,
    same_input_file,
    select_device,
    write_outputs,
    write_record,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="panorama files (2:1 JPEG, PNG, WebP, TIFF, BMP, GIF; HDR .hdr/.exr, exposed like a "
                             "photo), folders of images (not their sub-folders), glob patterns (quoted; ** matches "
                             "sub-folders at any depth) or video files. " + NAMING_RULE)
    parser.add_argument("--out", required=True, type=folder_path, help="output folder (created if missing)")
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
                             "official model, 256x512 for the bundled one, which is much less accurate at any other)")
    parser.add_argument("--seam-pad", type=float, default=None,
                        help=f"fraction of the width wrapped around each side of the 0/360 seam (0 = off; default "
                             f"{DEFAULT_SEAM_PAD:g}, or what an ONNX graph was exported with)")
    parser.add_argument("--pad-to-erp", action="store_true",
                        help="accept partial panoramas wider than 2:1 (360 degrees across) by padding the missing "
                             "latitudes with masked rows: where the file's Photo Sphere XMP puts the image, else "
                             "centred on the horizon")
    parser.add_argument("--upsample", choices=("bilinear", "guided"), default="bilinear",
                        help="how depth is brought from the working resolution back to a larger input: "
                             "bilinear, or guided by the full-resolution RGB (edge-aware)")
    parser.add_argument("--point-stride", type=positive_int, default=1, help="keep every Nth row/column in PLY/GLB")
    parser.add_argument("--smooth-scale", type=smoothing_weight, default=0.0, metavar="ALPHA",
                        help="videos only: smooth the depth scale over frames with an exponential moving average "
                             "of weight ALPHA on the past (e.g. 0.8; 0 = off; below 1)")
    parser.add_argument("--every", type=positive_float, default=None, metavar="SECONDS",
                        help="videos only: predict one frame every SECONDS of video (the first frame at or after "
                             "each multiple of SECONDS, by the frames' timestamps; "
                             "frames keep their numbers in the video, e.g. clip_000060 at 30 fps and --every 2; "
                             "the frames in between are read, not converted or predicted). Default: every frame")
    parser.add_argument("--camera-height", type=camera_height, default=None, metavar="METRES",
                        help="height of the lens above the floor, if known (e.g. a tripod's 1.6): rescales each "
                             "depth map so the floor it shows lies that far below the camera. A model can only "
                             "guess metric scale; a known height fixes it. Inputs with no floor or ground visible "
                             "25-70 degrees below the horizon fail. Not with --smooth-scale, which would rescale "
                             "each frame again")
    parser.add_argument("--level", action="store_true",
                        help="level panoramas whose camera was tilted (walls lean) before the network sees them, "
                             "from how their vertical edges lean, and turn the outputs back to the input's frame. "
                             "Without it, a tilt over 10 degrees gets a warning")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the network over the panorama, its mirror image and "
                             "both turned half a turn (4 forwards: 4x the time) for a little less error and a much "
                             "smaller seam; measured in docs/inference.md")
    parser.add_argument("--device", type=parse_device, default=None,
                        help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the network's arithmetic: fp32 (exact), bf16, fp16, int8 (CPU: int8 backbone "
                             "matmuls), or auto (default): bf16 on CUDA, and on CPUs with native bf16 (AVX-512 BF16, "
                             "AMX) where a bf16 matmul measures at least 1.5x as fast as fp32; fp32 elsewhere. Drift "
                             "and speed: docs/performance.md. onnxruntime runs fp32")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that stand in the way: those made otherwise (another file, model or "
                             "settings) and files dap predict did not write (a folder at an output path fails its "
                             "input either way). Without it, such an input fails instead. "
                             "Either way an input whose outputs are complete and were made from the same file with "
                             "the same model and settings (as recorded in .<name>.dap.json beside them) is skipped, "
                             "so an interrupted --overwrite run goes on where it stopped (delete outputs to make them "
                             "again). Where it replaces another file's or setting's outputs it also deletes that "
                             "name's outputs of kinds this run does not make, and the frames an earlier version of a "
                             "video left that this run does not reach. No output ever replaces an input of the run")


def run(args: argparse.Namespace) -> int:
    from dap import io

    kinds = list(dict.fromkeys(k.strip() for k in args.outputs.split(",") if k.strip()))  # each once, in order
    check_output_kinds(kinds)
    if not kinds:
        raise DapError(f"--outputs names no output; give one or more of {', '.join(OUTPUT_KINDS)}")
    if args.seam_pad is not None:
        check_seam_pad(args.seam_pad)
    if args.camera_height is not None and args.smooth_scale:
        raise DapError("--camera-height sets each frame's scale from its floor and --smooth-scale would rescale it "
                       "towards the frames before: use one of them (--camera-height where the camera's height is "
                       "known)")
    items, ignored = expand_inputs(args.inputs)  # before the model: a mistyped path should not wait for dap-vitl
    for option, what in (("smooth_scale", "smooths over"), ("every", "samples")):
        if getattr(args, option) and not any(i.video for i in items):
            print(f"dap predict: note: --{option.replace('_', '-')} {what} a video's frames; no input is a video, so "
                  "it does nothing", file=sys.stderr)
    out = os.path.realpath(args.out)  # an --out inside an input folder holds our outputs: not one to search
    subs = [p for p in ignored if p.is_dir() and os.path.realpath(p) != out]
    ignored = [p for p in ignored if not p.is_dir()]
    if subs:
        shown = ", ".join(p.name for p in subs[:5]) + (f" and {len(subs) - 5} more" if len(subs) > 5 else "")
        print(f"dap predict: not searching {len(subs)} sub-folder(s) of the input folder(s): {shown}; pass them too, "
              "or a pattern such as 'panos/*' ('panos/**' for every depth)", file=sys.stderr)
    if ignored:
        shown = ", ".join(p.name for p in ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        videos = "; pass a video by its own path" if any(io.listed_as_video(p) for p in ignored) else ""
        print(f"dap predict: ignoring {len(ignored)} file(s) in the input folder(s) that are not images "
              f"({', '.join(io.IMAGE_SUFFIXES)}): {shown}{videos}", file=sys.stderr)
        by_kind: dict[str, list[str]] = {}
        for p in ignored:
            if known := io.unsupported_format(p):
                by_kind.setdefault(known, []).append(p.name)
        for kind, names in by_kind.items():
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            print(f"dap predict: note: {', '.join(names[:3])}{more}: {kind}", file=sys.stderr)
    device = select_device(args.device)
    if args.backend == "onnxruntime":
        check_onnx_precision(args.precision)  # before loading the model
        from dap.export import OnnxModel

        if args.model is None:
            raise DapError("--backend onnxruntime needs --model model.onnx (written by `dap export onnx`)")
        model = OnnxModel(args.model)
        args.seam_pad = model_seam_pad(model) if args.seam_pad is None else args.seam_pad
        # a fixed-size graph and another working size: said once, not for every input after decoding it
        model.check_size(args.resolution or model.cfg.default_resolution, args.seam_pad)
    else:
        model = resolve_model(args.model, device)
        if args.model is None:
            print("dap predict: using the bundled dap-tiny-synth (5 M parameters, trained on synthetic panoramas "
                  "only); for the paper's model pass --model dap-vitl", file=sys.stderr)
    args.seam_pad = model_seam_pad(model) if args.seam_pad is None else args.seam_pad
    if note := other_resolution_note(args.resolution, model):
        print(f"dap predict: note: {note}", file=sys.stderr)
    precision = model_precision(model, args.precision, device)
    if args.precision == "auto" and precision != "fp32":
        print(f"dap predict: computing in {precision} on this {device.type} (--precision auto); pass --precision fp32 "
              "for exact float32", file=sys.stderr)
    # What each input's outputs are made with, recorded beside them: a rerun skips only outputs made the same way
    settings = {"model": model_fingerprint(model), "backend": args.backend, "precision": precision,
                "resolution": list(args.resolution or model.cfg.default_resolution), "seam_pad": args.seam_pad,
                "pad_to_erp": args.pad_to_erp, "upsample": args.upsample, "camera_height": args.camera_height,
                **({"level": True} if args.level else {}),  # absent when off: records from before it still match
                **({"tta": True} if args.tta else {}),
                # at their defaults where they do nothing (images; no point cloud), so they do not block a rerun
                "smooth_scale": args.smooth_scale,
                # the smoothing runs over the frames predicted: another sampling gives other frames another scale
                **({"every_s": args.every} if args.every and args.smooth_scale else {}),
                "point_stride": args.point_stride if POINT_KINDS & set(kinds) else 1}
    model = prepare_model(model, precision, in_place=True)  # once, not per panorama (int8 quantises here)
    # Two runs into one folder at once would both find no record for an input and mix their outputs
    with io.folder_lock(args.out, "dap predict"):
        return _predict_all(args, items, kinds, model, settings, precision, device)


def _predict_all(args: argparse.Namespace, items: list, kinds: list[str], model, settings: dict, precision: str,
                 device) -> int:
    """Predict every input into args.out (held by this run) and report; the exit code."""
    from tqdm import tqdm

    _check_writable(args.out)  # creates the folder: only once the inputs and the model are known to be good
    smooth = ScaleSmoother(args.smooth_scale)
    repeats = _RepeatedWarnings()
    failures = _Failures()
    counts = {"done": 0, "skipped": 0}
    start = time.perf_counter()
    # Three stages overlap: a thread decodes the next inputs, this thread runs the network, a thread writes.
    writer = _Writer(lambda job: _write(job, args.point_stride, failures, counts))
    try:  # closed below: on an error or a signal (Ctrl-C, SIGTERM) without writing what is queued
        for seq, item, paths, record, rgb, top, notes in tqdm(
                _background(_decoded(items, args, kinds, settings, failures, counts)), desc="predict", unit="pano",
                disable=None):
            if rgb is None:  # a video frame skipped with its outputs: the scale smoothing goes on from its state
                smooth.restore(item.video, record)
                continue
            for text in notes:  # from decoding, which runs on another thread
                tqdm.write(f"dap predict: warning: {item.source}: {text}", file=sys.stderr)
            try:
                with collect_input_warnings() as warned:
                    pred = predict(rgb, model, resolution=args.resolution, seam_pad=args.seam_pad,
                                   pad_to_erp=args.pad_to_erp, pad_top=top, device=device, upsample=args.upsample,
                                   precision=precision, camera_height=args.camera_height, level=args.level,
                                   tta=args.tta)
            except DapError as e:  # a bad input fails alone; write errors (disk full, ...) and bugs end the run
                failures.add(seq, item.source, str(e), item.video)
                continue
            finally:  # one line naming the input (the library cannot: it is given pixels)
                for text in warned:
                    if not (item.video and repeats.seen(item.video, text)):  # a video's black intro: once
                        tqdm.write(f"dap predict: warning: {item.source}: {text}", file=sys.stderr)
            smooth(pred, item.video)
            if item.video and args.smooth_scale:  # what a resumed run needs to smooth the next frames the same way
                record = (record[0], {**record[1], "smooth_log_median": smooth.state(item.video)}, record[2])
            writer.put((seq, item, pred, paths, record))
    except BaseException:
        writer.close(abandon=True)
        raise
    writer.close()
    for (video, text), count in repeats.counts.items():
        gist = re.split(r"[:.]\s", text, maxsplit=1)[0]
        print(f"dap predict: warning: {video}: also on {count} later frame(s): {gist}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    done, skipped = counts["done"], counts["skipped"]
    per = f", {elapsed / done:.2f} s per panorama" if done else ""
    print(f"predicted {done} panorama(s){per}; skipped {skipped} with existing outputs; "
          f"{failures.count()} failed. Outputs ({', '.join(kinds)}) in {args.out}")
    for source, reason in failures.lines():
        reason = " ".join(reason.split())
        print(f"dap predict: error: {reason if source in reason else f'{source}: {reason}'}", file=sys.stderr)
    if failures.count():
        return 1 if done or skipped else 2  # some inputs failed / every input was bad
    return 0


def _why_unreadable(source: str, error: OSError) -> str:
    """The reason an input that was listed cannot be read, saying what to do where we can tell."""
    from dap.io import dangling_link

    dangling = dangling_link(source)
    if dangling:
        return f"it is {dangling}. Fix the link or remove it, or pass the files to predict instead of the folder"
    return str(error.strerror or error)


def _decoded(items, args, kinds, settings, failures, counts):
    """(position, item, output paths, record, RGB, --pad-to-erp's top row or None, notes) for each input to predict,
    in order: names checked, inputs whose outputs are complete and were made from the same file with the same model
    and settings skipped (never decoded), inputs whose outputs were made otherwise failed unless --overwrite, the
    rest decoded. Inputs that fail to decode go to `failures`."""
    from dap import io

    sources: dict[str, str] = {}  # output name -> input that has it this run
    # no output may replace an input, --overwrite or not: compared as real paths (an input or --out through a link)
    inputs = {os.path.realpath(i.video or i.source) for i in items}
    video_failures: list[tuple[str, str]] = []  # a video that cannot be decoded: reported at its position

    def fail(seq: int, item, reason: str, kind: str) -> None:
        """An input that fails before it is decoded (a video's later frames failing so too: counted, by `kind`)."""
        failures.add(seq, item.source, reason, item.video, kind)

    visited: dict[str, tuple[str, set[str]]] = {}  # video -> (its frames' name stem, the frames' names this run)
    seq = -1
    for seq, item in enumerate(iter_frames(items, video_failures, args.pad_to_erp, args.every)):
        for source, reason in video_failures:
            failures.add(seq, source, reason)
        video_failures.clear()
        if item.video:
            visited.setdefault(item.video, (item.name[:-len("_000000")], set()))[1].add(item.name)
        # Names are distinct by construction except for video frames (<video>_000001) against an image of
        # that name: the later input fails rather than overwrite the earlier one's outputs.
        if item.name in sources:
            fail(seq, item, f"its output name {item.name!r} is taken by {sources[item.name]}; rename one of them or "
                            "predict them into different --out folders", "taken")
            continue
        sources[item.name] = item.source
        paths = output_paths(args.out, item.name, kinds)
        clash = next((k for k, p in paths.items() if os.path.realpath(p) in inputs), None)
        if clash:  # an HDR panorama pano.exr predicted into its own folder with --outputs exr; x.png beside x.mask.png
            which = ("the input itself" if os.path.realpath(paths[clash]) == os.path.realpath(item.source)
                     else f"the input {paths[clash]}")
            fail(seq, item, f"its {clash} output would overwrite {which}; predict into another --out, or leave that "
                            "output out", "clash")
            continue
        record = record_path(args.out, item.name)
        in_the_way = next((k for k, p in paths.items() if k != "cubemap" and os.path.isdir(p)), None)
        unwritable = (name_too_long([*paths.values(), record]) or blocked_folder([*paths.values(), record])
                      or in_the_way and f"a folder is in the way of its {in_the_way} output, {paths[in_the_way]}; move "
                                        "it away, or predict into another --out")
        if unwritable:  # an input's problem, found before decoding it; a write error would end the whole run
            fail(seq, item, unwritable, "unwritable")
            continue
        try:
            expected = {"input": input_identity(item.video or item.source),
                        "settings": settings if item.video else {**settings, "smooth_scale": 0.0}}
        except OSError as e:  # gone or unreadable since the inputs were listed
            fail(seq, item, f"cannot read {item.source}: {_why_unreadable(item.source, e)}", "unreadable")
            continue
        recorded = read_record(record)
        if recorded is not None:
            recorded, expected = _point_stride_where_it_counts(recorded, expected, paths)
        conflict = record_conflict(recorded, expected) if recorded is not None else None
        stale: list[Path] = []
        if conflict and args.overwrite:  # outputs made otherwise: replaced, as asked
            # and those of kinds this run does not make are removed as it writes: they are of the other file or
            # settings (a PLY of the old video beside the new one's depth)
            stale = list(output_paths(args.out, item.name, [k for k in recorded.get("outputs", [])
                                                           if k in OUTPUT_KINDS and k not in paths]).values())
            recorded = None
        if recorded is not None:
            if conflict:  # never silently replace (or keep) outputs of another input, model or setting
                fail(seq, item, f"{args.out} already holds outputs named {item.name}, made differently: {conflict}. "
                                "Pass --overwrite to replace them, or predict into another --out", "made otherwise")
                continue
            listed = set(recorded.get("outputs", paths))  # a record without the list: taken as listing these
            # an output kind the record does not list, already on disk: not made by the run the record describes
            # (an earlier run with other settings, or the user's own file); never counted as done nor replaced
            unlisted = next((p for k, p in paths.items() if k not in listed and os.path.lexists(p)), None)
            if unlisted is not None and not args.overwrite:
                fail(seq, item, f"{unlisted} already exists but is not among the outputs recorded in {record.name} "
                                "(another run made it, or not dap predict); pass --overwrite to replace it, or predict "
                                "into another --out", "unlisted")
                continue
            if recorded.get("complete", True) and outputs_complete(paths) and unlisted is None:
                counts["skipped"] += 1
                if item.video and args.smooth_scale:  # in order, through the main thread, which smooths
                    yield seq, item, None, recorded.get("smooth_log_median"), None, None, []
                continue
            # outputs of other kinds this record lists, made the same way, stay listed beside the new ones: those on
            # disk (each written whole) where a killed run's record lists kinds it may not have come to
            others = output_paths(args.out, item.name, [k for k in listed - paths.keys() if k in OUTPUT_KINDS])
            if not recorded.get("complete", True):
                others = {k: p for k, p in others.items() if outputs_complete({k: p})}
            expected = {**expected, "outputs": sorted(others)}
        elif not args.overwrite and (foreign := next((p for p in paths.values() if os.path.lexists(p)), None)):
            # no record: not written by dap predict (it records before it writes), e.g. the user's ground truth
            fail(seq, item, f"{foreign} already exists and was not written by dap predict (no {record.name} beside "
                            "it); pass --overwrite to replace it, or predict into another --out", "foreign")
            continue
        try:
            rgb, notes = item.load()
            # a partial panorama's place in the sphere, from its file's Photo Sphere XMP (a header read, here on
            # the decoding thread)
            top = (photo_sphere_top(io.read_photo_sphere(item.source), *rgb.shape[:2])
                   if args.pad_to_erp and not item.video and rgb.shape[1] != 2 * rgb.shape[0] else None)
        except DapError as e:
            failures.add(seq, item.source, str(e), item.video)
            continue
        yield seq, item, paths, (record, expected, stale), rgb, top, notes
    for source, reason in video_failures:
        failures.add(seq + 1, source, reason)
    if args.overwrite:  # a video replaced by another (shorter) one: the old one's other frames would pass for its own
        from tqdm import tqdm

        failed = failures.sources()
        for video, (stem, names) in visited.items():
            if video not in failed and (removed := _remove_stale_frames(args.out, video, stem, names)):
                tqdm.write(f"dap predict: note: {video}: removed the outputs of {len(removed)} frame(s) that an "
                           f"earlier version of the file left (frame {removed[0]} on)", file=sys.stderr)


def _remove_stale_frames(out: Path, video: str, stem: str, visited: set[str]) -> list[int]:
    """Delete the outputs and records of `video`'s frames in `out` that an earlier run made from another version of
    the file (other size or modification time) and this run, with --overwrite, did not reach (the video is shorter
    now, or --every skips them); those it reached are its own (the writer may still be on them). Returns their
    frame numbers, in order."""
    now = input_identity(video)
    removed = []
    # the records lie beside the outputs: in a sub-folder where the name has one (inputs from several folders)
    folder, base = (out / stem).parent, stem.rsplit("/", 1)[-1]
    for record in sorted(folder.glob(f".{glob.escape(base)}_*.dap.json")):
        name = stem[:len(stem) - len(base)] + record.name[1:-len(".dap.json")]
        if name in visited or not re.fullmatch(r"\d{6}", name[len(stem) + 1:]) or \
                (recorded := read_record(record)) is None:
            continue
        before = recorded.get("input", {})
        if not (same_input_file(before, now) and input_file_changed(before, now)):
            continue
        _remove_outputs(output_paths(out, name, [k for k in recorded.get("outputs", []) if k in OUTPUT_KINDS]).values())
        record.unlink()
        removed.append(int(name[len(stem) + 1:]))
    return removed


def _remove_outputs(paths) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _point_stride_where_it_counts(recorded: dict, expected: dict, paths: dict) -> tuple[dict, dict]:
    """(record, this run's record) with `point_stride` compared only where both make a point cloud (ply, glb): a
    strided PLY added to a folder of depth maps, or depth maps added beside it, was refused as "made differently".
    A run without a point cloud keeps the recorded stride (its point clouds stay listed)."""
    listed = set(recorded.get("outputs", paths))  # a record without the list: taken as listing these
    old, new = recorded.get("settings", {}), expected["settings"]
    if not POINT_KINDS & paths.keys():
        kept = {k: v for k, v in new.items() if k != "point_stride"}  # absent from an old record: absent here
        return recorded, {**expected, "settings": kept | ({"point_stride": old["point_stride"]}
                                                          if "point_stride" in old else {})}
    if not POINT_KINDS & listed:
        return {**recorded, "settings": {**old, "point_stride": new["point_stride"]}}, expected
    return recorded, expected


def _write(job, point_stride: int, failures: _Failures, counts: dict) -> None:
    from tqdm import tqdm

    seq, item, pred, paths, (record, content, stale) = job
    outputs = sorted({*content.get("outputs", []), *paths})
    try:
        # First a record that says the outputs are being written (a rerun after a kill makes them again, and knows
        # they are ours), then the outputs, then the record that says they are complete.
        write_record(record, {**content, "outputs": outputs, "complete": False})
        _remove_outputs(stale)
        for note in write_outputs(pred, paths, point_stride=point_stride):
            tqdm.write(f"dap predict: warning: {item.source}: {note}", file=sys.stderr)
        write_record(record, {**content, "outputs": outputs, "complete": True})
        counts["done"] += 1
    except DapError as e:  # e.g. a panorama too small for a cubemap; OSError (disk full) ends the run
        failures.add(seq, item.source, str(e), item.video)
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as e:  # the path, not the disk: one input's
        # problem (another input's output folder made since its check: inputs a.png and a.npy/b.png)
        failures.add(seq, item.source, f"cannot write its outputs: {e.strerror}, {e.filename}", item.video)


def _background(iterable, size: int = 2):
    """Iterate `iterable` on a background thread, up to `size` items ahead. Its exceptions (KeyboardInterrupt
    included) are raised here, where the consumer is."""
    q: queue.Queue = queue.Queue(size)
    end = object()
    stop = threading.Event()  # the consumer has gone: stop producing

    def hand(entry) -> bool:
        """Queue `entry` for the consumer; False once it has gone."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for x in iterable:
                if not hand((x, None)):
                    return
            hand((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            hand((end, e))
        finally:
            # Closed here, on its own thread, at once: a video's OpenCV capture left open until the interpreter
            # exits (after Ctrl-C, the traceback keeps it alive) sometimes aborted the process (exit 134)
            if (close := getattr(iterable, "close", None)) is not None:
                close()

    thread = threading.Thread(target=produce, daemon=True, name="dap-predict-decode")
    thread.start()
    try:
        while True:
            x, error = q.get()
            if error is not None:
                raise error
            if x is end:
                return
            yield x
    finally:
        stop.set()
        thread.join(timeout=10)  # it stops within one decode


class _Failures:
    """The inputs that failed, reported in input order. A video's later frames that fail for the same reason (the
    `kind` given, else the text with its numbers left out: a frame's number, its file's) are counted on a line after
    the first one's, not listed: a 30 s clip without a floor for --camera-height gave 900 lines. Added to from the
    decode, main and write threads."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str]] = []  # (input's position, source, reason)
        self.later: dict[tuple[str, str], list[int]] = {}  # (video, kind) -> [its first's position, later frames]
        self.lock = threading.Lock()

    def add(self, seq: int, source: str, reason: str, video: str | None = None, kind: str | None = None) -> None:
        with self.lock:
            if video:
                key = (video, kind or re.sub(r"\d+", "#", reason))
                if key in self.later:
                    self.later[key][1] += 1
                    return
                self.later[key] = [seq, 0]
            self.rows.append((seq, source, reason))

    def count(self) -> int:
        """Inputs and frames that failed (not lines)."""
        return len(self.rows) + sum(n for _, n in self.later.values())

    def sources(self) -> set[str]:
        return {source for _, source, _ in self.rows}

    def lines(self) -> list[tuple[str, str]]:
        """(source, reason) to print, in input order."""
        folded = [(first, 1, video, f"also {n} later frame(s), for the same reason")
                  for (video, _), (first, n) in self.later.items() if n]
        return [(source, reason) for *_, source, reason in
                sorted([(seq, 0, source, reason) for seq, source, reason in self.rows] + folded,
                       key=lambda row: row[:2])]


class _RepeatedWarnings:
    """Which warnings a video's frames have had: each text is printed for its first frame, later frames counted
    (`counts`: (video, text) -> later frames)."""

    def __init__(self) -> None:
        self.printed: set[tuple[str, str]] = set()
        self.counts: dict[tuple[str, str], int] = {}

    def seen(self, video: str, text: str) -> bool:
        if (video, text) not in self.printed:
            self.printed.add((video, text))
            return False
        self.counts[video, text] = self.counts.get((video, text), 0) + 1
        return True


class _Writer:
    """Runs `write(job)` on a background thread, at most `size` jobs queued. The first exception it raises stops
    the writing; `put` and `close` raise it in the calling thread."""

    def __init__(self, write, size: int = 2):
        self.write, self.error = write, None
        self.queue: queue.Queue = queue.Queue(size)
        self.abandoned = threading.Event()  # the run is ending on an error or a signal: no new job is begun
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="dap-predict-write")
        self.thread.start()

    def _run(self) -> None:
        try:
            while (job := self.queue.get()) is not None:
                if self.error is None and not self.abandoned.is_set():
                    try:
                        self.write(job)
                    except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                        self.error = e
        finally:
            self.done.set()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def put(self, job) -> None:
        self._raise()
        self.queue.put(job)

    def close(self, abandon: bool = False) -> None:
        """Wait for the queued jobs to be written (`abandon`: only the one being written; the others wrote nothing,
        not even their record, so a rerun makes them). Ctrl-C or SIGTERM meanwhile abandons the rest and still waits:
        a thread left writing (torch code) when the interpreter exits aborts the process (SIGABRT)."""
        if abandon:
            self.abandoned.set()
        interrupted, ended = None, False
        # An Event, not Thread.join: a join interrupted by Ctrl-C takes the thread for finished (CPython 3.11's
        # bpo-45274 handling releases the lock the running thread holds), and the process exits under it.
        while not self.done.is_set():
            try:
                if not ended:
                    self.queue.put(None)
                    ended = True
                self.done.wait()
            except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt, Terminated: raised once it has stopped
                self.abandoned.set()
                interrupted = interrupted or e
        if interrupted is not None:
            raise interrupted
        self._raise()


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        from dap.io import temporary_path

        probe = temporary_path(out_dir / "dap-write-test")  # a name the clean-up knows, should a kill leave it
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DapError(f"cannot write to the output folder {out_dir}: {e.strerror or e}. Choose another --out.") from e
