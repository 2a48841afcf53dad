"""`dap export onnx`: the DAP network as an ONNX graph, and `OnnxModel`, which runs such a graph with onnxruntime
behind the part of the DAP module's interface that `dap.predict` uses. So `dap predict --backend onnxruntime` (or
`dap.predict(image, OnnxModel("model.onnx"))`) applies exactly the pre- and post-processing of the PyTorch path.

The graph (opset 17):
  input   image              (batch, 3, H, W) float32, ImageNet-normalised RGB: what `dap.inference.run_model`
                             feeds the network, i.e. the working resolution plus the seam columns on both sides.
  outputs depth              (batch, 1, H, W) metres along the ray
          out_of_range_prob  (batch, 1, H, W) probability of sky / beyond max_depth
`batch` is always a dynamic axis. With --dynamic, H and W are too (any multiples of 16); otherwise they are fixed
to the --resolution working size widened by the default seam padding (512x1024 -> an input of 512x1152).
The model config is stored in the ONNX metadata (`dap.config`), so the adapter knows max_depth and the resolution.

Exporter: torch's TorchScript-based one (`dynamo=False`). The torch.export-based exporter (torch's default since
2.9) produced the same numbers in our trials but took 20x longer (40 s against 2 s for dap_tiny on 2 CPU cores),
needs onnxscript, and silently keeps only one branch of the official token adapter too. The project's environment
pins torch 2.13.0 (scripts/constraints.txt), where the older path exists; a torch that drops it breaks the export.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import warnings
from pathlib import Path

import torch

from dap.errors import DapError, UnreadableFileError
from dap.inference import DEFAULT_SEAM_PAD, check_seam_pad, seam_pad_columns, weights_precision
from dap.models.dap import DAP, DapConfig

OPSET = 17
INPUT = "image"
OUTPUTS = ("depth", "out_of_range_prob")
INSTALL_HINT = "pip install 'depth-any-panoramas[onnx]'"


def require_package(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise DapError(f"the ONNX backend needs the {module} package: {INSTALL_HINT}") from None


def takes_square_branch(cfg: DapConfig, height: int, width: int) -> bool:
    """Whether the official token adapter reshapes to a square at this input size (see dap.models.official). A
    traced graph holds only the branch its example input took."""
    n = (height // cfg.vit.patch_size) * (width // cfg.vit.patch_size) - 1
    return cfg.token_adapter == "official" and math.isqrt(n) ** 2 == n


def is_dap_export(path: str | Path) -> bool:
    """Whether `path` is an ONNX graph that `export_onnx` wrote (its metadata holds our model config); False for
    another graph or a file that is not one."""
    onnx = require_package("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's decode errors have no common type worth naming: not a graph
        return False
    return any(prop.key == "dap.config" for prop in proto.metadata_props)


def export_onnx(
    model: DAP,
    out: str | Path,
    *,
    resolution: tuple[int, int] | None = None,
    dynamic: bool = False,
    seam_pad: float = DEFAULT_SEAM_PAD,
) -> Path:
    """Write `model` as ONNX to `out` (atomically). `resolution` is the working (height, width), default the model's
    own; the traced input adds the seam columns of `seam_pad`. `dynamic` makes height and width dynamic axes. The
    model is left as it was (mode, device, weights); the graph computes in float32."""
    onnx = require_package("onnx")
    from dap.io import atomic_write

    if (prepared := weights_precision(model)) is not None:  # its float32 weights are gone: bf16-rounded, or int8
        raise DapError(f"the model is prepared for {prepared} inference (prepare_model); export the float32 model it "
                       "was made from")
    check_seam_pad(seam_pad)
    h, w = resolution or model.cfg.default_resolution
    patch = model.cfg.vit.patch_size
    if h % patch or w % patch or w != 2 * h or h <= 0:
        raise DapError(f"resolution {h}x{w} must be a 2:1 panorama size (height x width) in multiples of {patch}, "
                       "e.g. 512x1024")
    example = torch.zeros(1, 3, h, w + 2 * seam_pad_columns(w, seam_pad, patch))
    if dynamic and takes_square_branch(model.cfg, *example.shape[-2:]):
        raise DapError(f"{h}x{w} takes the official adapter's rare square branch, which the dynamic graph would then "
                       "use for every size; trace it at another size (export_onnx(..., dynamic=True, "
                       "resolution=(h, w)) in Python; `dap export onnx --dynamic` traces at the model's "
                       "default_resolution) or export a fixed-size graph (--resolution)")
    axes = {name: {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"} for name in (INPUT, *OUTPUTS)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter is chosen on purpose (module docstring); the tracer's warnings are about DAP.forward's input
        # checks, which become constants in the graph (OnnxModel checks sizes instead).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        training = [m for m in model.modules() if m.training]
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        net = model if {p.dtype for p in model.parameters()} <= {torch.float32} else copy.deepcopy(model).float()
        try:
            torch.onnx.export(net.eval().cpu(), (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=axes)
        finally:  # the caller's model as it was: a check in a training loop must not leave it in eval mode on the CPU
            if net is model:
                model.to(device)
                for m in training:
                    m.train()
    proto = onnx.load_from_string(buffer.getvalue())
    cfg = dataclasses.replace(model.cfg, default_resolution=(h, w))
    own = model.cfg.default_resolution  # calibrated there: OnnxModel tells a graph of another size by it
    onnx.helper.set_model_props(proto, {"dap.config": json.dumps(cfg.to_dict()), "dap.seam_pad": str(seam_pad),
                                        "dap.calibrated_resolution": f"{own[0]}x{own[1]}"})
    with atomic_write(out) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out)


class OnnxModel:
    """An exported DAP network run by onnxruntime: `cfg`, `to`, `eval` and calling it on a normalised
    (B, 3, H, W) batch behave as for `DAP`, which is all `dap.predict` needs."""

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            if self.path.suffix.lower() != ".onnx":  # a model name or a checkpoint: for the torch backend
                raise UnreadableFileError(f"--backend onnxruntime needs an .onnx file, got {self.path}; export one "
                                          f"with `dap export onnx --model {self.path} --out model.onnx`, or predict "
                                          "with the default torch backend")
            what = "is a folder, not a file" if self.path.is_dir() else "does not exist"
            raise UnreadableFileError(f"ONNX model {self.path} {what}; write one with "
                                      f"`dap export onnx --model NAME --out {self.path}`")
        ort = require_package("onnxruntime")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers or ort.get_available_providers())
        except Exception as e:  # onnxruntime raises its own, unexported exception types
            hint = ("; --backend onnxruntime runs a graph written by `dap export onnx`, a checkpoint runs with the "
                    "default torch backend" if self.path.suffix.lower() != ".onnx" else "")
            raise UnreadableFileError(f"onnxruntime cannot load {self.path}: {e}{hint}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if "dap.config" not in meta:
            raise DapError(f"{self.path} has no dap.config metadata: it was not written by `dap export onnx`")
        self.cfg = DapConfig.from_dict(json.loads(meta["dap.config"]))
        self.seam_pad = float(meta["dap.seam_pad"]) if "dap.seam_pad" in meta else None
        # the working resolution of the model it was exported from (graphs from before: their own)
        own = meta.get("dap.calibrated_resolution")
        self.calibrated_resolution = tuple(int(v) for v in own.split("x")) if own else None
        self.input_size = tuple(self.session.get_inputs()[0].shape[2:])  # ints if fixed, axis names if dynamic
        self.fixed = all(isinstance(d, int) for d in self.input_size)

    def to(self, device) -> OnnxModel:
        return self  # onnxruntime picks its own device; outputs follow the input's

    def eval(self) -> OnnxModel:
        return self

    def check_size(self, resolution: tuple[int, int], seam_pad: float) -> None:
        """Raise unless a working `resolution` with `seam_pad` gives the network input a fixed-size graph takes."""
        h, w = resolution
        self._check_input((h, w + 2 * seam_pad_columns(w, seam_pad)))

    def _check_input(self, size: tuple[int, int]) -> None:
        if self.fixed and size != self.input_size:
            h, w = self.cfg.default_resolution
            seam = self.input_size[1] - w
            made = f"{h}x{w} plus {seam} seam columns" if seam else f"{h}x{w}, no seam columns"
            raise DapError(
                f"{self.path} takes inputs of {self.input_size[0]}x{self.input_size[1]} only ({made}), got "
                f"{size[0]}x{size[1]}: predict with --resolution {h}x{w} and the --seam-pad it was exported with"
                f"{f' ({self.seam_pad:g})' if self.seam_pad is not None else ''}, or export with --dynamic"
            )

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = tuple(x.shape[-2:])
        self._check_input(size)
        if not self.fixed and takes_square_branch(self.cfg, *size):
            raise DapError(f"input {size[0]}x{size[1]} takes the official adapter's square branch, which the dynamic "
                           "graph lacks; use another resolution or the torch backend")
        outputs = self.session.run(list(OUTPUTS), {INPUT: x.detach().float().cpu().numpy()})
        return {name: torch.from_numpy(v).to(x.device) for name, v in zip(OUTPUTS, outputs, strict=True)}
