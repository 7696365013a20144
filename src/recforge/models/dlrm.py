"""DLRM (Naumov et al. 2019): dense features through a bottom MLP, one embedding per categorical
field, pairwise interactions, a top MLP, one click logit.

    dense [B, 13] --bottom MLP--> x [B, D]
    sparse [B, F] --tables------> e [B, F, D]
    interaction "dot": pairwise dot products of [x, e_1 .. e_F] (strict upper triangle, or with
                       the diagonal when self_interaction), next to x -> [B, D + (F+1)F/2]
    interaction "cat": [x, e_1 .. e_F] flattened -> [B, (F + 1) D]
    top MLP -> logit [B]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from recforge.config import option
from recforge.core.errors import RecforgeError
from recforge.models.base import ClickLogModel
from recforge.models.layers import FieldEmbeddings, mlp


@dataclass
class DLRMConfig:
    embedding_dim: int = option(16, "width of every table (and the bottom MLP's output)", low=1)
    bottom_mlp: list[int] = option(
        [13, 512, 256, 64, 16], "bottom MLP widths, its input first (the dense features)", low=1
    )
    top_mlp: list[int] = option([512, 256, 1], "top MLP widths (its input follows from the interaction)", low=1)
    interaction: Literal["dot", "cat"] = option("dot", "pairwise dot products of the features, or their concatenation")
    self_interaction: bool = option(False, "dot: include each feature's dot product with itself")
    emb_fusion: bool = option(False, "one table for all fields, indexed with per-field offsets")
    sparse_embeddings: bool = option(True, "sparse table gradients (updates touch only the rows of a batch)")


class _PairwiseDots(torch.autograd.Function):
    """[B, N, D] -> the chosen entries of each sample's Gram matrix T T^T, flattened.

    Autograd through bmm(T, T^T) would run two bmms and add them; the Gram matrix is symmetric,
    so backward scatters each pair's gradient to (i, j) and (j, i) of one matrix S (twice onto
    the diagonal, as d(t.t) = 2t dt) and runs one: dT = S T."""

    @staticmethod
    def forward(ctx, stacked: torch.Tensor, pairs: torch.Tensor, both_triangles: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(stacked, both_triangles)
        gram = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)
        return gram.gather(1, pairs.expand(gram.shape[0], -1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        stacked, both_triangles = ctx.saved_tensors
        batch, features = stacked.shape[:2]
        symmetric = grad.new_zeros(batch, features * features)
        symmetric.scatter_add_(1, both_triangles.expand(batch, -1), torch.cat([grad, grad], dim=1))
        return torch.bmm(symmetric.view(batch, features, features), stacked), None, None


class DotInteraction(nn.Module):
    """[B, N, D] -> [B, N(N-1)/2] (or N(N+1)/2 with self interactions): pairwise dot products."""

    def __init__(self, features: int, self_interaction: bool):
        super().__init__()
        rows, cols = torch.triu_indices(features, features, offset=0 if self_interaction else 1)
        self.register_buffer("pairs", rows * features + cols, persistent=False)
        self.register_buffer(
            "both_triangles", torch.cat([rows * features + cols, cols * features + rows]), persistent=False
        )

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return _PairwiseDots.apply(stacked, self.pairs, self.both_triangles)


class DLRM(ClickLogModel):
    """batch["dense"] [B, dense] float, batch["sparse"] [B, F] int -> logits [B]."""

    def __init__(self, num_dense: int, cardinalities: list[int], cfg: DLRMConfig):
        super().__init__()
        if cfg.bottom_mlp[0] != num_dense:
            raise RecforgeError(
                f"--bottom-mlp starts at {cfg.bottom_mlp[0]} but the data has {num_dense} dense features"
            )
        if cfg.interaction == "dot" and cfg.bottom_mlp[-1] != cfg.embedding_dim:
            raise RecforgeError(
                f"--bottom-mlp must end at --embedding-dim ({cfg.embedding_dim}) for the dot interaction"
            )
        if cfg.top_mlp[-1] != 1:
            raise RecforgeError("--top-mlp must end with 1 (the click logit)")
        features = len(cardinalities) + 1
        self.bottom = mlp(cfg.bottom_mlp)
        self.embeddings = FieldEmbeddings(cardinalities, cfg.embedding_dim, cfg.emb_fusion, cfg.sparse_embeddings)
        if cfg.interaction == "dot":
            self.interaction: DotInteraction | None = DotInteraction(features, cfg.self_interaction)
            pairs = features * (features + 1) // 2 if cfg.self_interaction else features * (features - 1) // 2
            top_input = cfg.bottom_mlp[-1] + pairs
        else:
            self.interaction = None
            top_input = cfg.bottom_mlp[-1] + (features - 1) * cfg.embedding_dim
        self.top = mlp([top_input, *cfg.top_mlp], last_activation=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.bottom(batch["dense"])
        embedded = self.embeddings(batch["sparse"])
        stacked = torch.cat([x.unsqueeze(1), embedded.to(x.dtype)], dim=1)
        if self.interaction is not None:
            features = torch.cat([x, self.interaction(stacked)], dim=1)
        else:
            features = stacked.flatten(1)
        return self.top(features).squeeze(1)


def dlrm(num_dense: int, cardinalities: list[int], cfg: DLRMConfig, meta: dict | None = None) -> DLRM:
    """`meta`: the prepared data's meta.json (DLRM takes one-hot fields only)."""
    if meta and (meta.get("multi_hot") or meta.get("crossed")):
        raise RecforgeError(
            "dlrm takes one-hot categorical features only; this prepared data has multi-hot or crossed ones "
            "(use --model wide-deep)"
        )
    return DLRM(num_dense, cardinalities, cfg)
