"""Terminal output: a live progress bar on a terminal, plain lines in a log."""

from __future__ import annotations

import sys
import time


def log_to(enabled: bool):
    """A print function that is silent on non-main ranks."""

    def log(message: str = "") -> None:
        if enabled:
            print(message, flush=True)

    return log


class Progress:
    """`[#####.....] 52% 123,456 samples/s loss 0.3012` redrawn in place on a terminal."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.total, self.label, self.done = total, label, 0
        self.start = self.last_draw = time.perf_counter()

    def update(self, count: int, note: str = "") -> None:
        self.done += count
        now = time.perf_counter()
        if self.enabled and (now - self.last_draw > 0.2 or self.done >= self.total):
            self.last_draw = now
            fraction = min(1.0, self.done / max(1, self.total))
            bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
            rate = self.done / max(now - self.start, 1e-9)
            self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {rate:,.0f} samples/s {note}\033[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
