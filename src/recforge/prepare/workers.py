"""The process pool a preparation's passes run in, and their progress (criteo, ctr).

A pass is a list of tasks, each the arguments of one `function(*task, report)` call; `report(rows)`
is told the rows read as they are. Results come back in task order."""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import time
from collections import deque
from collections.abc import Callable

from recforge.core.errors import RecforgeError
from recforge.core.progress import Progress
from recforge.runtime.memory import keep_freed_memory


class _WorkerState:
    """What the tasks run in one worker process share, set as the process starts (`_start_worker`)."""

    report: Callable[[int], None] | None = None  # the pool's progress queue's `put`


_worker = _WorkerState()  # one per process: each spawned worker imports this module afresh


def _start_worker(progress_queue) -> None:
    """The pool's initializer: a multiprocessing queue can be given to a process only as it starts,
    not with each task."""
    _worker.report = progress_queue.put
    keep_freed_memory()  # each chunk allocates the same large temporaries; do not fault them in again


def _worker_task(function: Callable, *task):
    """A task in a worker process, reporting its progress to the pool's queue."""
    return function(*task, _worker.report)


class _Workers:
    """Runs tasks in `processes` spawned workers (in this process when 1), at most two per worker
    in flight, and hands results back in task order: merges follow file order, line numbers can be
    completed from earlier chunks, and finished results never pile up in memory."""

    def __init__(self, processes: int, function: Callable):
        self.processes, self.function = processes, function
        self.rates: dict[str, dict] = {}  # per pass: rows, seconds, rows/s per process (prepare.json)
        self.pool = self.queue = None
        if processes > 1:
            context = mp.get_context("spawn")  # no forked pyarrow thread pools
            self.queue = context.Queue()
            self.pool = context.Pool(processes, initializer=_start_worker, initargs=(self.queue,))
            # Pool silently replaces a worker that dies (killed for memory, say) and its task never
            # finishes; the original processes are kept to notice that instead of waiting forever.
            self.started = list(getattr(self.pool, "_pool", []))

    def run(self, name: str, tasks: list[tuple], on_result: Callable[[int, object], int], total: int, log) -> None:
        """Each task is `function`'s arguments but the last, `report` (progress), which is added here;
        `on_result(i, result)` gets each task's result in order and returns the rows it read."""
        progress = Progress(total, name, unit="rows")
        started, rows = time.perf_counter(), 0
        try:
            if self.pool is None:
                for i, task in enumerate(tasks):
                    rows += on_result(i, self.function(*task, progress.update))
            else:
                window: deque = deque()
                for i, task in enumerate(tasks):
                    window.append((i, self.pool.apply_async(_worker_task, (self.function, *task))))
                    if len(window) >= 2 * self.processes:
                        rows += self._next(window, on_result, progress)
                while window:
                    rows += self._next(window, on_result, progress)
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        rate = rows / max(seconds, 1e-9)
        per_process = rate / max(1, self.processes)  # an empty input has no process
        self.rates[name] = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s_per_process": round(per_process)}
        log(
            f"  {name}: {rows:,} rows in {seconds:.1f} s, {rate:,.0f} rows/s "
            f"({per_process:,.0f} per process of {self.processes})"
        )

    def _next(self, window: deque, on_result, progress) -> int:
        i, pending = window.popleft()
        while not pending.ready():
            pending.wait(0.2)
            self._drain(progress)
            dead = [p.exitcode for p in self.started if p.exitcode is not None]
            if dead and not pending.ready():
                raise RecforgeError(
                    f"a preparation worker exited unexpectedly (exit code {dead[0]}; out of memory? "
                    "try fewer workers or a smaller chunk_rows)"
                )
        self._drain(progress)
        return on_result(i, pending.get())

    def _drain(self, progress: Progress) -> None:
        if self.queue is None:  # one process: the tasks report directly
            return
        try:
            while True:
                progress.update(self.queue.get_nowait())
        except queue.Empty:
            pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def peak_memory_of_pool(processes: int) -> dict[str, int]:
    """This process's peak resident memory and, with a pool, its largest worker's (they have ended)."""
    peaks = {"main process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if processes > 1:
        peaks["largest worker"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return peaks
