"""Wide & Deep (Cheng et al. 2016): a linear model over the sparse features and an MLP over their
embeddings, trained jointly; the two logits add.

    wide:  one weight per categorical value (one-hot ids, multi-hot values, hashed crosses)
           + w . numeric + bias                                       -> logit_w
    deep:  [numeric, e(one-hot_1) .. e(one-hot_F), pool(e(multi-hot_1)) ..] -> MLP -> logit_d
    logit = logit_w + logit_d

Every feature feeds both parts (NVIDIA's Outbrain setup); crosses feed the wide part only.
Multi-hot fields arrive padded with -1 ([B, max_length] per field) and become an `EmbeddingBag`'s
values and offsets, so an empty list pools to zeros. The wide part is the model's `linear_part`,
so the two parts can take different optimizers (FTRL and Proximal Adagrad, as the replaced system).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from recforge.config import FRACTION, POSITIVE, option
from recforge.models.base import ClickLogModel
from recforge.models.layers import FieldEmbeddings, Linear, TableInit, embedding_bag, field_offsets, mlp, pool


@dataclass
class WideDeepConfig:
    embedding_dim: int = option(64, "embedding width of features whose feature spec gives none", low=1)
    deep_hidden_units: list[int] = option([1024] * 5, "hidden widths of the deep part", low=1)
    deep_dropout: float = option(0.0, "dropout after each deep hidden layer", **FRACTION)
    sparse_embeddings: bool = option(True, "sparse table gradients (updates touch only the rows of a batch)")
    # Deep embeddings start small (N(0, 0.01^2)): on W3, DLRM's U(+-1/sqrt(rows)) start, large for
    # small fields, gave AUC 0.886 after one epoch; 1e-4..1e-2 all gave 0.891.
    embedding_init_std: float = option(0.01, "standard deviation of the deep embeddings' normal start", **POSITIVE)


class Wide(nn.Module):
    """One scalar weight per categorical value of every field, in one table, plus a linear term
    on the numeric features and the bias. Starts at zero, as a linear model does."""

    field_offsets: torch.Tensor  # buffers
    multi_hot_offsets: torch.Tensor

    def __init__(
        self, num_dense: int, cardinalities: list[int], multi_hot: list[dict], crossed: list[int], sparse: bool = True
    ):
        super().__init__()
        fields = [*cardinalities, *crossed]
        self.register_buffer("field_offsets", field_offsets(fields), persistent=False)
        # Multi-hot rows follow the one-hot and crossed ones; one offset per padded column.
        start = sum(fields)
        per_column = []
        for f in multi_hot:
            per_column += [start] * f["max_length"]
            start += f["cardinality"]
        self.register_buffer("multi_hot_offsets", torch.tensor(per_column, dtype=torch.long), persistent=False)
        self.table = embedding_bag(start, 1, TableInit("zeros"), sparse=sparse)
        self.numeric = Linear(num_dense, 1)
        nn.init.zeros_(self.numeric.weight)
        nn.init.zeros_(self.numeric.bias)

    def forward(
        self, dense: torch.Tensor, one_hot: torch.Tensor, multi_hot: torch.Tensor | None, crossed: torch.Tensor | None
    ) -> torch.Tensor:
        fields = one_hot if crossed is None else torch.cat([one_hot, crossed], dim=1)
        ids = [fields + self.field_offsets]
        if multi_hot is not None:
            ids.append(torch.where(multi_hot >= 0, multi_hot + self.multi_hot_offsets, -1))
        return pool(self.table, torch.cat(ids, dim=1)).squeeze(1) + self.numeric(dense).squeeze(1)


class WideDeep(ClickLogModel):
    """batch: dense [B, N] float, sparse [B, F] ids, optional multi_hot [B, sum of max lengths]
    (-1 padded) and crossed [B, C] ids -> logits [B]."""

    def __init__(
        self,
        num_dense: int,
        cardinalities: list[int],
        dims: list[int],
        multi_hot: list[dict],
        multi_hot_dims: list[int],
        crossed: list[int],
        cfg: WideDeepConfig,
    ):
        super().__init__()
        self.wide = Wide(num_dense, cardinalities, multi_hot, crossed, cfg.sparse_embeddings)
        # One fused table per embedding width: one lookup per width, not per field.
        widths = sorted(set(dims))
        self.one_hot = nn.ModuleList(
            FieldEmbeddings(
                [c for c, d in zip(cardinalities, dims) if d == width],
                width,
                fused=True,
                sparse=cfg.sparse_embeddings,
                init_std=cfg.embedding_init_std,
            )
            for width in widths
        )
        for i, width in enumerate(widths):
            self.register_buffer(
                f"fields_{i}", torch.tensor([f for f, d in enumerate(dims) if d == width]), persistent=False
            )
        self.multi_hot = nn.ModuleList(
            embedding_bag(
                f["cardinality"],
                dim,
                TableInit("normal", cfg.embedding_init_std),
                mode=f["pooling"],
                sparse=cfg.sparse_embeddings,
            )
            for f, dim in zip(multi_hot, multi_hot_dims)
        )
        ends = torch.tensor([f["max_length"] for f in multi_hot], dtype=torch.long).cumsum(0).tolist()
        self.blocks = list(zip([0, *ends[:-1]], ends))
        deep_input = num_dense + sum(dims) + sum(multi_hot_dims)
        self.deep = mlp([deep_input, *cfg.deep_hidden_units, 1], dropout=cfg.deep_dropout, last_activation=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dense, one_hot = batch["dense"], batch["sparse"]
        multi_hot, crossed = batch.get("multi_hot"), batch.get("crossed")
        parts = [dense]
        for i, tables in enumerate(self.one_hot):
            parts.append(tables(one_hot[:, getattr(self, f"fields_{i}")]).flatten(1))
        for bag, (lo, hi) in zip(self.multi_hot, self.blocks):
            assert multi_hot is not None  # a model with multi-hot tables is given their ids
            parts.append(pool(cast(nn.EmbeddingBag, bag), multi_hot[:, lo:hi]))
        deep = self.deep(torch.cat(parts, dim=1)).squeeze(1)
        return deep.float() + self.wide(dense, one_hot, multi_hot, crossed)

    def linear_part(self) -> nn.Module:
        return self.wide


def wide_deep(num_dense: int, cardinalities: list[int], cfg: WideDeepConfig, meta: dict | None = None) -> WideDeep:
    """Built from a prepared click log's meta.json: multi-hot fields, crosses and the per-feature
    embedding widths its feature spec gave (others take --embedding-dim)."""
    meta = meta or {}
    features = meta.get("features", {})
    names = meta.get("sparse", [str(i) for i in range(len(cardinalities))])
    multi_hot = meta.get("multi_hot", [])

    def width(name: str) -> int:
        return features.get(name, {}).get("embedding_dim", cfg.embedding_dim)

    return WideDeep(
        num_dense,
        cardinalities,
        [width(n) for n in names],
        multi_hot,
        [width(f["name"]) for f in multi_hot],
        [c["cardinality"] for c in meta.get("crossed", [])],
        cfg,
    )
