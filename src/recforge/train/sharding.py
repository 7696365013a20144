"""Embedding tables sharded across processes, on TorchRec.

The models hold recforge's own embedding modules (`FieldEmbeddings`, `nn.EmbeddingBag`), whose
single-process kernels are the fastest here. For a sharded run, `shard()` swaps each of them for
a stand-in with the same inputs and outputs whose lookups go through a TorchRec
`EmbeddingBagCollection` (one table per field), copies the weights over, and hands the model to
`DistributedModelParallel`: TorchRec's planner places each table (table-wise, row-wise,
column-wise, table-row-wise or data-parallel) within the per-rank memory budget, FBGEMM's
table-batched kernels look the rows up and apply the optimizer inside the backward pass, and the
rest of the model is data-parallel (DDP). The model files know nothing of this.

Gradients are the one-process ones: TorchRec's collectives average the table gradients of the
ranks as DDP averages the dense ones (its "gradient division"), and the loop scales each rank's
loss so that the average is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from recforge.config import RunConfig, TrainConfig
from recforge.core.errors import RecforgeError
from recforge.models.layers import FieldEmbeddings, TableInit
from recforge.optim.build import OPTIMIZERS, OptimizerEntry, Parameters
from recforge.runtime.distributed import Dist, one_process_group

INSTALL_HINT = (
    "TorchRec is not installed: `bash scripts/setup.sh` installs TorchRec with FBGEMM's CPU kernels "
    "matching this torch (on a GPU machine see the README: fbgemm-gpu from PyTorch's CUDA index, then "
    "torchrec --no-deps)"
)


def torchrec_available() -> bool:
    return importlib.util.find_spec("torchrec") is not None and importlib.util.find_spec("fbgemm_gpu") is not None


def require_torchrec(flag: str) -> None:
    if not torchrec_available():
        raise RecforgeError(f"{flag}: {INSTALL_HINT}")


# ----------------------------------------------------------------------------- stand-ins


def _collection(tables: list[tuple[str, int, int, str]]):
    """An EmbeddingBagCollection of (name, rows, dim, pooling) tables, one feature each (the name),
    on the meta device: DistributedModelParallel allocates each rank's shards."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

    configs = [
        EmbeddingBagConfig(
            name=name, num_embeddings=rows, embedding_dim=dim, feature_names=[name], pooling=PoolingType[pooling]
        )
        for name, rows, dim, pooling in tables
    ]
    return EmbeddingBagCollection(tables=configs, device=torch.device("meta"))


def _jagged(keys: list[str], values: torch.Tensor, lengths: torch.Tensor):
    from torchrec import KeyedJaggedTensor

    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


