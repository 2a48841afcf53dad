"""The browser demo behind `dap demo`: a gradio app over `dap.predict` and the `dap.io` writers.

`analyse` is the whole computation (panorama file in, output files out) and raises `DapError` for bad inputs;
`build_app` wraps it in a page. gradio is imported only by `build_app`, so this module loads without it.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dap import io
from dap.errors import DapError, collect_input_warnings
from dap.geometry import check_erp_shape
from dap.inference import output_paths, photo_sphere_top, predict, resize_image, write_outputs

SAMPLES_DIR = Path(__file__).parent / "assets" / "samples"
DOWNLOADS = ("npy", "exr", "ply", "glb")
MAX_WIDTH = 2048  # larger uploads are downscaled first: the page shows them no better, and every output grows
MAX_POINTS = 200_000  # the point clouds (3-D view, PLY, GLB) keep every Nth row and column to stay under this
INSTALL_HINT = "pip install 'depth-any-panoramas[demo]'"
PAGE_WORDS = {  # how the library's messages name an option -> the page's control for it
    "--pad-to-erp (pad_to_erp=True in Python)": "the \"Partial panorama\" box",
    "without camera_height (--camera-height)": "without a camera height",
    "--level (predict(..., level=True))": "the \"Level\" box",
    # the page has neither control
    "; lower --point-stride, or leave glb out": ": the panorama has nothing in range to show in 3-D",
}


def samples() -> list[Path]:
    """The panoramas shipped with the package for the demo (credits in assets/samples/credits.csv)."""
    return sorted(SAMPLES_DIR.glob("*.jpg"))


@dataclass
class Analysis:
    files: dict[str, Path]  # output kind (see dap.inference.OUTPUT_SUFFIXES) -> file
    summary: str  # one line for the page: size, depth range, sky share, time
    warnings: list[str]  # what `predict` warned of (a thumbnail, an unstitched dual-fisheye image, ...)


def analyse(path, model, out_dir: Path, *, resolution: tuple[int, int] | None = None, device=None,
            pad_to_erp: bool = False, camera_height: float | None = None, level: bool = False, tta: bool = False,
            progress=lambda fraction, what: None) -> Analysis:
    """Predict one panorama file and write what the page shows and offers for download into `out_dir`: depth
    colour map with a legend in metres, range mask, normals, and the DOWNLOADS files. `camera_height` (metres)
    sets the metric scale, `level` levels a tilted panorama and `tta` averages four views, as in `predict`.
    `progress(fraction, what)` is told each step. Bad inputs (not an image, not 2:1, no floor for the camera
    height) raise DapError, as everywhere in the library."""
    progress(0.0, "reading the panorama")
    rgb, file_notes = io.read_rgb_notes(path)  # what the file itself holds (transparency, several frames, ...)
    h, w = rgb.shape[:2]
    if not (pad_to_erp and w > 2 * h):  # its own size in the message, not the downscaled one's
        check_erp_shape(h, w, what="input panorama")
    note = ""
    if w > MAX_WIDTH:
        size = (round(h * MAX_WIDTH / w), MAX_WIDTH)
        rgb = resize_image(rgb.transpose(2, 0, 1), size).transpose(1, 2, 0)
        note = f" (downscaled from {w}x{h})"
    progress(0.1, "predicting depth")
    start = time.perf_counter()
    partial = pad_to_erp and rgb.shape[1] != 2 * rgb.shape[0]
    top = photo_sphere_top(io.read_photo_sphere(path), *rgb.shape[:2]) if partial else None  # scaled if downscaled
    with collect_input_warnings() as warned:
        pred = predict(rgb, model, resolution=resolution, device=device, pad_to_erp=pad_to_erp, pad_top=top,
                       camera_height=camera_height, level=level, tta=tta)
    seconds = time.perf_counter() - start
    progress(0.6, "writing depth, mask, normals and point clouds")
    files = output_paths(Path(out_dir), "panorama", ["color", "mask", "normals", *DOWNLOADS])
    stride = max(1, math.ceil(math.sqrt(pred.depth.size / MAX_POINTS)))
    write_outputs(pred, files, point_stride=stride)
    valid = pred.depth[~pred.range_mask & (pred.depth > 0)]
    depth = f"depth {valid.min():.2f}-{valid.max():.2f} m" if valid.size else "no pixel in range"
    summary = (f"{pred.depth.shape[1]}x{pred.depth.shape[0]}{note}; {depth}; "
               f"{100 * float(np.mean(pred.range_mask)):.0f}% out of range (sky or beyond {pred.max_depth:g} m); "
               f"predicted in {seconds:.2f} s")
    progress(1.0, "done")
    return Analysis(files, summary, [*file_notes, *warned])


def import_gradio():
    """gradio, or a DapError that says how to install it (it is an optional dependency)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no usage reports
    try:
        import gradio
    except ImportError:
        raise DapError(f"the browser demo needs gradio, an optional dependency: {INSTALL_HINT}") from None
    return gradio


