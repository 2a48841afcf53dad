"""Speed and memory of the DAP network per variant, working resolution, precision and batch size.

    .venv/bin/python benchmarks/inference_speed.py                                    # everything (hours on 2 cores)
    .venv/bin/python benchmarks/inference_speed.py --variants tiny,vits --resolutions 256x512 --batches 1
    .venv/bin/python benchmarks/inference_speed.py --variants vitl --resolutions 512x1024 --precisions fp32,int8 \\
        --against /tmp/dap-before/src                                           # ratios against an older checkout
    .venv/bin/python benchmarks/inference_speed.py --device cuda --precisions fp32,bf16,fp16 --batches 1,4,16
    .venv/bin/python benchmarks/inference_speed.py --plot docs/figures/inference_speed.png --from results.json

One row = one `dap.inference.run_model` call on a (batch, 3, H, W) input, what `dap.predict` runs at that working
resolution (default seam padding 1/16 included: 512x1024 runs the network at 512x1152). Random weights (speed does
not depend on their values). Time is the best of --repeats calls after a warm-up call; the rows of one variant and
resolution are timed in turns (row 1, row 2, ..., row 1, ...) so load from other processes on a shared machine hits
them alike, and every speed-up is a ratio against the first row of the same run ("x base").
  peak     CPU: the process's peak RSS during that row (VmHWM, reset before it); CUDA: the row's model's weights plus
           what its call allocated on top (torch.cuda.max_memory_allocated), so other rows' models do not count
  GFLOP    torch.utils.flop_counter.FlopCounterMode, one image (matmuls, convolutions, attention)
  MFU      achieved FLOP/s over this machine's matmul peak in that precision, measured in the same run
           (2048x2048 matmul on CPU, 8192 on CUDA, best of --repeats; int8 rows against the fp32 peak)
--against SRC times the model of another checkout's `src/` (e.g. `git archive <commit> src | tar -x -C /tmp/x`)
with the same weights as a first row named `before`, run at the first of --precisions, and checks that our output
at that precision matches it. bf16 and fp16 rows run models prepared as `dap predict` runs them
(`dap.inference.prepare_model`: 16-bit weights).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from dap.cli import comma_list, package_source, parse_device, parse_network_size, parse_size, positive_int
from dap.inference import PRECISIONS, prepare_model, resolve_precision, run_model
from dap.models import MODEL_CONFIGS, create_model


def _rss_peak_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _rss_peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6 * 1.024
    return float("nan")


def cpu_description() -> dict:
    info = {"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = text.splitlines()
        info["name"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    except (OSError, StopIteration):
        pass
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, precision: str, repeats: int) -> float:
    """FLOP/s of a square matmul (2048 on CPU, 8192 on CUDA) in `precision`."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / (10 if device.type == "cuda" else 1))
    return 2 * n**3 / best


