"""What `torch.compile` would add to the network's forward pass, against the eager model `dap predict` runs, and
where the eager pass spends its time (meant for a GPU; runs on a CPU too, slowly):

    python benchmarks/inference_compile.py --device cuda --variant vitl --resolution 512x1024 --batches 1,4,16
    python benchmarks/inference_compile.py --device cuda --modes none --profile 4     # eager only, top kernels

Rows per batch size, timed in turns (best of --repeats after warm-up calls): `eager` is `dap.inference.run_model`
on the model prepared for --precision (`prepare_model`: 16-bit weights for bf16/fp16); each compile mode runs the
same call with the network wrapped in `torch.compile(mode=...)` ("default", "reduce-overhead" = CUDA graphs,
"max-autotune-no-cudagraphs"). The compile time of the first call is printed per mode and batch. Random weights,
seam padding as `dap predict` (512x1024 runs the network at 512x1152). AbsRel: the row's depth against eager's.
--profile B prints the eager pass's 15 costliest operators at batch B (torch.profiler, self device time).
"""

from __future__ import annotations

import argparse
import time

import torch

from dap.cli import comma_list, parse_device, parse_network_size, positive_int
from dap.inference import prepare_model, resolve_precision, run_model
from dap.models import create_model

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call, device: torch.device) -> float:
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
    return time.perf_counter() - start


def mode(text: str) -> str:
    if text not in (*MODES, "none"):
        raise argparse.ArgumentTypeError(f"unknown mode {text!r}; use {', '.join(MODES)} or none")
    return text


def profile(model, x: torch.Tensor, precision: str, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        run_model(model, x, precision=precision)
        with torch.profiler.profile(activities=activities) as prof:
            run_model(model, x, precision=precision)
            _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vitl", choices=("tiny", "vits", "vitb", "vitl"), help="dap_<variant>")
    parser.add_argument("--resolution", type=parse_network_size, default="512x1024", help="HxW, 2:1")
    parser.add_argument("--batches", type=comma_list(positive_int), default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--precision", default="auto", choices=("fp32", "bf16", "fp16", "int8", "auto"),
                        help="the forward's precision (auto: bf16 on CUDA and on CPUs with fast bf16)")
    parser.add_argument("--modes", type=comma_list(mode), default=",".join(MODES),
                        help="compile modes to time against eager; none: eager only")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed calls per row (best is kept)")
    parser.add_argument("--device", type=parse_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--profile", type=positive_int, metavar="B", help="print the eager pass's top operators")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    model = prepare_model(create_model(f"dap_{args.variant}").eval().to(device), precision)
    h, w = args.resolution
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}; dap_{args.variant} at {h}x{w}, {precision}")
    if args.profile:
        profile(model, torch.randn(args.profile, 3, h, w, device=device), precision, device)
    modes = [m for m in args.modes if m != "none"]
    compiled = {m: torch.compile(model, mode=m) for m in modes}
    print(f"{'batch':>5} {'mode':>27} {'latency ms':>10} {'img/s':>8} {'x eager':>7} {'AbsRel':>8}")
    for batch in args.batches:
        x = torch.randn(batch, 3, h, w, device=device)
        rows = {"eager": model, **compiled}
        outputs, best = {}, {}
        for label, net in rows.items():
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[label] = run_model(net, x, precision=precision)["depth"]
                run_model(net, x, precision=precision)  # reduce-overhead records its graph on a later call
            _sync(device)
            if label != "eager":
                print(f"  compile {label}, batch {batch}: {time.perf_counter() - start:.1f} s", flush=True)
            best[label] = float("inf")
        for _ in range(args.repeats):
            for label, net in rows.items():
                best[label] = min(best[label], timed(lambda n=net, x=x: run_model(n, x, precision=precision), device))
        for label in rows:
            ref = outputs["eager"].float()
            drift = ((outputs[label].float() - ref).abs() / ref.clamp(min=1e-6)).mean().item()
            print(f"{batch:>5} {label:>27} {best[label] * 1e3:>10.1f} {batch / best[label]:>8.1f} "
                  f"{best['eager'] / best[label]:>6.2f}x {drift:>8.2e}", flush=True)


if __name__ == "__main__":
    main()
