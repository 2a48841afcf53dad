"""CPU speed of the DAP network under onnxruntime against PyTorch, on the same input, in the same run.

    .venv/bin/python benchmarks/onnx_speed.py                                   # dap_tiny and dap_vits, 512x1024
    .venv/bin/python benchmarks/onnx_speed.py --models dap_vitb --resolution 256x512 --repeats 5

For each architecture (random weights: speed does not depend on their values) the network is exported with
`dap.export.export_onnx` at a fixed size and both backends run one (1, 3, H, W) forward pass, the shape `dap.predict`
feeds at that working resolution with --seam-pad 0. Times are the best of `repeats` calls after one warm-up call,
alternating between the two, each library with its default CPU threading (one intra-op thread per core for both).
The depth outputs are compared too (max |difference| in metres).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dap.cli import comma_list, parse_network_size, positive_int
from dap.export import OnnxModel, export_onnx
from dap.models import MODEL_CONFIGS, create_model


def best_times(models: list, x: torch.Tensor, repeats: int) -> list[float]:
    """Best wall time of each model; calls alternate between the models, so that load from other processes on a
    shared machine hits them alike."""
    best = [float("inf")] * len(models)
    for model in models:
        model(x)  # warm-up: allocations, kernel selection
    for _ in range(repeats):
        for i, model in enumerate(models):
            start = time.perf_counter()
            model(x)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def architecture(text: str) -> str:
    if text not in MODEL_CONFIGS:
        raise argparse.ArgumentTypeError(f"unknown architecture {text!r}; choose from {', '.join(MODEL_CONFIGS)}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=comma_list(architecture), default=["dap_tiny", "dap_vits"],
                        help="comma-separated architectures (`dap models`)")
    parser.add_argument("--resolution", type=parse_network_size, default=(512, 1024),
                        help="input HEIGHTxWIDTH (2:1, multiples of 16)")
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()
    import onnxruntime

    h, w = args.resolution
    x = torch.randn(1, 3, h, w)
    print(f"CPU, torch on {torch.get_num_threads()} threads, input 1x3x{h}x{w}, best of {args.repeats}; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{'model':<10} {'PyTorch s':>10} {'onnxruntime s':>14} {'speed-up':>9} {'max |diff| m':>13}")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", resolution=(h, w), seam_pad=0)
            ort = OnnxModel(path, providers=["CPUExecutionProvider"])
            with torch.inference_mode():
                t_torch, t_ort = best_times([model, ort], x, args.repeats)
                diff = (model(x)["depth"] - ort(x)["depth"]).abs().max().item()
        print(f"{name:<10} {t_torch:>10.3f} {t_ort:>14.3f} {t_torch / t_ort:>8.2f}x {diff:>13.2e}")


if __name__ == "__main__":
    main()