def count_flops(model, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run_model(model, x, precision="fp32")
    return counter.get_total_flops()


def load_before(src: str):
    """`create_model` of another checkout's package, imported under its own name beside ours."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "dap" or k.startswith("dap.")}
    sys.path.insert(0, src)
    try:
        models, inference = importlib.import_module("dap.models"), importlib.import_module("dap.inference")
    finally:
        sys.path.remove(src)
        for k in [k for k in sys.modules if k == "dap" or k.startswith("dap.")]:
            sys.modules["before_" + k] = sys.modules.pop(k)
        sys.modules.update(saved)
    return models.create_model, inference.run_model


def bench_group(rows: list[dict], device: torch.device, repeats: int) -> None:
    """Times the rows (same variant and resolution) in turns; fills in seconds and peak memory."""
    for row in rows:  # warm-up, and the memory peak of one call
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        _rss_peak_reset()
        with torch.inference_mode():
            row["out"] = row["call"]()["depth"]
        _sync(device)
        if device.type == "cuda":  # the row's own weights and what its call added (other rows' models stay out)
            row["peak_gb"] = (weight_bytes(row["model"]) + torch.cuda.max_memory_allocated(device) - resident) / 1e9
        else:
            row["peak_gb"] = _rss_peak_gb()
        row["seconds"] = float("inf")
    for _ in range(repeats):
        for row in rows:
            with torch.inference_mode():
                _sync(device)
                start = time.perf_counter()
                row["call"]()
                _sync(device)
            row["seconds"] = min(row["seconds"], time.perf_counter() - start)


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def report(rows: list[dict], variant: str, size: str, batch: int, flops: int, peaks: dict) -> list[dict]:
    """Prints one timed group's rows and returns them as results; drops their outputs. A function, so that no
    variable of the caller keeps a row (and with it this variant's model) alive into the next variant's peak."""
    out = []
    ref = rows[0]["out"].float()
    for row in rows:
        drift = ((row["out"].float() - ref).abs() / ref.clamp(min=1e-6)).mean().item()
        rate = flops * batch / row["seconds"]
        # int8 against the fp32 peak; `before` runs at the first row's precision after it
        peak = peaks.get(rows[1]["precision"] if row["precision"] == "before" else row["precision"], peaks["fp32"])
        r = dict(variant=variant, resolution=size, precision=row["precision"], batch=batch,
                 latency_s=row["seconds"], images_per_s=batch / row["seconds"],
                 speedup=rows[0]["seconds"] / row["seconds"], peak_gb=row["peak_gb"], gflop=flops / 1e9,
                 gflop_per_s=rate / 1e9, mfu=rate / peak, absrel_vs_base=drift)
        out.append(r)
        print(f"{variant:<6} {size:>10} {r['precision']:>9} {batch:>5} {r['latency_s']:>9.3f} "
              f"{r['images_per_s']:>7.3f} {r['speedup']:>5.2f}x {r['peak_gb']:>7.2f} {r['gflop']:>7.0f} "
              f"{r['gflop_per_s']:>8.1f} {r['mfu']:>5.1%} {drift:>8.2e}", flush=True)
    for row in rows:
        row.pop("out", None)
    return out


def variant(text: str) -> str:
    if f"dap_{text}" not in MODEL_CONFIGS:
        raise argparse.ArgumentTypeError(f"unknown variant {text!r}; the variants are "
                                         f"{', '.join(k.removeprefix('dap_') for k in MODEL_CONFIGS)}")
    return text


def precision(text: str) -> str:
    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"unknown precision {text!r}; use {', '.join(PRECISIONS)}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=comma_list(variant), default="tiny,vits,vitb,vitl",
                        help="architectures, comma-separated (random weights; all four at every resolution take "
                             "hours on 2 cores)")
    parser.add_argument("--resolutions", type=comma_list(parse_network_size), default="256x512,512x1024,1024x2048",
                        help="comma-separated HxW (2:1, multiples of 16)")
    parser.add_argument("--precisions", type=comma_list(precision), default="fp32,auto,int8",
                        help="comma-separated (fp32, bf16, fp16, int8, auto); the first is the baseline")
    parser.add_argument("--batches", type=comma_list(positive_int), default="1,4",
                        help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per row (best is kept)")
    parser.add_argument("--device", type=parse_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--against", type=package_source, metavar="SRC",
                        help="an older checkout's src/ folder, timed as row `before`")
    parser.add_argument("--json", type=Path, default=Path("inference_speed.json"),
                        help="results file, rewritten after each measured group (default: in the current folder)")
    parser.add_argument("--plot", type=Path, help="write latency and memory vs resolution (batch 1) to this image")
    parser.add_argument("--from", dest="from_json", type=Path, action="append",
                        help="plot these results instead of measuring (repeatable: a later file's rows replace the "
                             "earlier files' rows of the same variant, resolution, precision and batch)")
    parser.add_argument("--pipeline", type=positive_int, metavar="N",
                        help="instead: `dap predict` on a folder of N panoramas against inference alone, with the "
                             "bundled model at the precision `dap predict` picks (--variants and --precisions are "
                             "not used; JPEGs of the first --resolutions size)")
    args = parser.parse_args()
    if args.from_json:
        return plot(merge_results([json.loads(p.read_text()) for p in args.from_json]), args.plot)
    if args.pipeline:
        h, w = args.resolutions[0]
        return pipeline(args.pipeline, f"{h}x{w}", args.repeats, args.device)
    device = torch.device(args.device)
    precisions = []
    for p in args.precisions:  # "auto" becomes what it means here; duplicates are dropped
        p = resolve_precision(p, device)
        precisions += [] if p in precisions else [p]
    before = load_before(args.against) if args.against else None
    machine = cpu_description() if device.type == "cpu" else {"name": torch.cuda.get_device_name(device),
                                                             "torch": torch.__version__}
    peaks = {p: matmul_peak(device, p, args.repeats) for p in dict.fromkeys(["fp32", *precisions]) if p != "int8"}
    print(f"{machine.get('name')} ({device.type}); torch {torch.__version__}"
          + (f", {machine['threads']} threads" if device.type == "cpu" else "") + "; matmul peak "
          + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items()))
    header = (f"{'variant':<6} {'resolution':>10} {'precision':>9} {'batch':>5} {'latency s':>9} {'img/s':>7} "
              f"{'x base':>6} {'peak GB':>7} {'GFLOP':>7} {'GFLOP/s':>8} {'MFU':>5} {'AbsRel':>8}")
    print(header)
    results = []
    for name in args.variants:
        torch.manual_seed(0)
        model = create_model(f"dap_{name}").eval().to(device)
        models = {p: prepare_model(model, p) for p in precisions}
        old = None
        if before:
            old = before[0](f"dap_{name}").eval().to(device)
            old.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
        for h, w in args.resolutions:
            size = f"{h}x{w}"
            flops = count_flops(model, torch.randn(1, 3, h, w, device=device))
            for batch in args.batches:
                x = torch.randn(batch, 3, h, w, device=device)
                rows = [dict(precision=p, model=models[p],
                             call=lambda p=p, m=models[p], x=x: run_model(m, x, precision=p)) for p in precisions]
                if old is not None:
                    rows.insert(0, dict(precision="before", model=old,
                                        call=lambda m=old, x=x: before[1](m, x, precision=precisions[0])))
                try:
                    bench_group(rows, device, args.repeats)
                except torch.OutOfMemoryError:
                    print(f"{name:<6} {size:>10} batch {batch}: out of memory, skipped")
                    torch.cuda.empty_cache()
                    continue
                results += report(rows, name, size, batch, flops, peaks)
                args.json.write_text(json.dumps({"machine": machine, "device": device.type, "repeats": args.repeats,
                                                 "matmul_peak_flops": peaks, "results": results}, indent=1))
        del model, models, old
        rows = x = None  # the last group's closures hold the model: let it go before the next variant's peak
    print(f"wrote {args.json}")
    if args.plot:
        plot(json.loads(args.json.read_text()), args.plot)


def pipeline(count: int, size: str, repeats: int, device: str = "cpu") -> None:
    """Images/s of `dap predict` on a folder (decode, network, write npy+color+mask: overlapped) against the network
    alone on the same decoded panoramas (`dap.predict`), with the bundled model on `device` at the precision `dap
    predict` picks there ("auto", the model prepared for it as `dap predict` prepares it); best of `repeats`, in
    turns. `size`: the JPEGs' HxW (the model resizes them to its working resolution). Then where the fastest `dap
    predict` run spent its time (`stage_times`)."""
    import tempfile

    import numpy as np

    import dap
    from dap import io
    from dap.cli import main as cli
    from dap.inference import prepare_model, resolve_precision, select_device

    h, w = parse_size(size)
    device = select_device(device)
    model = dap.load_model("dap-tiny-synth", device=device)
    model = prepare_model(model, resolve_precision("auto", device), in_place=True)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(count):
            io.write_rgb(Path(tmp) / "in" / f"{i:03d}.jpg", rng.uniform(0, 1, (h, w, 3)).astype(np.float32))
        images = [io.read_rgb(p) for p in sorted((Path(tmp) / "in").iterdir())]
        best = {"inference": float("inf"), "dap predict": float("inf")}
        stages = {}
        for k in range(repeats):
            start = time.perf_counter()
            for rgb in images:
                dap.predict(rgb, model)
            best["inference"] = min(best["inference"], time.perf_counter() - start)
            with stage_times() as times:
                start = time.perf_counter()
                cli(["predict", str(Path(tmp) / "in"), "--out", str(Path(tmp) / f"out{k}"),
                     "--outputs", "npy,color,mask", "--device", str(device)])
                took = time.perf_counter() - start
            if took < best["dap predict"]:
                best["dap predict"], stages = took, times
    rates = {k: count / v for k, v in best.items()}
    print(f"{count} panoramas {w}x{h}, bundled model on {device} ({os.cpu_count()} CPUs), best of {repeats}: "
          + ", ".join(f"{k} {v:.2f} img/s" for k, v in rates.items())
          + f"; end to end / inference alone = {rates['dap predict'] / rates['inference']:.2f}")
    print("dap predict, ms per panorama: " + ", ".join(f"{k} {v / count * 1000:.1f}" for k, v in stages.items()))


@contextlib.contextmanager
def stage_times():
    """Seconds `dap predict` spends in each stage, summed over its panoramas (filled in when the block ends): the
    decode thread producing inputs, the main thread waiting for them, the network and its post-processing (main
    thread), the main thread waiting for the writer's queue, and the write thread writing. Busy stages on other
    threads overlap the main thread's; the waits say which stage holds the others up."""
    from unittest import mock

    from dap.cli import predict as command

    times = dict.fromkeys(("decode", "waiting for decode", "network", "waiting for writer", "write"), 0.0)

    def timed(stage, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[stage] += time.perf_counter() - start
        return call

    def timed_iter(stage, generator_function):
        def iterate(*args, **kwargs):
            items = iter(generator_function(*args, **kwargs))
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    times[stage] += time.perf_counter() - start
                yield item
        return iterate

    put = command._Writer.put
    with (mock.patch.object(command, "_decoded", timed_iter("decode", command._decoded)),
          mock.patch.object(command, "_background", timed_iter("waiting for decode", command._background)),
          mock.patch.object(command, "predict", timed("network", command.predict)),
          mock.patch.object(command._Writer, "put", lambda self, job: timed("waiting for writer", put)(self, job)),
          mock.patch.object(command, "_write", timed("write", command._write))):
        yield times


def merge_results(runs: list[dict]) -> dict:
    """The first run's machine and rows, with each later run's rows replacing those of the same key."""
    rows = {}
    for run in runs:
        rows.update({(r["variant"], r["resolution"], r["precision"], r["batch"]): r for r in run["results"]})
    return {**runs[0], "results": list(rows.values())}


def plot(data: dict, out: Path | None) -> None:
    """Latency and peak memory against working resolution, batch 1, one line per variant and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in data["results"] if r["batch"] == 1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    variants = sorted({r["variant"] for r in rows})
    precisions = sorted({r["precision"] for r in rows})
    for key in sorted({(r["variant"], r["precision"]) for r in rows}):
        # colour = variant, line style and marker = precision: a dozen lines stay apart
        style = dict(color=f"C{variants.index(key[0])}", linestyle=("-", "--", ":", "-.")[precisions.index(key[1]) % 4],
                     marker="os^D"[precisions.index(key[1]) % 4])
        line = sorted((r for r in rows if (r["variant"], r["precision"]) == key),
                      key=lambda r: parse_size(r["resolution"])[0])
        pixels = [parse_size(r["resolution"])[0] * parse_size(r["resolution"])[1] / 1e6 for r in line]
        for ax, field in zip(axes, ("latency_s", "peak_gb"), strict=True):
            ax.plot(pixels, [r[field] for r in line], label=" ".join(key), **style)
    sizes = sorted({r["resolution"] for r in rows}, key=lambda s: parse_size(s)[0])
    ticks = [parse_size(s)[0] * parse_size(s)[1] / 1e6 for s in sizes]
    for ax, label in zip(axes, ("latency (s, batch 1)", "peak memory (GB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [s.replace("x", "×") for s in sizes])  # the measured sizes, not log-scale minor ticks
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("working resolution (H×W; log of the pixel count)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"DAP inference, {data['machine'].get('name')} ({data['device']})")
    fig.tight_layout()
    out = out or Path("inference_speed.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
