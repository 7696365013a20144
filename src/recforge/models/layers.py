"""Building blocks shared by the models."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recforge.runtime import gemm


def keep_mask(
    shape: torch.Size, p: float, device: torch.device, generator: np.random.Generator | None = None
) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask from 16-bit random lanes (p resolved to 1/65536).

    `bernoulli_` draws one random number per element; slicing 64-bit draws into four 16-bit
    lanes needs a quarter of the draws. On CPUs, where torch's generator runs on one core,
    numpy's PCG64 (`generator`) makes the words another 2.4x faster.
    """
    count = shape.numel()
    words = (count + 3) // 4
    if generator is not None and device.type == "cpu":
        raw = torch.from_numpy(generator.bit_generator.random_raw(words).view(np.int64))
    else:
        raw = torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64, device=device)
    lanes = raw.view(torch.int16)[:count].view(shape)
    return lanes >= round(p * 65536) - 32768


class _ReLUDropout(torch.autograd.Function):
    """relu(x) with dropout in one autograd node, in place on x (a fresh layer output that no
    other node saves); only the output is kept for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, generator: np.random.Generator | None) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device, generator)
        ctx.scale = 1.0 / (1.0 - p)
        y = x.mul_(keep).clamp_(min=0.0).mul_(ctx.scale)  # a bool multiply beats masked_fill on CPU
        ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        # y > 0 exactly where x > 0 and the unit was kept.
        return torch.ops.aten.threshold_backward(grad, y, 0.0).mul_(ctx.scale), None, None


class ReLUDropout(nn.Module):
    """ReLU followed by inverted dropout (a no-op in eval mode). In training it overwrites its
    input, which in `mlp()` is a Linear's fresh output that nothing else reads.

    Its CPU random stream is seeded from torch's generator when the module is built (so a seeded
    run is repeatable) and travels in the state dict (so a resumed run continues it).
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.generator = np.random.Generator(np.random.PCG64(int(torch.randint(2**62, ()).item())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            if x.is_leaf and x.requires_grad:  # autograd forbids writing into a leaf
                x = x.clone()
            return _ReLUDropout.apply(x, self.p, self.generator)
        return torch.relu(x)

    def get_extra_state(self) -> Mapping[str, Any]:
        return self.generator.bit_generator.state

    def set_extra_state(self, state: dict) -> None:
        self.generator.bit_generator.state = state

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Linear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products run on the GEMM library `backend` names (oneDNN until a
    run's calibration chooses per shape, see recforge.runtime.gemm); elsewhere (GPU, autocast,
    torch.compile) it is `nn.Linear`."""

    backend = "onednn"
    by_rows: tuple[tuple[float, str], ...] = ()  # inference on any batch size: gemm.inference_backends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        for most_rows, name in self.by_rows:
            if x.shape[0] <= most_rows:
                backend = name
                break
        return gemm.linear(x, self.weight, self.bias, backend)


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... each followed by ReLU (and dropout if > 0).

    Weights start Glorot-uniform, biases at zero, as NCF and DLRM initialise their towers.
    """
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = Linear(fan_in, fan_out)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if last_activation or i < len(sizes) - 2:
            layers.append(ReLUDropout(dropout))
    return nn.Sequential(*layers)


def lecun_uniform_(weight: torch.Tensor) -> torch.Tensor:
    bound = (3.0 / weight.shape[1]) ** 0.5
    return nn.init.uniform_(weight, -bound, bound)


def field_offsets(cardinalities: list[int]) -> torch.Tensor:
    """Where each field's rows start in one table of all the fields' rows end to end."""
    return torch.tensor([0, *cardinalities[:-1]] if cardinalities else [], dtype=torch.long).cumsum(0)


def _draw_seed() -> int:
    # From torch's generator, on the CPU: a seeded run builds the same tables, on any device.
    return int(torch.randint(2**62, (), device="cpu"))


@dataclass(frozen=True)
class TableInit:
    """How an embedding table's rows start: U(-scale, scale), N(0, scale^2) or zeros.

    Element (r, c) of a table D wide is draw r * D + c of a PCG64 stream of the table's own, so
    any block of rows can be made alone (`advance` jumps to it): a process that holds rows a:b of
    a sharded table makes exactly those rows of the one-process table, bit for bit, without the
    rest (torch's generator cannot jump). Normal draws go through the inverse CDF, one draw each."""

    kind: Literal["uniform", "normal", "zeros"]
    scale: float = 0.0
    seed: int = field(default_factory=_draw_seed)

    CHUNK = 1 << 20  # values made at a time: bounded scratch memory for tables of any size

    def rows(self, start: int, stop: int, dim: int) -> torch.Tensor:
        out = torch.zeros(stop - start, dim)
        if self.kind == "zeros":
            return out
        bits = np.random.PCG64(self.seed)
        bits.advance(start * dim)
        flat = out.view(-1)
        for at in range(0, flat.numel(), self.CHUNK):
            raw = bits.random_raw(min(self.CHUNK, flat.numel() - at))
            # The top 23 bits, + 1/2: exact in float32 and strictly inside (0, 1).
            unit = torch.from_numpy((raw >> np.uint64(41)).astype(np.float32)).add_(0.5).mul_(2.0**-23)
            value = unit.mul_(2.0).sub_(1.0) if self.kind == "uniform" else torch.special.ndtri(unit)
            flat[at : at + len(raw)] = value.mul_(self.scale)
        return out


@dataclass(frozen=True)
class StackedInit:
    """Tables end to end (a fused table of several fields): rows from each part's own `TableInit`."""

    parts: tuple[tuple[int, TableInit], ...]  # (rows, how they start)

    def rows(self, start: int, stop: int, dim: int) -> torch.Tensor:
        blocks, first = [], 0
        for count, init in self.parts:
            lo, hi = max(start, first), min(stop, first + count)
            if lo < hi:
                blocks.append(init.rows(lo - first, hi - first, dim))
            first += count
        return torch.cat(blocks) if blocks else torch.zeros(0, dim)


_TABLES_ON_META = [False]


@contextlib.contextmanager
def tables_on_meta():
    """Models built inside leave their embedding tables on the meta device (no memory) until
    `materialize_tables`, or until a sharded run makes only each process's own rows."""
    _TABLES_ON_META.append(True)
    try:
        yield
    finally:
        _TABLES_ON_META.pop()


def embedding_bag(
    rows: int, dim: int, init: TableInit | StackedInit, mode: str = "sum", sparse: bool = False
) -> nn.EmbeddingBag:
    """An `nn.EmbeddingBag` whose rows start as `init` says (kept as its `weight_init`)."""
    bag = nn.EmbeddingBag(rows, dim, mode=mode, sparse=sparse, device="meta")
    bag.weight_init = init  # type: ignore[assignment]  # a plain attribute: nn.Module's stubs take tensors, modules
    if not _TABLES_ON_META[-1]:
        _materialize(bag, torch.device("cpu"))
    return bag


def _materialize(bag: nn.EmbeddingBag, device: torch.device) -> None:
    init = cast("TableInit | StackedInit", bag.weight_init)  # set by `embedding_bag`
    bag.weight = nn.Parameter(init.rows(0, bag.num_embeddings, bag.embedding_dim).to(device))


def materialize_tables(model: nn.Module, device: torch.device) -> None:
    """Every table a model left on the meta device (`tables_on_meta`), made whole on `device`."""
    for module in model.modules():
        if isinstance(module, nn.EmbeddingBag) and module.weight.is_meta:
            _materialize(module, device)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model.to(device)`, leaving tables on the meta device where they are."""
    return model._apply(lambda t: t if t.is_meta else t.to(device))


def exporting() -> bool:
    """Whether torch.export is tracing (torch >= 2.5 says; older versions never take export's paths)."""
    return getattr(torch.compiler, "is_exporting", lambda: False)()


def bags(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids padded with -1 -> (values, offsets) of B bags for `EmbeddingBag`."""
    present = ids >= 0
    counts = present.sum(dim=1)
    return ids[present], counts.cumsum(0) - counts


def pool(bag: nn.EmbeddingBag, ids: torch.Tensor) -> torch.Tensor:
    """`bag` pooled over each row's ids ([B, L], padded with -1; an empty row pools to zeros).

    Exported, it is a gather and a masked sum over the padded ids: the same values, in ops that
    ONNX runs as one kernel each. Its EmbeddingBag is a loop over the bags: scoring 65,536 rows
    of a small DLRM took over 10 minutes, against 0.1 s this way."""
    if not exporting():
        return bag(*bags(ids))
    present = (ids >= 0).unsqueeze(-1)
    pooled = (F.embedding(ids.clamp(min=0), bag.weight) * present).sum(1)
    if bag.mode == "mean":
        pooled = pooled / present.sum(1).clamp(min=1)
    return pooled


class FieldEmbeddings(nn.Module):
    """One vector per (row, field): ids [B, F] -> [B, F, D], from sum-pooled `EmbeddingBag`s (a bag
    of one id per field here; multi-hot fields pool more) per field, or from one fused table whose
    rows are the fields' tables end to end, indexed with per-field offsets (one kernel, not F).

    Rows start as DLRM starts them, U(-1/sqrt(rows), 1/sqrt(rows)) for each field's rows, or
    N(0, init_std^2) when `init_std` is given; `inits` says how, per field."""

    offsets: torch.Tensor  # a buffer, when fused

    def __init__(self, cardinalities: list[int], dim: int, fused: bool, sparse: bool, init_std: float | None = None):
        super().__init__()
        self.fused = fused
        self.inits = [
            TableInit("uniform", c**-0.5) if init_std is None else TableInit("normal", init_std) for c in cardinalities
        ]
        if fused:
            stacked = StackedInit(tuple(zip(cardinalities, self.inits)))
            self.table = embedding_bag(sum(cardinalities), dim, stacked, sparse=sparse)
            self.register_buffer("offsets", field_offsets(cardinalities), persistent=False)
        else:
            self.tables = nn.ModuleList(
                embedding_bag(c, dim, init, sparse=sparse) for c, init in zip(cardinalities, self.inits)
            )

    def split_by_field(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """A fused table's tensor (its weight, or an optimizer's state with a row per table row)
        as per-field views."""
        rows = torch.diff(torch.cat([self.offsets, self.offsets.new_tensor([self.table.num_embeddings])]))
        return list(tensor.split(rows.tolist()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, fields = ids.shape
        if exporting():  # a bag of one id is its row: a gather, where ONNX's EmbeddingBag loops over bags
            if self.fused:
                return F.embedding(ids + self.offsets, self.table.weight)
            return torch.stack(
                [F.embedding(ids[:, f], cast(nn.EmbeddingBag, table).weight) for f, table in enumerate(self.tables)],
                dim=1,
            )
        if self.fused:
            return self.table((ids + self.offsets).reshape(-1, 1)).view(rows, fields, -1)
        return torch.stack([table(ids[:, f : f + 1]) for f, table in enumerate(self.tables)], dim=1)
