"""Seconds per training step on a GPU with random data (no loader): a training config's model, loss, working
resolution and optimizer (AdamW), bf16 autocast; batch = the config's and twice it; median of 10 steps after 3
warm-up steps, peak GPU memory.

    python benchmarks/train_step_gpu.py                                   # configs/gpu_vits.yaml, cuda
    python benchmarks/train_step_gpu.py --config configs/gpu_small.yaml   # the 19.2 M model at 256x512
    python benchmarks/train_step_gpu.py --device cpu                      # a check of the script at 64x128, batch 2

What `dap train` would reach if its loader kept up: compare the run's samples/s in metrics.jsonl.
"""
import argparse
import time
from pathlib import Path

import torch

from dap.cli import parse_device
from dap.errors import ConfigError
from dap.inference import normalize_image
from dap.losses import DapLoss
from dap.train import build_model, load_config

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "gpu_vits.yaml"),
                    help="training config (model, loss, data size); default: the repository's configs/gpu_vits.yaml")
parser.add_argument("--device", type=parse_device, default="cuda",
                    help="cuda (or cuda:N), or cpu for a small check of the script")
args = parser.parse_args()
dev = args.device
cuda = torch.device(dev).type == "cuda"
try:
    cfg = load_config(args.config)
except ConfigError as e:
    raise SystemExit(f"--config: {e}") from None
h, w = (cfg.data.height, cfg.data.width) if cuda else (64, 128)
loss_fn = DapLoss(cfg.loss)
for batch in (cfg.data.batch_size, 2 * cfg.data.batch_size) if cuda else (2,):
    if cuda:  # each batch size's own peak
        torch.cuda.reset_peak_memory_stats()
    m = build_model(cfg, quiet=True).to(dev).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, h, w, device=dev)
    gt = torch.rand(batch, 1, h, w, device=dev) * 5 + 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    oor = torch.rand_like(gt) > 0.97
    times = []
    for _ in range(13):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16):
            pred = m(normalize_image(x))
        loss, _ = loss_fn(pred["depth"], pred["out_of_range_prob"], gt, valid, oor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    s = sorted(times[3:])[len(times[3:]) // 2]
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0
    params = sum(p.numel() for p in m.parameters()) / 1e6
    print(f"train step {cfg.model.name} ({params:.1f} M) {h}x{w} batch {batch} bf16: {s:.3f} s median, "
          f"{batch / s:.0f} samples/s, peak {peak:.1f} GB")
    del m, opt
