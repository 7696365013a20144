"""Data parallelism over torch.distributed, started by torchrun (or nothing: one process).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; the backend is NCCL on GPUs and, on CPUs, gloo with
one worker thread (`GLOO_BACKEND`, below).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recforge.core.errors import RecforgeError


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
    options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # private, absent from torch's stubs
    interfaces = [name for name in os.environ.get("GLOO_SOCKET_IFNAME", "").split(",") if name]
    options._devices = [dist.ProcessGroupGloo.create_device(interface=name) for name in interfaces] or [
        dist.ProcessGroupGloo.create_default_device()
    ]
    options._threads = 1
    options._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world, options)


def init_distributed(device_kind: str, timeout_s: float = 600.0) -> Dist:
    """The process group torchrun's environment describes (none for one process). A collective
    that waits `timeout_s` for a peer (its process or machine gone silent) raises instead of
    hanging; a peer process that died closes its sockets, which the others see at once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        backend = "nccl" if device_kind == "cuda" else GLOO_BACKEND
        if backend == GLOO_BACKEND and GLOO_BACKEND not in dist.Backend.backend_list:
            dist.Backend.register_backend(GLOO_BACKEND, _gloo_one_thread, devices=["cpu"])
        dist.init_process_group(backend=backend, timeout=timeout, **_store_of_this_attempt(world, timeout))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _store_of_this_attempt(world: int, timeout: datetime.timedelta) -> dict:
    """init_process_group's store under torchrun: the agent's, with a prefix per restart. torch
    (2.13) hands restarted workers the same agent store without one, and their gloo group then
    read the dead workers' addresses ("Gloo connectFullMesh failed": 2 of 4 restarts here, none of
    5 with the prefix). Elsewhere: torch's env:// rendezvous."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return {}
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    store = dist.PrefixStore(f"recforge/attempt_{restart_count()}", agent)
    return {"store": store, "rank": int(os.environ["RANK"]), "world_size": world}


def restarts_left() -> int:
    """How many more times torchrun's elastic agent will restart this run's workers (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) - restart_count()


def restart_count() -> int:
    """How many times torchrun's elastic agent restarted this run's workers (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


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
    """`requested` (auto: a GPU if torch sees one, else the CPU; cpu; cuda; cuda:N) as a device
    (a bare cuda: this process's local GPU), refused in one line where this machine has none."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise RecforgeError(f"--device {requested}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise RecforgeError(f"--device {requested}: recforge runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecforgeError(
            f"--device {requested}: no CUDA GPU is visible to this torch ({torch.__version__}); "
            "use --device cpu or auto"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d_local_rank)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise RecforgeError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) here")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
