"""Checkpoints of multi-process runs, written with torch.distributed.checkpoint (DCP).

Every rank writes its own part (its table shards; the replicated tensors once) into one folder,
`checkpoints/step-N/`; DCP's coordinator writes the folder's `.metadata` last, after every rank's
files, and only then does rank 0 point `last.json` (and `best.json`) at it. A kill at any instant
leaves `last.json` naming a complete checkpoint: the folder being written has no pointer yet.

The tensors are stored under names that do not depend on how the run was laid out: each table as
one logical tensor per field (`embeddings.tables.3.weight`, whether recforge's fused table, its
per-field tables or TorchRec's shards held it), dense parameters by their module path, optimizer
state as `<parameter>/<state>` in recforge's terms (`sum`, `exp_avg`, ...). DCP reads any region
of a logical tensor, so a checkpoint loads into another world size or sharding (2 -> 1, 1 -> 2,
sharded -> replicated): each rank asks for exactly what it holds. What is not a tensor (history,
config, the dropout generators' states) goes into `state.json`, written by rank 0 before DCP's
metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from recforge.core.checkpoint import READABLE, load_checkpoint
from recforge.core.errors import RecforgeError
from recforge.core.files import fault_point, remove, write_json
from recforge.core.pickles import restricted_load
from recforge.models.layers import FieldEmbeddings
from recforge.train.sharding import ShardedBag, ShardedFields

WRAPPERS = re.compile(r"(^|\.)(module|_dmp_wrapped_module)\.")
EXTRA = "._extra_state"
# FBGEMM's names for the table optimizers' state -> recforge's (RowWiseAdagrad and Adagrad: "sum").
FUSED_STATE = {"momentum1": "sum"}


def _plain(key: str) -> str:
    """A state-dict key without DDP's and DistributedModelParallel's wrapper prefixes."""
    while True:
        stripped = WRAPPERS.sub(r"\1", key, count=1)
        if stripped == key:
            return key
        key = stripped


def _weight_key(path: str, table: str) -> str:
    """The state-dict key of TorchRec's table `table` in the stand-in at `path`."""
    return f"{path}.collection.embedding_bags.{table}.weight"


def _table_names(module: nn.Module) -> tuple[dict[str, str], dict[str, tuple[FieldEmbeddings, str]]]:
    """({state-dict key of a TorchRec table: its name}, {key of a fused recforge table: (its
    module, its path)}) of a model in any form."""
    torchrec, fused = {}, {}
    for path, sub in module.named_modules():
        path = _plain(path + ".")[:-1] if path else path
        if isinstance(sub, ShardedFields):
            for f, key in enumerate(sub.keys):
                torchrec[_weight_key(path, key)] = f"{path}.tables.{f}.weight"
        elif isinstance(sub, ShardedBag):
            torchrec[_weight_key(path, sub.keys[0])] = f"{path}.weight"
        elif isinstance(sub, FieldEmbeddings) and sub.fused:
            fused[f"{path}.table.weight"] = (sub, path)
    return torchrec, fused


def _equal_columns(module: nn.Module) -> set[str]:
    """State-dict keys of the one-weight tables that TorchRec holds as equal columns (`ShardedBag`)."""
    return {
        _weight_key(_plain(path + ".")[:-1], sub.keys[0])
        for path, sub in module.named_modules()
        if isinstance(sub, ShardedBag) and sub.copies > 1
    }


def _first_column(value):
    """TorchRec's ShardedTensor of a table held as equal columns (whole-row shards), as its one
    column: what a one-weight table would be. A copy (ShardedTensor shards must be contiguous);
    a load into it goes back to every column through `_spread_first_column`."""

    def first(meta):
        return [(_metadata(meta, [meta.shard_offsets[0], 0], [meta.shard_sizes[0], 1]), (slice(None), slice(0, 1)))]

    return _shard_views(value, [value.size(0), 1], first, copy=True)


BLOCK_BYTES = 16 << 20


