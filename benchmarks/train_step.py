"""Time of one training step (forward, loss, backward, optimiser) on the CPU, with glibc's default allocator settings
against `dap.train.loop.keep_freed_memory` (what `dap train` applies), each in a fresh process, in turns.

    .venv/bin/python benchmarks/train_step.py                                   # dap_tiny, 256x512, batch 8
    .venv/bin/python benchmarks/train_step.py --variant dap_tiny --resolution 128x256 --batch 8 --rounds 2

Random weights and random data of the given size; the loss is the bundled recipe's (configs/bundled.yaml). Prints
a table: seconds per step (mean of --steps after one warm-up step), its parts, the process's system CPU time (page
faults of freshly mapped memory show up there), peak RSS, and the speed-up against the default in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from dap.cli import parse_network_size, positive_int

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, torch
settings = json.loads(sys.argv[1])
if settings["keep_freed_memory"]:
    from dap.train.loop import keep_freed_memory
    assert keep_freed_memory(), "keep_freed_memory did not apply (no glibc, or MALLOC_* set)"
from dap.errors import ConfigError
from dap.losses import DapLoss
from dap.models import create_model
from dap.train import load_config

torch.manual_seed(0)
torch.set_num_threads(settings["threads"])
try:
    model = create_model(settings["variant"]).train()
    loss_fn = DapLoss(load_config(settings["config"]).loss)
except (ConfigError, ValueError) as e:
    sys.exit(str(e))  # an unknown --variant or a bad --config, without a traceback
b, (h, w) = settings["batch"], settings["resolution"]
x = torch.rand(b, 3, h, w)
gt = torch.rand(b, 1, h, w) * 5 + 1
valid = torch.ones(b, 1, h, w, dtype=torch.bool)
out_of_range = torch.rand(b, 1, h, w) > 0.97
opt = torch.optim.AdamW(model.parameters(), 1e-4)

def step():
    t = [time.perf_counter()]
    pred = model(x); t.append(time.perf_counter())
    loss, _ = loss_fn(pred["depth"], pred["out_of_range_prob"], gt, valid, out_of_range); t.append(time.perf_counter())
    opt.zero_grad(); loss.backward(); t.append(time.perf_counter())
    opt.step(); t.append(time.perf_counter())
    return [b - a for a, b in zip(t, t[1:])]

step()
usage = resource.getrusage(resource.RUSAGE_SELF)
parts = [step() for _ in range(settings["steps"])]
after = resource.getrusage(resource.RUSAGE_SELF)
mean = [sum(p[i] for p in parts) / len(parts) for i in range(4)]
print(json.dumps({"parts": mean, "step": sum(mean), "sys_per_step": (after.ru_stime - usage.ru_stime) / len(parts),
                  "peak_rss_gib": after.ru_maxrss / 2**20}))
"""


def run(settings: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    if out.returncode:
        raise SystemExit(out.stderr.strip())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="dap_tiny", help="architecture (`dap models`)")
    parser.add_argument("--resolution", type=parse_network_size, default=(256, 512),
                        help="HEIGHTxWIDTH of the training crops (2:1, multiples of 16)")
    parser.add_argument("--batch", type=positive_int, default=8, help="panoramas per training step")
    parser.add_argument("--steps", type=positive_int, default=4, help="timed steps per process, after one warm-up step")
    parser.add_argument("--rounds", type=positive_int, default=2, help="processes per setting, run in turns")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    parser.add_argument("--config", default=str(ROOT / "configs" / "bundled.yaml"), help="training config (its loss)")
    args = parser.parse_args()
    h, w = args.resolution
    base = {"variant": args.variant, "resolution": [h, w], "batch": args.batch, "steps": args.steps,
            "threads": args.threads, "config": str(Path(args.config).resolve())}  # the child runs in the repository
    rows: dict[str, list[dict]] = {"glibc default": [], "keep_freed_memory": []}
    for _ in range(args.rounds):
        for name in rows:
            rows[name].append(run({**base, "keep_freed_memory": name == "keep_freed_memory"}))
    print(f"# {args.variant} {h}x{w}, batch {args.batch}, {args.threads} threads, {args.steps} steps x "
          f"{args.rounds} processes per row")
    print("| allocator | s/step | forward | loss | backward | optimiser | system CPU s/step | peak RSS GiB | speed |")
    print("|---|---|---|---|---|---|---|---|---|")
    reference = None
    for name, runs in rows.items():
        best = min(runs, key=lambda r: r["step"])
        reference = reference or best["step"]
        parts = " | ".join(f"{p:.2f}" for p in best["parts"])
        print(f"| {name} | {best['step']:.2f} | {parts} | {best['sys_per_step']:.2f} | {best['peak_rss_gib']:.2f} | "
              f"{reference / best['step']:.2f}x |")


if __name__ == "__main__":
    main()