def respond(file, pad_to_erp: bool, model, work: Path, *, camera_height: float | None = None, level: bool = False,
            tta: bool = False, resolution=None, device=None, progress=None) -> tuple:
    """One click of the page's button: the values of its outputs (depth, mask, normals, 3-D view, downloads,
    summary), or gr.Error carrying the library's message, which the page shows. An empty or zero camera height
    means unknown."""
    gr = import_gradio()
    if not file:
        raise gr.Error("Upload a panorama (a 2:1 equirectangular image) or pick a sample first.")
    for old in Path(work).glob("*"):  # the previous click's files: gradio copied them into its cache to show them
        shutil.rmtree(old, ignore_errors=True)
    report = (lambda f, what: progress(f, desc=what)) if progress else (lambda f, what: None)
    try:
        result = analyse(file, model, Path(work) / uuid.uuid4().hex, resolution=resolution, device=device,
                         pad_to_erp=pad_to_erp, camera_height=camera_height or None, level=level, tta=tta,
                         progress=report)
    except DapError as e:  # the message names the upload by its name, not by gradio's temporary copy
        message = _on_the_page(" ".join(str(e).replace(str(file), Path(file).name).split()))
        raise gr.Error(message, title="Cannot use this file", print_exception=False) from None
    for text in result.warnings:  # shown on the page beside the results, as `dap predict` prints them
        gr.Warning(_on_the_page(text))
    f = {k: str(v) for k, v in result.files.items()}
    return f["color"], f["mask"], f["normals"], f["glb"], [f[k] for k in DOWNLOADS], result.summary


def _on_the_page(text: str) -> str:
    """A library message with its advice in the page's controls (`PAGE_WORDS`)."""
    for words, on_the_page in PAGE_WORDS.items():
        text = text.replace(words, on_the_page)
    return text


def build_app(model, *, resolution: tuple[int, int] | None = None, device=None, model_name: str = ""):
    """The demo page (a gradio Blocks) for a loaded model; `.launch()` serves it."""
    gr = import_gradio()
    work = Path(tempfile.mkdtemp(prefix="dap-demo-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)

    def run(file, pad_to_erp, camera_height, level, tta, progress=gr.Progress()):  # noqa: B008 (gradio's progress)
        return respond(file, pad_to_erp, model, work, camera_height=camera_height, level=level, tta=tta,
                       resolution=resolution, device=device, progress=progress)

    with gr.Blocks(title="Depth Any Panoramas", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Depth Any Panoramas\nMetric depth for a 360° equirectangular panorama (2:1). "
                    + (f"Model: `{model_name}`." if model_name else ""))
        with gr.Row():
            with gr.Column(scale=1):
                # "image" is the browser's image/* (no HDR types there): list our suffixes too
                upload = gr.File(label="Panorama (2:1 equirectangular image)", file_types=["image", *io.IMAGE_SUFFIXES],
                                 elem_id="panorama")
                pad = gr.Checkbox(label="Partial panorama: pad the missing latitudes to 2:1 (--pad-to-erp)")
                height = gr.Number(label="Camera height above the floor, metres (optional: fixes the metric "
                                   "scale; --camera-height)", value=None, minimum=0, elem_id="camera_height")
                level = gr.Checkbox(label="Level a tilted panorama (walls lean) before predicting (--level)",
                                    elem_id="level")
                tta = gr.Checkbox(label="Average four views: the panorama, its mirror image, both turned half a turn "
                                  "(4x the time, a little less error, no seam; --tta)", elem_id="tta")
                button = gr.Button("Predict depth", variant="primary", elem_id="run")
                gr.Examples([[str(p)] for p in samples()], inputs=[upload], label="Samples (credits: "
                            "assets/samples/credits.csv)")
                summary = gr.Markdown(elem_id="summary")
                downloads = gr.File(label="Downloads: depth in metres (npy, exr; 0 = out of range), point "
                                    "clouds (ply, glb)", file_count="multiple", elem_id="downloads")
            with gr.Column(scale=2):
                depth = gr.Image(label="Depth (metres)", type="filepath", elem_id="depth")
                with gr.Row():
                    mask = gr.Image(label="Range mask (white: sky or beyond range)", type="filepath",
                                    elem_id="mask")
                    normals = gr.Image(label="Normals", type="filepath", elem_id="normals")
                view = gr.Model3D(label="3-D point cloud (drag to orbit, scroll to zoom)", elem_id="view3d",
                                  clear_color=(0.0, 0.0, 0.0, 1.0), camera_position=(90, 60, None))
        button.click(run, [upload, pad, height, level, tta], [depth, mask, normals, view, downloads, summary])
    return app
