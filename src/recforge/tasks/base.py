"""The contract between a task and the training loop, scorers and server.

A task owns the data a model family trains on, its batches and its evaluation. The loop, the
checkpoint scorer and `recommend` use tasks only through this class; what only some tasks can do
is a capability flag with a method that says clearly what is missing.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

import torch

from recforge.config import RunConfig
from recforge.core.errors import RecforgeError


class Task(abc.ABC):
    name: str  # the kind of data: the `scope` of the config options that apply to it
    # Capabilities: `recommend` ranks unseen items for a raw user id (ranking data only).
    can_recommend: bool = False
    # Settings an `auto` left to the data, as decided (in summary.json): name -> {"value", "why"}.
    resolved: dict = {}
    # The split scored once at the end with the best checkpoint when evaluations score another (a
    # validation split); None when evaluations score the test split themselves.
    final_split: str | None = None
    eval_split: str = "test"  # the split evaluations during training score
    # What its forward passes compute in: the config's `--precision` (`auto` by the CPU's flags),
    # or what the training loop decided for the model it trains.
    precision: str

    @property
    @abc.abstractmethod
    def model_dims(self) -> dict:
        """Keyword arguments the model's builder takes from the data (sizes, layout)."""

    @property
    @abc.abstractmethod
    def data_fingerprint(self) -> dict:
        """What a checkpoint's ids refer to; other data with the same model is refused."""

    @property
    @abc.abstractmethod
    def samples_per_epoch(self) -> int: ...

    @property
    @abc.abstractmethod
    def primary_metric(self) -> str:
        """The metric that decides the best checkpoint and the stop threshold."""

    @property
    def metric_names(self) -> list[str]:
        return self.metrics_of(self.cfg)

    @classmethod
    @abc.abstractmethod
    def metrics_of(cls, cfg: RunConfig) -> list[str]:
        """The metrics an evaluation of `cfg`'s run reports, known before any data is loaded (a
        search checks its --metric with it)."""

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.samples_per_epoch // batch_size)

    @abc.abstractmethod
    def train_batches(self, epoch: int, batch_size: int, start_step: int = 0) -> Iterator[tuple[dict, int, int]]:
        """(this rank's part of each global batch, the global batch size, the largest rank's part),
        from `start_step` on; the same order for the same epoch and seed, so a resumed run sees the
        batches it missed. No rank holds more of the data than the batches it trains on need."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, split: str | None = None) -> tuple[dict, int]:
        """(metrics by name, examples scored) on `split`, by default the split evaluations score."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module) -> torch.Tensor:
        """Probabilities of the evaluation examples."""

    @abc.abstractmethod
    def write_predictions(self, folder: Path, probabilities: torch.Tensor) -> list[Path]: ...

    def baseline(self) -> tuple[str, dict] | None:
        """(name, metrics) of the simple model any trained one must beat, when the task has one."""
        return None

    def recommend(self, model: torch.nn.Module, raw_user: str, k: int) -> list[dict]:
        raise RecforgeError(f"{type(self).__name__} cannot recommend: it scores examples, not a user's unseen items")
