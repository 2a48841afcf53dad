"""Does decoding and writing on other threads slow the network on the main thread? `dap predict` on a folder decodes
the next panoramas and writes the last ones' outputs on two threads while the main thread runs the network; they
share the GIL and the cores with it. This times `dap.predict` of one decoded panorama with the bundled model alone,
then with a thread decoding a JPEG over and over beside it, a thread writing its outputs (npy, colour preview, mask)
over and over, and both: the network's slowdown under the worst case of background work.

    .venv/bin/python benchmarks/pipeline_threads.py --threads 2 --repeats 20
    .venv/bin/python benchmarks/pipeline_threads.py --threads 16 --switch-interval 0.0001

--threads sets torch's intra-op threads; --switch-interval Python's GIL switch interval (sys.setswitchinterval,
default 0.005 s). Mean milliseconds per `dap.predict` call over --repeats calls after one warm-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import dap
from dap import io
from dap.cli import parse_size, positive_float, positive_int
from dap.inference import output_paths, write_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--switch-interval", type=positive_float, default=sys.getswitchinterval(),
                        help="Python's GIL switch interval in seconds")
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="the panorama's HxW (default 512x1024)")
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed calls per row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.setswitchinterval(args.switch_interval)
    model = dap.load_model("dap-tiny-synth")
    rgb = np.random.default_rng(0).uniform(0, 1, (*args.size, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        io.write_rgb(folder / "in.jpg", rgb)
        pred = dap.predict(rgb, model)
        stop = threading.Event()

        def decode() -> None:
            while not stop.is_set():
                io.read_rgb(folder / "in.jpg")

        def write() -> None:
            i = 0
            while not stop.is_set():
                write_outputs(pred, output_paths(folder, f"out{i % 4}", ["npy", "color", "mask"]))
                i += 1

        def network_ms() -> float:
            dap.predict(rgb, model)
            start = time.perf_counter()
            for _ in range(args.repeats):
                dap.predict(rgb, model)
            return (time.perf_counter() - start) / args.repeats * 1000

        rows = {"alone": network_ms()}
        for name, targets in (("beside decoding", [decode]), ("beside writing", [write]),
                              ("beside both", [decode, write])):
            stop.clear()
            threads = [threading.Thread(target=t, daemon=True) for t in targets]
            for t in threads:
                t.start()
            rows[name] = network_ms()
            stop.set()
            for t in threads:
                t.join()
    print(f"dap.predict, bundled model, {args.size[1]}x{args.size[0]}, {torch.get_num_threads()} torch threads, "
          f"switch interval {args.switch_interval * 1000:g} ms")
    for name, ms in rows.items():
        print(f"{name:16s} {ms:7.1f} ms  {rows['alone'] / ms:5.2f}x alone")


if __name__ == "__main__":
    main()
