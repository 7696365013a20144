"""Data parallelism over torch.distributed, started by torchrun (or nothing: one process).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; the backend is NCCL on GPUs and, on CPUs, gloo with
one worker thread (`GLOO_BACKEND`, below).
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

    def gather_cat(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D `values`, concatenated in rank order (their lengths may differ)."""
        if not self.enabled:
            return values
        sizes = [torch.zeros(1, dtype=torch.int64, device=values.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([values.numel()], device=values.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
        padded[: values.numel()] = values
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes)])

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. prepares a cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


# torch's gloo process group runs collectives on two worker threads, and each of them, after a
# collective, stores its name in the group's status (`pgStatus_->lastCompletedWorkName =
# opTypeToString(...)` in ProcessGroupGloo::runLoop) without a lock. Two threads finishing together
# race on that std::string. Dense collectives have short names kept inside the string object, so the
# race stays invisible; a sparse one's ("_ALLREDUCE_SPARSE", 17 characters) lives on the heap, and
# the race frees it twice or writes into it after another thread freed it: the heap corruption
# that DDP runs with sparse embedding gradients hit ("malloc(): unaligned tcache chunk detected",
# SIGSEGV in gloo's threads or in later allocations). One worker thread has nothing to race with;
# DDP still overlaps communication with the backward pass on that thread.
GLOO_BACKEND = "gloo_one_thread"


def _gloo_one_thread(store, rank: int, world: int, timeout):
    """torch's ProcessGroupGloo as init_process_group("gloo") builds it, with one worker thread."""
    options = dist.ProcessGroupGloo._Options()
    interfaces = [name for name in os.environ.get("GLOO_SOCKET_IFNAME", "").split(",") if name]
    options._devices = [dist.ProcessGroupGloo.create_device(interface=name) for name in interfaces] or [
        dist.ProcessGroupGloo.create_default_device()
    ]
    options._threads = 1
    options._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world, options)


def init_distributed(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device_kind == "cuda":
            dist.init_process_group(backend="nccl")
        else:
            if GLOO_BACKEND not in dist.Backend.backend_list:
                dist.Backend.register_backend(GLOO_BACKEND, _gloo_one_thread, devices=["cpu"])
            dist.init_process_group(backend=GLOO_BACKEND)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def one_process_group(device_kind: str) -> None:
    """A process group of this process alone, for code that needs one (TorchRec) outside torchrun."""
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device_kind == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
        )


def shutdown(d: Dist) -> None:
    if dist.is_initialized():
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
