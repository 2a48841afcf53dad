"""Seconds per training step on a GPU with random data (no loader): ViT-S, 512x1024, batch 16 and 32, bf16
autocast, AdamW, the loss of configs/gpu_vits.yaml; median of 10 steps after 3 warm-up steps, peak GPU memory.

    python benchmarks/train_step_gpu.py            # cuda
    python benchmarks/train_step_gpu.py cpu        # a check of the script itself at 64x128, batch 2

What `dap train` would reach if its loader kept up: compare the run's samples/s in metrics.jsonl.
"""
import sys
import time

import torch

from dap.inference import normalize_image
from dap.losses import DapLoss
from dap.models import create_model
from dap.train import load_config

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
h, w = (512, 1024) if dev == "cuda" else (64, 128)
cfg = load_config("configs/gpu_vits.yaml")
loss_fn = DapLoss(cfg.loss)
for batch in (16, 32) if dev == "cuda" else (2,):
    torch.manual_seed(0)
    m = create_model("dap_vits").to(dev).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, h, w, device=dev)
    gt = torch.rand(batch, 1, h, w, device=dev) * 5 + 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    oor = torch.rand_like(gt) > 0.97
    times = []
    for _ in range(13):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16):
            pred = m(normalize_image(x))
        loss, _ = loss_fn(pred["depth"], pred["out_of_range_prob"], gt, valid, oor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    s = sorted(times[3:])[len(times[3:]) // 2]
    peak = torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else 0
    print(f"train step dap_vits {h}x{w} batch {batch} bf16: {s:.3f} s median, {batch / s:.0f} samples/s, "
          f"peak {peak:.1f} GB")
    del m, opt
