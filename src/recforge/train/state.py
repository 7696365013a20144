"""The loop's state, typed: where a run is and what it has done (`History`, saved in every
checkpoint as a plain dict) and the training since the last evaluation (`Window`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Keys that older checkpoints' histories used for today's fields.
RENAMED = {"first_epoch_at_threshold": "first_epoch_at_target"}


@dataclass
class History:
    epoch: int = 1  # where a resume picks up: the epoch and the step within it last completed
    step_in_epoch: int = 0
    step: int = 0  # optimizer steps so far
    best_step: int | None = None
    best_epoch: int | None = None
    best_metrics: dict | None = None
    first_epoch_at_target: int | None = None  # the first evaluation reaching --quality-target
    epochs: list = field(default_factory=list)  # {"epoch", "train_s"} of each finished epoch
    train_s: float = 0.0
    eval_s: float = 0.0
    wall_s: float = 0.0
    eval_examples: int = 0
    samples: int = 0
    start_loss: float | None = None  # the divergence guard's reference and its smoothed loss
    smoothed_loss: float | None = None
    divergence_noted: bool = False
    baseline_measured: bool = False
    baseline: dict | None = None  # {"model", "metrics"} of the task's baseline, once per run
    stopped_early: str | None = None  # why an observer (a search's pruner) stopped the run

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> History:
        """From a checkpoint; keys an older one lacks take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {RENAMED.get(k, k): v for k, v in saved.items()}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class Window:
    """Training since the last evaluation: what its record reports."""

    from_step: int  # after a mid-epoch resume the window starts at the resumed step
    loss: float = 0.0  # summed over the window's loss terms (a task's: rows, or positions of sequences)
    terms: float = 0.0
    samples: int = 0
    seconds: float = 0.0

    def reset(self, from_step: int) -> None:
        self.from_step, self.loss, self.terms, self.samples, self.seconds = from_step, 0.0, 0.0, 0, 0.0

    def mean_loss(self) -> float:
        return self.loss / max(1.0, self.terms)

    def samples_per_s(self, extra_seconds: float = 0.0) -> float:
        return self.samples / max(self.seconds + extra_seconds, 1e-9)
