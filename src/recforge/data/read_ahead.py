"""Reading the next batches from disk while the current one trains.

Out-of-core batches are contiguous rows of memory-mapped arrays; copying them out faults their
pages in from the disk, in the training step's time when done in the step. `read_ahead` runs
the reads on a background thread a few batches ahead, in order (numpy releases the GIL while it
copies, so the reads overlap the step's Python and kernels). On GPUs the copies land in pinned
host memory, so the host-to-device copies can be non-blocking. Written here because torch's
DataLoader would add worker processes and a sampler for what is one ordered stream of slices.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

DEPTH = 4  # batches read ahead


def read_ahead(slices: Iterable, read: Callable, depth: int = DEPTH) -> Iterator:
    """`read(s)` for each of `slices`, in order, computed on a background thread up to `depth`
    ahead. An error in `read` is raised here, at its batch; closing the iterator stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:  # False once the consumer has stopped
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for part in slices:
                if not offer((read(part), None)):
                    return
        except BaseException as error:  # handed to the consumer, raised at its batch
            offer((None, error))
            return
        offer((done, None))

    reader = threading.Thread(target=produce, name="recforge-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            value, error = ready.get()
            if error is not None:
                raise error
            if value is done:
                return
            yield value
    finally:
        stop.set()
        reader.join()


def copy_rows(arrays: dict[str, np.ndarray], rows: slice, pinned: bool) -> dict[str, torch.Tensor]:
    """rows of memory-mapped arrays as tensors of their own (in pinned memory if `pinned`)."""
    out = {}
    for name, array in arrays.items():
        part = array[rows]
        tensor = torch.empty(part.shape, dtype=torch.from_numpy(np.empty(0, part.dtype)).dtype, pin_memory=pinned)
        np.copyto(tensor.numpy(), part)
        out[name] = tensor
    return out