class Loaded:
    """A table's start values that are already made (restored weights): `rows` as `TableInit`'s."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def rows(self, start: int, stop: int, dim: int) -> torch.Tensor:
        return self.weight[start:stop]


def _start(weight: torch.Tensor, init) -> Loaded | object:
    """How a table's shards start: from its `TableInit` while the table is unmade (on the meta
    device: each rank makes only its rows), else from its values."""
    return init if weight.is_meta else Loaded(weight.detach())


class ShardedFields(nn.Module):
    """`FieldEmbeddings` through TorchRec: ids [B, F] -> [B, F, D], a table per field."""

    def __init__(self, source: FieldEmbeddings, path: str):
        super().__init__()
        weights = source_tables(source)
        self.keys = [table_key(f"{path}.{f}") for f in range(len(weights))]
        self.shapes = {k: (w.shape[0], w.shape[1]) for k, w in zip(self.keys, weights)}
        self.collection = _collection([(k, *shape, "SUM") for k, shape in self.shapes.items()])
        self.starts = {k: _start(w, init) for k, w, init in zip(self.keys, weights, source.inits)}
        self._order: tuple[list[str], torch.Tensor] | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, fields = ids.shape
        lengths = torch.ones(rows * fields, dtype=torch.int32, device=ids.device)
        pooled = self.collection(_jagged(self.keys, ids.t().reshape(-1), lengths))
        stacked = pooled.values().view(rows, fields, -1)
        if pooled.keys() == self.keys:
            return stacked
        # A sharded collection returns its tables grouped by how they are sharded: back to field order.
        if self._order is None or self._order[0] != pooled.keys():
            where = {k: i for i, k in enumerate(pooled.keys())}
            self._order = (pooled.keys(), torch.tensor([where[k] for k in self.keys], device=ids.device))
        return stacked.index_select(1, self._order[1])


class ShardedBag(nn.Module):
    """An `nn.EmbeddingBag` (called with values and offsets) through TorchRec: one table.

    FBGEMM's kernels take widths that are multiples of 4: a one-weight table (Wide & Deep's wide
    part) is held as COPIES equal columns, read through `_FirstColumn`."""

    COPIES = 4

    def __init__(self, source: nn.EmbeddingBag, path: str):
        super().__init__()
        pooling = {"sum": "SUM", "mean": "MEAN"}.get(source.mode)
        if pooling is None:
            raise RecforgeError(f"{path}: a '{source.mode}'-pooled table cannot be sharded (sum or mean)")
        rows, width = source.weight.shape
        self.copies = self.COPIES if width == 1 else 1
        key = table_key(path)
        self.keys = [key]
        self.shapes = {key: (rows, width * self.copies)}
        self.collection = _collection([(key, *self.shapes[key], pooling)])
        start = _start(source.weight, source.weight_init)
        self.starts = {key: Copies(start) if self.copies > 1 else start}

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        ends = torch.cat([offsets[1:], offsets.new_tensor([values.numel()])])
        pooled = self.collection(_jagged(self.keys, values, ends - offsets)).values()
        return _FirstColumn.apply(pooled) if self.copies > 1 else pooled


class Copies:
    """The start of a one-weight table held as equal columns: each row's value in every column."""

    def __init__(self, start):
        self.start = start

    def rows(self, start: int, stop: int, dim: int) -> torch.Tensor:
        return self.start.rows(start, stop, 1).expand(-1, dim)


class _FirstColumn(torch.autograd.Function):
    """The first of equal columns forward; its gradient to every column backward. Every column then
    takes the update the one-weight table would (under any optimizer: row-wise Adagrad's mean of
    squared gradients over the row is the one column's), so the columns stay equal."""

    @staticmethod
    def forward(ctx, pooled: torch.Tensor) -> torch.Tensor:
        ctx.columns = pooled.shape[1]
        return pooled[:, :1].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.expand(-1, ctx.columns).contiguous()


def source_tables(module: FieldEmbeddings) -> list[torch.Tensor]:
    """A `FieldEmbeddings`' per-field tables (views into the fused table when it is fused)."""
    if module.fused:
        return module.split_by_field(module.table.weight.detach())
    return [cast(nn.EmbeddingBag, table).weight.detach() for table in module.tables]


def table_key(path: str) -> str:
    """A module path (embeddings.tables) as a TorchRec table name, which cannot hold dots."""
    return path.replace(".", "__")


def table_path(key: str) -> str:
    return key.replace("__", ".")


def swap_in(model: nn.Module) -> dict[str, ShardedFields | ShardedBag]:
    """Replace the model's embedding modules by TorchRec stand-ins, in place; returns them by path."""
    swapped: dict[str, ShardedFields | ShardedBag] = {}
    for path, module in list(model.named_modules()):
        if isinstance(module, FieldEmbeddings):
            swapped[path] = ShardedFields(module, path)
        elif isinstance(module, nn.EmbeddingBag) and not any(path.startswith(p + ".") for p in swapped):
            swapped[path] = ShardedBag(module, path)
    for path, stand_in in swapped.items():
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, stand_in)
    return swapped


# ----------------------------------------------------------------------------- sizes and budget

UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str, flag: str) -> int:
    """'8GiB', '500MB', '1.5g', '123456' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and UNITS.get(match.group(2).lower())
    if not match or not unit or float(match.group(1)) <= 0:
        raise RecforgeError(f"{flag} {text}: not a size (e.g. 8GiB, 500MB, 2000000000)")
    return int(float(match.group(1)) * unit)


def size_text(count: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:,.2f} {unit}"
    return f"{count:,.0f} B"


def memory_per_rank(cfg: TrainConfig, device: torch.device, dist: Dist) -> int:
    """--embedding-memory-per-rank, or what one process has: its GPU, or this machine's RAM shared
    by the processes on it."""
    if cfg.embedding_memory_per_rank:
        return parse_bytes(cfg.embedding_memory_per_rank, "--embedding-memory-per-rank")
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, local)


def table_bytes(model: nn.Module, optimizer: OptimizerEntry) -> int:
    """Bytes of the model's tables with their optimizer state, as one process would hold them."""
    state = optimizer.table_state
    total = 0
    for module in model.modules():
        if isinstance(module, nn.EmbeddingBag):
            rows, dim = module.weight.shape
            total += rows * (dim + state(dim)) * module.weight.element_size()
    return total


