"""TensorBoard event files in a run's folder (rank 0): per step the loss, samples/s and each
optimizer's learning rate; per evaluation every number of its metrics.jsonl record; at the end
the settings as hyperparameters with the best metrics (TensorBoard's HParams tab).
`tensorboard --logdir RUNS` shows each run folder as a run.

The event files are written with torch's SummaryWriter. A step's scalars go as one Summary of
several values (TensorBoard's own protobuf) instead of one `add_scalar` event each: each event
costs ~40 us of Python (protobuf, and a CRC in pure Python without TensorFlow), 3 per step were
0.4 ms, more than 1% of a small model's step. A resumed run writes a new event file that starts
with a purge at the resumed step, so the events a killed run wrote after its checkpoint are
dropped from the curves as metrics.jsonl drops their records. Without the tensorboard package a
run trains and says once that it writes no event files.
"""

from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path

INSTALL_HINT = "pip install 'recforge[experiments]'"


class Curves:
    def __init__(self, folder: Path, enabled: bool, resumed_step: int | None, log):
        self.writer = None
        if not enabled:
            return
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log(f"no TensorBoard event files: the tensorboard package is not installed ({INSTALL_HINT})")
            return
        self._summary = Summary
        purge = None if resumed_step is None else resumed_step + 1
        self.writer = SummaryWriter(str(folder), purge_step=purge, flush_secs=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()  # flushes: the events of a run that failed are kept

    def step(self, step: int, loss: float, samples_per_s: float, optimizers: list) -> None:
        """A training step's scalars under step/ (the evaluations' training windows are under train/)."""
        if self.writer is None:
            return
        scalars = {"step/loss": loss, "step/samples_per_s": samples_per_s}
        for optimizer in optimizers:  # each one's first group: a schedule scales all groups alike
            if not optimizer.param_groups:  # TorchRec's fused optimizer of data-parallel tables
                continue
            tag = f"step/learning_rate/{type(optimizer).__name__}"
            while tag in scalars:
                tag += "'"
            scalars[tag] = optimizer.param_groups[0]["lr"]
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        # The ignores: SummaryWriter.__init__ sets file_writer to None, then to its FileWriter.
        self.writer.file_writer.add_summary(self._summary(value=values), step)  # type: ignore[attr-defined]

    def evaluation(self, step: int, record: dict) -> None:
        """An evaluation's record: its metrics under eval/, its training window under train/."""
        if self.writer is None:
            return
        values = []
        for name, value in record.items():
            if name in ("epoch", "step") or not _number(value):
                continue
            tag = name.replace("train_", "train/", 1) if name.startswith("train_") else f"eval/{name}"
            values.append(self._summary.Value(tag=tag, simple_value=float(value)))
        self.writer.file_writer.add_summary(self._summary(value=values), step)  # type: ignore[attr-defined]
        self.writer.flush()  # on disk with its checkpoint: a killed run keeps its curves to there

    def hyperparameters(self, settings, metrics: dict[str, float], step: int) -> None:
        """The run's settings (a config dataclass, flattened to section.name) and its best metrics."""
        if self.writer is None or not metrics:
            return
        flat = {}
        for section, values in dataclasses.asdict(settings).items():
            for name, value in values.items() if isinstance(values, dict) else [(None, values)]:
                key = f"{section}.{name}" if name else section
                if isinstance(value, (bool, str)) or _number(value):
                    flat[key] = value
                elif value is not None:
                    flat[key] = str(value)
        self.writer.add_hparams(
            flat, {f"best/{k}": float(v) for k, v in metrics.items()}, run_name=".", global_step=step
        )


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
