"""The contract between a kind of task and the training loop, scorers, server and search.

A task owns what a model family (`recforge.models.base`) trains on: the data, its batches, the
loss, the evaluation and its validation protocol, the data's fingerprint, and what a bundle keeps
to serve the model (its `assets` and export sample). The loop, the checkpoint scorer,
`recommend`, the server and `tune` use tasks only through this class, and name no kind of task;
what only some tasks can do is a capability flag with a method that says clearly what is missing.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from recforge.config import RunConfig
from recforge.core.errors import RecforgeError
from recforge.models.base import Model
from recforge.runtime.distributed import Dist
from recforge.tasks.serving import Exported, ServingAssets


class Task(abc.ABC):
    name: str  # the kind of data: the `scope` of the config options that apply to it
    cfg: RunConfig  # the run it was built for
    model_family: type[Model]  # the models it trains (the registry checks each one it builds)
    assets: type[ServingAssets]  # what a bundle of its models serves with
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

    @abc.abstractmethod
    def __init__(self, cfg: RunConfig, device: torch.device, dist: Dist, log=print):
        """The task of `cfg`'s run on this process's `device` (`dist`: the processes' group); the
        registry builds every task so."""

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
        """(this rank's part of each global batch, the global batch's number of examples, the
        largest rank's part), from `start_step` on; the same order for the same epoch and seed, so
        a resumed run sees the batches it missed. No rank holds more of the data than the batches
        it trains on need. The loop scales each rank's loss sum by the global number, so the
        ranks' averaged gradient is the global batch's mean."""

    @abc.abstractmethod
    def loss(self, outputs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        """(the sum of this rank's batch's losses in fp32, how many terms it sums): the loop
        averages by the count over all ranks for the reported loss. A batch the loop padded to
        equal shards (TorchRec) has a `weight` of 0 on the padding rows, 1 elsewhere: weight by it."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, split: str | None = None) -> tuple[dict, int]:
        """(metrics by name, examples scored) on `split`, by default the split evaluations score."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module) -> torch.Tensor:
        """Probabilities of the evaluation examples."""

    @abc.abstractmethod
    def write_predictions(self, folder: Path, probabilities: torch.Tensor) -> list[Path]: ...

    @classmethod
    @abc.abstractmethod
    def choose_on_validation(cls, cfg: RunConfig) -> str:
        """Set `cfg` so its evaluations score a validation split, never the test split (each trial of
        a search); returns what it holds out, for the search's first line, or refuses."""

    @classmethod
    @abc.abstractmethod
    def export(cls, cfg: RunConfig, folder: Path, log) -> Exported:
        """Write the serving assets of `cfg`'s data into a bundle's `folder`; the data's fingerprint
        (checked against the checkpoint's) and the model inputs the exports are checked on."""

    def baseline(self) -> tuple[str, dict] | None:
        """(name, metrics) of the simple model any trained one must beat, when the task has one."""
        return None

    def recommend(self, model: torch.nn.Module, raw_user: str, k: int) -> list[dict]:
        raise RecforgeError(f"{type(self).__name__} cannot recommend: it scores examples, not a user's unseen items")


def binary_cross_entropy(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
    """The pointwise loss of one logit per example against its 0/1 `label`, summed (weighted by
    `weight` where the batch has one): NCF's, DLRM's and Wide & Deep's objective."""
    weight = batch.get("weight")
    total = F.binary_cross_entropy_with_logits(logits.float(), batch["label"], weight=weight, reduction="sum")
    return total, batch["label"].numel() if weight is None else weight.sum()