def choose(cfg: TrainConfig, model: nn.Module, device: torch.device, dist: Dist, log) -> str | None:
    """The sharding to run with (a TorchRec sharding type, or "auto": the planner's choice), or
    None for recforge's own replicated tables. Refuses tables that cannot fit."""
    optimizer = OPTIMIZERS[cfg.optimizer]
    how, need = cfg.embedding_sharding, table_bytes(model, optimizer)
    budget = memory_per_rank(cfg, device, dist)
    if how == "none" or (how == "auto" and need <= budget):
        if need > budget:
            raise RecforgeError(
                f"the embedding tables and their {cfg.optimizer} state need {size_text(need)} in every process, "
                f"more than its {size_text(budget)} (--embedding-memory-per-rank); shard them across processes: "
                f"torchrun --nproc-per-node N ... --embedding-sharding auto"
            )
        if how == "auto":
            log(f"--embedding-sharding auto: the tables ({size_text(need)}) fit one process: not sharded")
        return None
    require_torchrec(f"--embedding-sharding {how}")
    narrow = [
        (n, m.embedding_dim)
        for n, m in model.named_modules()
        if isinstance(m, nn.EmbeddingBag) and m.embedding_dim % 4 and m.embedding_dim > 1
    ]
    if narrow:
        # FBGEMM's table-batched kernels take widths that are multiples of 4; one-weight tables are
        # held as 4 equal columns (ShardedBag), which is exact; zero padding of wider ones is not
        # (row-wise Adagrad averages its squared gradients over the padding).
        raise RecforgeError(
            f"--embedding-sharding {how}: table {narrow[0][0]} is {narrow[0][1]} wide; FBGEMM's kernels "
            "take widths that are multiples of 4 (or 1); choose such a width"
        )
    if how == "auto" and dist.world * budget < need:
        raise RecforgeError(
            f"--embedding-sharding auto: the tables and their {cfg.optimizer} state need {size_text(need)}, more "
            f"than {dist.world} process(es) x {size_text(budget)} (--embedding-memory-per-rank); use more processes"
        )
    fused = [name for name, entry in OPTIMIZERS.items() if entry.fused and (entry.fused_on_cpu or device.type != "cpu")]
    if optimizer.fused and device.type == "cpu" and not optimizer.fused_on_cpu and how != "data-parallel":
        raise RecforgeError(
            f"--embedding-sharding {how}: FBGEMM's CPU kernels have no fused {cfg.optimizer} (its GPU kernels "
            f"have); on CPUs shard with --optimizer {' or '.join(fused)}, or replicate the tables "
            "(--embedding-sharding data-parallel or none)"
        )
    if not optimizer.fused:
        raise RecforgeError(
            f"--embedding-sharding {how}: --optimizer {cfg.optimizer} has no fused TorchRec kernel for sharded "
            f"tables; use {', '.join(name for name, entry in OPTIMIZERS.items() if entry.fused)}"
        )
    if cfg.precision == "fp16":
        raise RecforgeError(
            f"--embedding-sharding {how}: fp16's loss scaling cannot reach the table updates fused into the "
            "backward pass; use --precision bf16 or fp32"
        )
    return how


# ----------------------------------------------------------------------------- sharding


TORCHREC_TYPES = {
    "data-parallel": "data_parallel",
    "table-wise": "table_wise",
    "row-wise": "row_wise",
    "column-wise": "column_wise",
    "table-row-wise": "table_row_wise",
}


WHOLE_ROWS = ("table_wise", "row_wise", "table_row_wise")  # sharding types that keep each row on one rank


