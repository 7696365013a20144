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
    """`[#####.....] 52% 123,456 samples/s loss 0.3012` redrawn in place on a terminal; in a log (not
    a terminal) a plain line every `LINE_EVERY_S` seconds, so a piped or CI run shows it is alive.
    `unit` names what is counted (samples, rows, users, trials)."""

    LINE_EVERY_S = 5.0

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, unit: str = "samples"):
        self.stream = stream or sys.stderr
        self.unit = unit
        self.enabled = enabled
        self.live = self.stream.isatty()
        self.total, self.label, self.done = total, label, 0
        self.start = self.last_draw = time.perf_counter()

    def update(self, count: int, note: str = "") -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.perf_counter()
        fraction = min(1.0, self.done / max(1, self.total))
        rate = self._rate(now)
        if self.live and (now - self.last_draw > 0.2 or self.done >= self.total):
            self.last_draw = now
            bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
            self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {rate} {note}\033[K")
            self.stream.flush()
        elif not self.live and now - self.last_draw >= self.LINE_EVERY_S:
            self.last_draw = now
            self.stream.write(f"{self.label}: {fraction:.0%} of {self.total:,}, {rate} {note}".rstrip() + "\n")
            self.stream.flush()

    def _rate(self, now: float) -> str:
        """Per second where many go by each second; else seconds per one (sweeps' trials)."""
        seconds = max(now - self.start, 1e-9)
        if self.done >= seconds or not self.done:
            return f"{self.done / seconds:,.0f} {self.unit}/s"
        return f"{seconds / self.done:,.1f} s per {self.unit.rstrip('s')}"

    def close(self) -> None:
        if self.enabled and self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
