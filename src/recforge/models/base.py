"""What every recforge model is, and the families a task trains (as RecBole's
`GeneralRecommender` / `ContextRecommender`): an `nn.Module` that maps a batch (a dict of tensors
from its task) to what the task's loss and evaluation take. A family names the batch a model
reads and what it returns; a task names the family it trains (`Task.model_family`), and the
registry checks each model it builds against it."""

from __future__ import annotations

from torch import nn


class Model(nn.Module):
    def warm_start(self, cfg) -> None:
        """Called by the loop on a fresh run (not resumed, no --restore-checkpoint) with the model's
        config: start from the pretrained weights it names. Most models have none."""

    def linear_part(self) -> nn.Module | None:
        """The model's linear (logistic-regression) part, for optimizers that treat it apart (FTRL
        on a wide part); None when it has none."""
        return None


class UserItemModel(Model):
    """Ranking from implicit feedback: a batch of `user` and `item` index tensors [B] -> one logit
    per pair [B] (NCF)."""


class ClickLogModel(Model):
    """Click prediction: a batch of a prepared click log's `dense` [B, D] floats, `sparse` [B, F]
    indices and, when the data has them, `multi_hot` and `crossed` -> one logit per row [B]
    (DLRM, Wide & Deep)."""
