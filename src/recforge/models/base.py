"""What every recforge model is: an `nn.Module` that maps a batch (a dict of tensors from its
task) to one logit per example."""

from __future__ import annotations

from torch import nn


class Model(nn.Module):
    def warm_start(self, cfg) -> None:
        """Called by the loop on a fresh run (not resumed, no --restore-checkpoint) with the model's
        config: start from the pretrained weights it names. Most models have none."""
