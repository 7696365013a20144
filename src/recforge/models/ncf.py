"""Neural Collaborative Filtering (He et al., WWW 2017): GMF, MLP and their fusion NeuMF.

One module with two optional branches, scored on (user, item) pairs:
- GMF: elementwise product of user and item factors (`num_factors` each);
- MLP: concatenated user and item embeddings (`layers[0] / 2` each) through `layers`;
- predict: a linear layer over the concatenated branch outputs -> one logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from recforge.config import FRACTION, option
from recforge.core.checkpoint import load_checkpoint
from recforge.core.errors import RecforgeError
from recforge.models.base import UserItemModel
from recforge.models.layers import exporting, lecun_uniform_, mlp


@dataclass
class NCFConfig:
    num_factors: int = option(64, "GMF factors (embedding width of the GMF branch)", low=1)
    layers: list[int] = option([256, 256, 128, 64], "MLP widths; the first is 2 x the MLP embedding width", low=1)
    dropout: float = option(0.0, "dropout after each MLP hidden layer", **FRACTION)
    pretrained_gmf: str | None = option(None, "neumf: start from this GMF checkpoint (the paper's pretraining)")
    pretrained_mlp: str | None = option(None, "neumf: start from this MLP checkpoint")
    pretrained_alpha: float = option(0.5, "weight of the GMF half of the pretrained predict layer", low=0, high=1)


class NCF(UserItemModel):
    """Scores (user, item) pairs. `batch["user"]`, `batch["item"]`: [B] ints -> logits [B]."""

    def __init__(self, num_users: int, num_items: int, cfg: NCFConfig, gmf: bool = True, use_mlp: bool = True):
        super().__init__()
        if use_mlp and (len(cfg.layers) < 2 or cfg.layers[0] % 2):
            raise RecforgeError(f"--layers {cfg.layers}: need at least two sizes and an even first one")
        self.gmf_user = nn.Embedding(num_users, cfg.num_factors) if gmf else None
        self.gmf_item = nn.Embedding(num_items, cfg.num_factors) if gmf else None
        width = cfg.layers[0] // 2
        self.mlp_user = nn.Embedding(num_users, width) if use_mlp else None
        self.mlp_item = nn.Embedding(num_items, width) if use_mlp else None
        self.mlp = mlp(cfg.layers, cfg.dropout) if use_mlp else None
        self.predict = nn.Linear((cfg.num_factors if gmf else 0) + (cfg.layers[-1] if use_mlp else 0), 1)
        for embedding in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            if embedding is not None:
                nn.init.normal_(embedding.weight, std=0.01)
        lecun_uniform_(self.predict.weight)
        nn.init.zeros_(self.predict.bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user, item = batch["user"], batch["item"]
        logit: torch.Tensor = self.predict.bias
        # predict([gmf, mlp]) as a sum of two products: no concatenated copy, no mixed-precision cat.
        if self.gmf_user is not None:
            assert self.gmf_item is not None  # the GMF tables come in pairs
            # index_select's backward (index_add) is faster than nn.Embedding's on CPU.
            gmf = self.gmf_user.weight.index_select(0, user) * self.gmf_item.weight.index_select(0, item)
            logit = logit + gmf @ self.predict.weight[0, : gmf.shape[1]].to(gmf.dtype)
        if self.mlp is not None:
            mlp = self.mlp[1:](self._mlp_first_layer(user, item))
            logit = logit + mlp @ self.predict.weight[0, -mlp.shape[1] :].to(mlp.dtype)
        return logit

    def _mlp_first_layer(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """The MLP's first Linear over [user embedding, item embedding].

        It is linear in each half, so when the batch has more rows than the two tables it is
        cheaper to project the tables once, (E_u W_u^T)[user] + (E_i W_i^T)[item] + b, than every
        row of the batch: the same function and gradients with fewer FLOPs.
        """
        assert self.mlp is not None and self.mlp_user is not None and self.mlp_item is not None  # use_mlp
        first = cast(nn.Linear, self.mlp[0])
        # An exported program takes one path for every batch size (a branch on it is a guard).
        if exporting() or user.numel() < self.mlp_user.num_embeddings + self.mlp_item.num_embeddings:
            return first(torch.cat([self.mlp_user(user), self.mlp_item(item)], dim=1))
        width = self.mlp_user.embedding_dim
        user_part = F.linear(self.mlp_user.weight, first.weight[:, :width], first.bias)
        item_part = F.linear(self.mlp_item.weight, first.weight[:, width:])
        return user_part.index_select(0, user).add_(item_part.index_select(0, item))

    def warm_start(self, cfg: NCFConfig) -> None:
        """Called by the loop on a fresh (not resumed) run: the paper's pretraining, if asked."""
        if not (cfg.pretrained_gmf or cfg.pretrained_mlp):
            return
        if not (cfg.pretrained_gmf and cfg.pretrained_mlp and self.gmf_user is not None and self.mlp is not None):
            raise RecforgeError("pretraining needs model neumf and both --pretrained-gmf and --pretrained-mlp")
        self.load_pretrained(
            load_checkpoint(cfg.pretrained_gmf)["model"],
            load_checkpoint(cfg.pretrained_mlp)["model"],
            cfg.pretrained_alpha,
        )

    @torch.no_grad()
    def load_pretrained(self, gmf_state: dict, mlp_state: dict, alpha: float) -> None:
        """NeuMF from trained GMF and MLP: copy both branches; the predict layer concatenates
        alpha x GMF's and (1 - alpha) x MLP's predict weights (the paper's eq. 13)."""
        own = self.state_dict()
        for state, prefix in ((gmf_state, "gmf_"), (mlp_state, "mlp")):
            for name, value in state.items():
                if name.startswith(prefix) and torch.is_tensor(value):  # not dropout's random state
                    if name not in own or own[name].shape != value.shape:
                        raise RecforgeError(f"pretrained '{name}' {tuple(value.shape)} does not fit this model")
                    own[name].copy_(value)
        self.predict.weight.copy_(
            torch.cat([alpha * gmf_state["predict.weight"], (1 - alpha) * mlp_state["predict.weight"]], dim=1)
        )
        self.predict.bias.copy_(alpha * gmf_state["predict.bias"] + (1 - alpha) * mlp_state["predict.bias"])


def gmf(num_users: int, num_items: int, cfg: NCFConfig) -> NCF:
    return NCF(num_users, num_items, cfg, gmf=True, use_mlp=False)


def mlp_model(num_users: int, num_items: int, cfg: NCFConfig) -> NCF:
    return NCF(num_users, num_items, cfg, gmf=False, use_mlp=True)


def neumf(num_users: int, num_items: int, cfg: NCFConfig) -> NCF:
    return NCF(num_users, num_items, cfg, gmf=True, use_mlp=True)