def _in_blocks(value):
    """A ShardedTensor as blocks of at most BLOCK_BYTES of rows (views of the same memory). DCP's
    writer copies a tensor that views a larger storage before writing it, and FBGEMM keeps all of
    a rank's tables in one buffer: in blocks, that copy stays small whatever a table's size."""
    if not hasattr(value, "local_shards"):
        return value
    row_bytes = max(1, math.prod(value.size()[1:])) * value.metadata().tensor_properties.dtype.itemsize
    step = max(1, BLOCK_BYTES // row_bytes)

    def blocks(meta):
        (row, *offsets), (rows, *sizes) = meta.shard_offsets, meta.shard_sizes
        return [
            (_metadata(meta, [row + at, *offsets], [min(step, rows - at), *sizes]), (slice(at, at + step),))
            for at in range(0, rows, step)
        ]

    return _shard_views(value, value.size(), blocks)


def _metadata(meta, offsets: list[int], sizes: list[int]):
    from torch.distributed._shard.metadata import ShardMetadata

    return ShardMetadata(offsets, sizes, meta.placement)


def _shard_views(value, size, split, copy: bool = False):
    """A ShardedTensor of global `size` over the memory of `value`'s shards (or a `copy`):
    `split(shard's metadata)` gives the new shards' metadata, each with the region of the old
    shard it holds."""
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

    whole = value.metadata()
    metadata = dataclasses.replace(
        whole, shards_metadata=[m for old in whole.shards_metadata for m, _ in split(old)], size=torch.Size(size)
    )
    shards = [
        Shard(s.tensor[region].contiguous() if copy else s.tensor[region], m)
        for s in value.local_shards()
        for m, region in split(s.metadata)
    ]
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        shards, metadata, process_group=value._process_group
    )


def _per_field(module: FieldEmbeddings, path: str, tensor: torch.Tensor, suffix: str = "") -> dict:
    """A fused table's tensor (or its row-wise optimizer state) as per-field views, by name."""
    return {f"{path}.tables.{f}.weight{suffix}": part for f, part in enumerate(module.split_by_field(tensor))}


def model_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """(the model's tensors by name, views of what it holds; the extra states by name)."""
    (torchrec, fused), copies = _table_names(module), _equal_columns(module)
    tensors, extra = {}, {}
    for key, value in module.state_dict().items():
        key = _plain(key)
        if key.endswith(EXTRA):
            extra[key[: -len(EXTRA)]] = value
        elif key in torchrec:
            tensors[torchrec[key]] = _first_column(value) if key in copies else value
        elif key in fused:
            tensors |= _per_field(*fused[key], value)
        else:
            tensors[key] = value
    return tensors, extra


def _parameter_names(module: nn.Module) -> dict[int, str]:
    torchrec, _ = _table_names(module)
    return {id(p): torchrec.get(_plain(name), _plain(name)) for name, p in module.named_parameters()}


def _fused_tables(module: nn.Module) -> dict[int, tuple[FieldEmbeddings, str]]:
    """id of a fused recforge table's weight -> (its module, its path)."""
    return {id(sub.table.weight): (sub, path) for sub, path in _table_names(module)[1].values()}


def _is_fused(optimizer) -> bool:
    """TorchRec's optimizer of the tables fused into the backward (the others are torch's or recforge's)."""
    return type(optimizer).__module__.startswith("torchrec")


def optimizer_state(module: nn.Module, optimizers: list) -> dict[str, torch.Tensor]:
    """Every optimizer's state tensors by `<parameter>/<state>` (views where the state is a tensor)."""
    names, (torchrec, _), fused_modules = _parameter_names(module), _table_names(module), _fused_tables(module)
    copies, out = _equal_columns(module), {}
    for optimizer in optimizers:
        if _is_fused(optimizer):
            for key, states in optimizer.state_dict()["state"].items():
                name = torchrec.get(_plain(key), _plain(key))
                for state_key, value in states.items():
                    state = state_key.rsplit(".", 1)[-1]
                    if _plain(key) in copies and len(value.shape) == 2:  # per weight, not per row
                        value = _first_column(value)
                    out[f"{name}/{FUSED_STATE.get(state, state)}"] = value
            continue
        for p, states in optimizer.state.items():
            for state, value in states.items():
                value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                if id(p) in fused_modules and value.dim() and value.shape[0] == p.shape[0]:
                    out |= _per_field(*fused_modules[id(p)], value, f"/{state}")
                else:
                    out[f"{names[id(p)]}/{state}"] = value
    return out


# ----------------------------------------------------------------------------- save and load


def save(
    folder: Path, name: str, module: nn.Module, optimizers: list, meta: dict, is_main: bool, alone: bool = False
) -> Path:
    """Write checkpoint `folder/name/` from every rank (a collective), or from this process
    `alone`; returns its path."""
    import torch.distributed.checkpoint as dcp

    target = folder / name
    tensors, extra = model_state(module)
    state = {f"model/{k}": _in_blocks(v) for k, v in tensors.items()}
    state |= {f"optim/{k}": _in_blocks(v) for k, v in optimizer_state(module, optimizers).items()}
    state["rng/torch"] = torch.get_rng_state()
    if is_main:
        target.mkdir(parents=True, exist_ok=True)
        write_json(target / "state.json", {**meta, "extra": extra})
    fault_point("distributed-checkpoint", target)
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(target)), no_dist=alone)
    fault_point("distributed-checkpoint-written", target)
    return target


