"""Data parallelism over torch.distributed, started by torchrun (or nothing: one process).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; the backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_flag(self, value: bool, device: torch.device) -> bool:
        """Rank 0's decision for everyone (e.g. stop early)."""
        if not self.enabled:
            return value
        flag = torch.tensor([float(value)], device=device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. prepares a cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def init_distributed(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        # DDP wrappers left in reference cycles must go before their process group does:
        # destroyed after it, at interpreter exit, gloo's threads abort the process.
        gc.collect()
        dist.destroy_process_group()


def pick_device(requested: str, d_local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d_local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