def _sharder():
    """TorchRec's sharder of EmbeddingBagCollections, with row-wise and table-row-wise offered on
    CPUs too: TorchRec lists them for CUDA only, but on gloo they run and give the one-process
    gradients (tests/test_sharding.py)."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class Sharder(EmbeddingBagCollectionSharder):
        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = super().sharding_types(compute_device_type)
            return types + [t for t in ("row_wise", "table_row_wise") if t not in types]

    return Sharder()


def shard(model: nn.Module, how: str, cfg: RunConfig, device: torch.device, dist: Dist, log):
    """The model with its tables sharded (a DistributedModelParallel), and the plan it follows."""
    import torch.distributed as torch_dist
    from torchrec.distributed import DistributedModelParallel, comm_ops
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints, PlannerError
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    _quiet_torchrec()
    comm_ops.set_gradient_division(True)  # TorchRec's default, which the loop's loss scaling counts on
    budget = memory_per_rank(cfg.train, device, dist)
    stand_ins = swap_in(model)
    entry = OPTIMIZERS[cfg.train.optimizer]
    # The same algorithm and settings as recforge's own sparse-table optimizer, fused by FBGEMM
    # into the tables' backward.
    assert entry.fused is not None  # choose() refused the others
    optimizer, arguments = entry.fused(cfg.optim)
    constraints = {}
    for stand_in in stand_ins.values():
        apply_optimizer_in_backward(optimizer, stand_in.collection.parameters(), arguments)
        for key in stand_in.keys:
            types = [TORCHREC_TYPES[how]] if how != "auto" else None  # None: the planner's choice
            if getattr(stand_in, "copies", 1) > 1:
                # A table of equal columns must take its one fused update whole: not split by
                # column, not given recforge's own optimizer as a data-parallel table.
                whole = [t for t in types or ("table_wise", "row_wise", "table_row_wise") if t in WHOLE_ROWS]
                types = whole or ["table_wise"]
            if types:
                constraints[key] = ParameterConstraints(sharding_types=types)
    memory = {"hbm_cap": budget} if device.type == "cuda" else {"ddr_cap": budget}
    topology = Topology(
        world_size=dist.world,
        compute_device=device.type,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.world)),
        **memory,
    )
    if not dist.enabled:
        one_process_group(device.type)
    # On CPUs, TorchRec gets a group of torch's own gloo: the sharded tensors look their device up
    # by the group's backend name, which must read "gloo" (recforge's one-thread gloo exists for
    # DDP's sparse all-reduce, which a sharded model does not run: its tables are TorchRec's).
    group = torch_dist.new_group(backend="gloo") if device.type == "cpu" else torch_dist.GroupMember.WORLD
    sharders = [_sharder()]
    try:
        plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
            model, sharders, group
        )
    except PlannerError as error:
        reason = str(error).strip().splitlines()[0]
        raise RecforgeError(
            f"--embedding-sharding {how}: TorchRec's planner cannot place the tables in {dist.world} process(es) x "
            f"{size_text(budget)} (--embedding-memory-per-rank): {reason}"
        ) from None
    wrapped = DistributedModelParallel(
        model, env=ShardingEnv.from_process_group(group), device=device, plan=plan, sharders=sharders
    )
    starts = {key: start for stand_in in stand_ins.values() for key, start in stand_in.starts.items()}
    shapes = {key: shape for stand_in in stand_ins.values() for key, shape in stand_in.shapes.items()}
    _fill_shards(wrapped, starts, shapes)
    for stand_in in stand_ins.values():
        stand_in.starts = None  # type: ignore[assignment]  # released: the shards hold the tables now
    placed = Placement.of(plan, shapes, entry.table_state, dist.world, device)
    for line in placed.lines():
        log(line)
    return wrapped, placed


def _quiet_torchrec() -> None:
    """TorchRec's notices that do not apply here: the planner's advice on building topologies and
    on dry runs (we plan real tables), deprecations inside its own DDP call, and torch.fx's note on
    tracing checks that TorchRec's modules make at every forward."""
    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\.")
    # TorchRec's state dicts hold ShardedTensors, which torch would have be DTensors.
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)


def _fill_shards(wrapped: nn.Module, starts: dict, shapes: dict[str, tuple[int, int]]) -> None:
    """Each rank's shards of the tables (state-dict views of FBGEMM's weights), made from how each
    table starts: only the rows this rank holds, a block of rows at a time (no second copy)."""
    with torch.no_grad():
        for key, value in wrapped.state_dict().items():
            name = key.split(".")[-2] if ".embedding_bags." in key else None
            if name is None or name not in starts:
                continue
            if hasattr(value, "local_shards"):
                for shard in value.local_shards():
                    (row, column), _ = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    _fill_rows(shard.tensor, starts[name], row, column, shapes[name][1])
            else:  # data-parallel: every rank holds the whole table
                _fill_rows(value, starts[name], 0, 0, shapes[name][1])