def from_one_process(checkpoint: dict, folder: Path, name: str, model: nn.Module, optimizers: list) -> Path:
    """One process's checkpoint (last.pt's contents) written as checkpoint `folder/name/` by this
    process alone, through `model` and `optimizers` (one-process ones, of the run's config): a
    sharded run resumes from it, each rank reading its shards."""
    model.load_state_dict(checkpoint["model"])
    for optimizer, state in zip(optimizers, checkpoint["optimizers"]):
        optimizer.load_state_dict(state)
    torch.set_rng_state(checkpoint["rng"]["torch"])
    meta = {k: v for k, v in checkpoint.items() if k not in ("model", "optimizers", "rng")}
    return save(folder, name, model, optimizers, meta, is_main=True, alone=True)


def is_complete(folder: Path) -> bool:
    return (folder / ".metadata").is_file() and (folder / "state.json").is_file()


def read_state(folder: Path) -> dict:
    """The checkpoint's `state.json` (history, config, data fingerprint...)."""
    if not is_complete(folder):
        raise RecforgeError(f"{folder}: not a complete checkpoint (no .metadata or state.json)")
    return json.loads((folder / "state.json").read_text())


def load(folder: Path, module: nn.Module, optimizers: list, rng: bool = True) -> dict:
    """Fill `module` and `optimizers` (any layout) from checkpoint `folder`, and torch's generator
    unless not `rng`; returns its state.json. Each rank reads the parts it holds; optimizer state
    that is created lazily is allocated here."""
    import torch.distributed.checkpoint as dcp

    saved = read_state(folder)
    stored = _reader(folder).read_metadata().state_dict_metadata
    tensors, _ = model_state(module)
    wanted = {f"model/{k}": _in_blocks(v) for k, v in tensors.items()}
    wanted |= {f"optim/{k}": _in_blocks(v) for k, v in optimizer_state(module, optimizers).items()}
    created = _allocate_optimizer_state(module, optimizers, stored, wanted)
    if rng:
        wanted["rng/torch"] = torch.get_rng_state()
    # A table's own step counter (torch's Adagrad keeps one, FBGEMM does not) is not needed:
    # without a learning-rate decay, Adagrad's update does not read it.
    wanted = {k: v for k, v in wanted.items() if k in stored or not k.endswith("/step")}
    missing = sorted(k for k in wanted if k not in stored)
    if missing:
        raise RecforgeError(f"{folder}: has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    for key, value in wanted.items():  # DCP would fail on another shape with its internals' traceback
        if tuple(stored[key].size) != tuple(value.size()):
            raise RecforgeError(
                f"{folder}: {key} has shape {list(stored[key].size)}, the model's is {list(value.size())} "
                "(its state.json does not describe it: damaged or edited)"
            )
    with warnings.catch_warnings():  # one process reading a checkpoint of several is what we mean
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(wanted, storage_reader=_reader(folder))
    for (optimizer, p, state), value in created.items():
        optimizer.state[p][state] = int(value) if state == "step" and value.dtype == torch.int64 else value
    _spread_first_column(module, optimizers, wanted)
    if rng:
        torch.set_rng_state(wanted["rng/torch"])
    for path, value in saved.get("extra", {}).items():
        module.get_submodule(_find(module, path)).set_extra_state(value)
    return saved


def _reader(folder: Path):
    """DCP's reader of `folder`, but its `.metadata` unpickled making only DCP's metadata classes:
    DCP reads it with a plain pickle.load, which would run any code the file names."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = restricted_load(Path(folder) / ".metadata", _is_dcp_metadata)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(folder))


_DCP_METADATA = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib._local", "PosixPath"),  # Python 3.13's module of the class
    ("collections", "OrderedDict"),
}


def _is_dcp_metadata(module: str, name: str) -> bool:
    """What DCP's `.metadata` of tensors names: its metadata classes (not bytes entries, which DCP
    would unpickle with torch.load(weights_only=False)), sizes, dtypes and layouts."""
    if module == "torch.distributed.checkpoint.metadata":
        return name != "BytesStorageMetadata"
    return (module, name) in _DCP_METADATA or (
        module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
    )


def _spread_first_column(module: nn.Module, optimizers: list, loaded: dict) -> None:
    """The first columns of tables held as equal columns, as `loaded` holds them (blocks of
    `_first_column`'s copies), written into every column of the tables and their optimizer state."""
    copies = _equal_columns(module)
    if not copies:
        return
    torchrec, _ = _table_names(module)
    targets = [(f"model/{torchrec[k]}", v) for k, v in module.state_dict().items() if _plain(k) in copies]
    for optimizer in filter(_is_fused, optimizers):
        for key, states in optimizer.state_dict()["state"].items():
            for state_key, value in states.items():
                if _plain(key) in copies and len(value.shape) == 2:
                    state = state_key.rsplit(".", 1)[-1]
                    targets.append((f"optim/{torchrec[_plain(key)]}/{FUSED_STATE.get(state, state)}", value))
    with torch.no_grad():
        for name, target in targets:
            for block in loaded[name].local_shards():
                row, rows = block.metadata.shard_offsets[0], block.metadata.shard_sizes[0]
                for shard in target.local_shards():
                    first = row - shard.metadata.shard_offsets[0]
                    if 0 <= first < shard.metadata.shard_sizes[0]:
                        shard.tensor[first : first + rows] = block.tensor


def open_checkpoint(path: str | Path) -> dict:
    """A checkpoint to score or take weights from: a one-process run's file (last.pt, best.pt), a
    multi-process run's folder (step-N) or its pointer (last.json, best.json). A folder gives its
    state.json with "folder" in place of the tensors, which `load_weights` reads."""
    path = Path(path).expanduser()
    if path.suffix == ".json" and path.is_file():
        try:
            named: str = json.loads(path.read_text())["checkpoint"]  # the checkpoint beside the pointer
            path = path.parent / named
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RecforgeError(f"{path}: not a checkpoint pointer (last.json or best.json of a run)") from None
    if path.is_dir():
        saved = read_state(path)
        if saved.get("format") not in READABLE:
            raise RecforgeError(f"{path}: not a recforge checkpoint (no recforge format marker in state.json)")
        return saved | {"folder": str(path)}
    return load_checkpoint(path)


def load_weights(checkpoint: dict, model: nn.Module, path: str | Path) -> None:
    """The weights of checkpoint `path` (opened by `open_checkpoint`) into `model`, in one process or several."""
    if "folder" in checkpoint:
        load(Path(checkpoint["folder"]), model, [], rng=False)
    else:
        load_model_state(model, checkpoint["model"], path)


def load_model_state(model: nn.Module, state: dict, path: str | Path, described_by: str = "its config") -> None:
    """A one-process checkpoint's (or a bundle's) model state into `model`; a tensor missing, extra
    or of another shape than the model of its own config is one line naming it (the file was
    edited). Dropout's random streams (extra state) may be missing: a bundle does not keep them."""
    own = model.state_dict()
    wrong = [k for k in own if k not in state and not k.endswith(EXTRA)] + [k for k in state if k not in own]
    if wrong:
        where = "missing from it" if wrong[0] in own else "not in the model it describes"
        raise RecforgeError(f"{path}: tensor {wrong[0]} {where} (damaged or edited); not loaded")
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape != own[key].shape:
            raise RecforgeError(
                f"{path}: tensor {key} has shape {list(value.shape)}, the model {described_by} describes has "
                f"{list(own[key].shape)} (damaged or edited); not loaded"
            )
    model.load_state_dict(state, strict=False)  # everything but extra state checked above


def _find(module: nn.Module, plain_path: str) -> str:
    for path, _ in module.named_modules():
        if path and _plain(path + ".")[:-1] == plain_path:
            return path
    return plain_path


def _allocate_optimizer_state(module: nn.Module, optimizers: list, stored: dict, wanted: dict) -> dict:
    """Zero tensors for the stored state of parameters whose optimizer has not made it yet (torch's
    optimizers make it at their first step), added to `wanted`; returns them by (optimizer, parameter, state)."""
    names, fused_modules = _parameter_names(module), _fused_tables(module)
    created = {}
    for optimizer in optimizers:
        if _is_fused(optimizer):
            continue
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = names[id(p)]
                if id(p) in fused_modules:
                    sub, path = fused_modules[id(p)]
                    prefix = f"optim/{path}.tables.0.weight/"
                    for key in [k for k in stored if k.startswith(prefix)]:
                        state, meta = key[len(prefix) :], stored[key]
                        if f"optim/{path}.tables.0.weight/{state}" in wanted:
                            continue
                        shape = [p.shape[0], *meta.size[1:]] if len(meta.size) else []
                        full = torch.zeros(shape, dtype=meta.properties.dtype, device=p.device)
                        created[optimizer, p, state] = full
                        views = _per_field(sub, path, full, f"/{state}") if shape else {}
                        wanted |= {f"optim/{k}": v for k, v in views.items()}
                    continue
                prefix = f"optim/{name}/"
                for key in [k for k in stored if k.startswith(prefix)]:
                    if key in wanted:
                        continue
                    meta = stored[key]
                    created[optimizer, p, key[len(prefix) :]] = wanted[key] = torch.zeros(
                        list(meta.size), dtype=meta.properties.dtype, device=p.device
                    )
    return created


def prune(folder: Path, keep: set[str]) -> None:
    """Remove the checkpoint folders in `folder` not named in `keep` (written before, or half-written)."""
    for old in folder.glob("step-*"):
        if old.is_dir() and old.name not in keep:
            remove(old)
