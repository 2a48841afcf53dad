"""Joining a torchrun job (env://; gloo on CPU, nccl on GPU) or running as one process, and reductions."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from dap.errors import DapError, PeerFailedError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun job described by the environment (env://), or run as a single process."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise DapError("run.device is cuda but no CUDA device is visible; use run.device=cpu")
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    here = not dist.is_initialized()
    if here:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    return Dist(rank, world, local_rank, dev, here)


def reduce_mean(values: dict[str, float], d: Dist) -> dict[str, float]:
    """The mean of each value over the ranks (every rank gets it)."""
    if d.world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world).tolist(), strict=True))


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when `flag` is true on one (so all ranks take the same branch)."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_succeeded(d: Dist, failure: BaseException | None) -> None:
    """Every rank calls this after a step it must not go past unless all ranks succeeded: raises `failure` on the
    rank that had it, and on the others a DapError saying another process failed (it prints its own error)."""
    if any_rank(failure is not None, d) and failure is None:
        raise PeerFailedError("another process of this run failed (its error is printed above); nothing was merged")
    if failure is not None:
        raise failure


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


@contextlib.contextmanager
def loader_batches(loader) -> Iterator:
    """`iter(loader)`, whose worker processes are shut down when the block ends, however it ends. After an error
    (an unreadable file in a worker) the iterator was left to the garbage collector, but the traceback kept it
    alive until interpreter exit, where multiprocessing stops leftover workers with SIGTERM, which `quiet_worker`
    makes them ignore: the process printed its error and hung."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        if (shutdown := getattr(batches, "_shutdown_workers", None)) is not None:  # workers (num_workers > 0)
            shutdown()


def quiet_worker(_worker_id: int | None = None) -> None:
    """In a worker process (a DataLoader's `worker_init_fn`, a pool's initializer): leave SIGINT and SIGTERM to the
    main process. Both reach the whole process group (Ctrl-C; `timeout`, Slurm and systemd stop a job so); the main
    process stops its workers and says one line, where a worker dying of the signal first made it fail with
    "DataLoader worker ... is killed by signal: Terminated" and tracebacks. A worker whose main process is gone
    exits by itself (torch's watchdog). Not for a multiprocessing pool's workers: it stops them with SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