def _fill_rows(out: torch.Tensor, start, row: int, column: int, width: int) -> None:
    """`out` = rows row.. and columns column.. of a table `width` wide that starts as `start` says."""
    step = max(1, TableInit.CHUNK // width)
    for at in range(0, out.shape[0], step):
        block = start.rows(row + at, row + min(at + step, out.shape[0]), width)
        out[at : at + step].copy_(block[:, column : column + out.shape[1]])


# ----------------------------------------------------------------------------- the plan, for people


@dataclass
class Placement:
    """Where each table went: name -> (sharding type, [(rank, rows, columns)]) and bytes per rank."""

    tables: dict
    bytes_per_rank: list[int]
    # Row-wise shards on gloo: the backward of TorchRec's reduce-scatter all-gathers the ranks'
    # gradients, which gloo does only for equal sizes, so every rank's batch must have the same rows.
    equal_batches: bool = False

    def parameters(self, wrapped: nn.Module) -> Parameters:
        """The sharded model's parameters for `make_optimizers`: the tables' own, but data-parallel
        ones (TorchRec gives those no fused optimizer, only their averaged dense gradient)."""
        tables = {name: p for name, p in wrapped.named_parameters() if ".collection.embedding_bags." in name}
        replicated = {n for n, (how, _) in self.tables.items() if how == "data_parallel"}
        data_parallel = {id(p) for name, p in tables.items() if table_path(name.split(".")[-2]) in replicated}
        return Parameters(
            fused=frozenset(id(p) for p in tables.values()) - data_parallel, tables=frozenset(data_parallel)
        )

    @classmethod
    def of(cls, plan, shapes: dict[str, tuple[int, int]], optimizer_floats, world: int, device) -> Placement:
        """From TorchRec's ShardingPlan; `shapes`: each table's (rows, width)."""
        tables, per_rank = {}, [0] * world
        for module_plan in plan.plan.values():
            for name, sharding in module_plan.items():
                if sharding.sharding_spec is None:  # data-parallel: the whole table on every rank
                    rows, columns = shapes[name]
                    shards = [(rank, (0, rows), (0, columns)) for rank in range(world)]
                else:
                    shards = [
                        (shard.placement.rank(), *[(a, a + n) for a, n in zip(shard.shard_offsets, shard.shard_sizes)])
                        for shard in sharding.sharding_spec.shards
                    ]
                for rank, (row, row_end), (column, column_end) in shards:
                    columns = column_end - column
                    per_rank[rank] += (row_end - row) * (columns + optimizer_floats(columns)) * 4
                tables[table_path(name)] = (sharding.sharding_type, shards)
        row_wise = any(how in ("row_wise", "table_row_wise") for how, _ in tables.values())
        return cls(tables, per_rank, equal_batches=row_wise and device.type == "cpu")

    def lines(self) -> list[str]:
        out = ["embedding tables across processes:"]
        for name, (how, shards) in self.tables.items():
            if how == "data_parallel":
                out.append(f"  {name}: {how} (every rank)")
                continue
            placed = ", ".join(f"rank {r} rows {a}:{b} cols {c}:{d}" for r, (a, b), (c, d) in shards)
            out.append(f"  {name}: {how} ({placed})")
        out.append("  tables + optimizer state per rank: " + ", ".join(size_text(b) for b in self.bytes_per_rank))
        return out


def pad_rows(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """`batch` grown to `rows` rows by repeating its own first rows, with a "weight" of 1 for its
    rows and 0 for the repeats: they add nothing to the loss or any gradient, and the tables they
    look up are the batch's own (so even lazy Adam touches no other row)."""
    have = len(batch["label"])
    if have == rows:
        return batch
    if have:
        index = torch.arange(rows, device=batch["label"].device) % have
        padded = {k: v.index_select(0, index) for k, v in batch.items()}
    else:  # this rank has no row of a tiny last batch: zeros (id 0 of every table)
        padded = {k: v.new_zeros((rows, *v.shape[1:])) for k, v in batch.items()}
    padded["weight"] = (torch.arange(rows, device=batch["label"].device) < have).to(torch.float32)
    return padded
