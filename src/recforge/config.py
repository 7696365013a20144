"""Typed run configuration, layered: dataclass defaults < YAML preset (`--config`) < CLI flags.

A run is described by `RunConfig`: the model name, the output directory and five sections.
`data`, `train` and `eval` are shared by every model; `arch` is the chosen model's own dataclass
(registered beside the model), `optim` the chosen optimizer's (`train.optimizer`; registered
beside the optimizer). Every field of every section is also a command-line flag named after it
(`negative_samples` -> `--negative-samples`), so flag names are unique across sections.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from recforge.core.errors import DataError, RecforgeError
from recforge.core.yaml_file import read_yaml

Precision = Literal["fp32", "bf16", "fp16", "auto"]


@dataclass(frozen=True)
class Range:
    """The values a number (or every number of a list) may take; checked when a config is built,
    so a degenerate setting fails at once, naming its flag or YAML line, not mid-run."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def problem(self, value) -> str | None:
        if value is None or isinstance(value, str):  # a named choice ("auto"): not a number to bound
            return None
        if isinstance(value, list):
            if not value:
                return "must not be empty"
            return next(
                (f"{problem} (item {i + 1})" for i, v in enumerate(value) if (problem := self.problem(v))), None
            )
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if above and below:
            return None
        bounds = [
            f"{'greater than' if self.low_open else 'at least'} {self.low:g}" if self.low is not None else "",
            f"{'less than' if self.high_open else 'at most'} {self.high:g}" if self.high is not None else "",
        ]
        return f"must be {' and '.join(b for b in bounds if b)}, got {value}"


def option(
    default,
    help: str,
    *,
    group: str | None = None,
    scope: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    low=None,
    high=None,
    low_open=False,
    high_open=False,
    metavar: str | None = None,
    resumable: bool = False,
):
    """A config field: its default, a one-line `help` (the flag's help text, with the default shown),
    the `group` it is listed under in --help, the `scope` where it applies ("ranking", "ctr":
    training on that kind of data; "prepare": `recforge prepare` only; empty: everywhere), older
    names still accepted (`aliases`), the `Range` its value must lie in (lists: each item,
    and not empty), the value's name in --help (`metavar`; else from the type or field name) and
    whether `--resume` may change it (`resumable`: rates and their schedule, the run's length,
    evaluation and logging, where the data lives and how the run executes, taking effect from the
    resumed step; every other setting shapes the state being resumed and is refused)."""
    metadata = {
        "help": help,
        "group": group,
        "scope": scope,
        "aliases": aliases,
        "range": Range(low, high, low_open, high_open),
        "metavar": metavar,
        "resumable": resumable,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE: dict[str, Any] = {"low": 0, "low_open": True}
FRACTION: dict[str, Any] = {"low": 0, "high": 1, "high_open": True}  # [0, 1)
RANKING, CTR, PREPARE = ("ranking",), ("ctr",), ("prepare",)


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared.

    Ranking (NCF): raw interactions (--data-dir) become an implicit leave-one-out dataset, cached.
    Click logs (DLRM, Wide & Deep): `recforge prepare` reads the raw log (--data-dir) and writes a
    prepared folder (--out); training and scoring read that folder (--prepared-dir).
    """

    _SOURCE = "data source"
    _FILES = "interaction files (ranking)"
    _SYNTHETIC = "built-in synthetic data"
    _PREPARE = "click-log preparation (recforge prepare)"

    dataset: str = option(
        "synthetic",
        "dataset name (ranking: recforge.data.datasets; click logs: recforge.prepare.click_logs)",
        group=_SOURCE,
    )
    data_dir: str | None = option(
        None, "folder of the raw files (ranking data; the raw log for recforge prepare)", group=_SOURCE, resumable=True
    )
    prepared_dir: str | None = option(
        None,
        "click logs: the prepared folder (written by recforge prepare ... --out)",
        group=_SOURCE,
        scope=CTR,
        resumable=True,
    )
    data_file: str | None = option(
        None,
        "a csv/parquet file, or an NCF file prefix, inside --data-dir",
        group=_SOURCE,
        scope=RANKING,
        resumable=True,
    )
    cache_dir: str | None = option(
        None,
        "where prepared ranking datasets are cached (~/.cache/recforge, $RECFORGE_CACHE)",
        group=_SOURCE,
        scope=RANKING,
        resumable=True,
    )
    clean: bool = option(False, "rebuild the cached dataset", group=_SOURCE, scope=RANKING, resumable=True)
    user_column: str = option("user_id", "csv/parquet column of the user ids", group=_FILES, scope=RANKING)
    item_column: str = option("item_id", "csv/parquet column of the item ids", group=_FILES, scope=RANKING)
    rating_column: str | None = option(
        "rating", "column of the ratings (none: every row is a positive)", group=_FILES, scope=RANKING
    )
    timestamp_column: str | None = option(
        "timestamp",
        "column of the times that order a user's interactions (none: file order)",
        group=_FILES,
        scope=RANKING,
    )
    separator: str = option(",", "csv field separator", group=_FILES, scope=RANKING)
    min_rating: float | None = option(
        None, "keep ratings >= this as positives (none: every rating)", group=_FILES, scope=RANKING
    )
    min_user_interactions: int = option(20, "drop users with fewer interactions", group=_FILES, scope=RANKING, low=1)
    synthetic_users: int = option(
        6040, "users of the synthetic ranking dataset (ml-1m's shape)", group=_SYNTHETIC, scope=RANKING, low=1
    )
    synthetic_items: int = option(
        3706, "items of the synthetic ranking dataset", group=_SYNTHETIC, scope=RANKING, low=2
    )
    synthetic_interactions: int = option(
        1_000_209, "interactions of the synthetic ranking dataset", group=_SYNTHETIC, scope=RANKING, low=1
    )
    synthetic_seed: int = option(
        0,
        "seed of the synthetic data (and of outbrain's validation split)",
        group=_SYNTHETIC,
        scope=RANKING + PREPARE,
        low=0,
    )
    synthetic_rows: int = option(
        2_000_000, "rows of the synthetic click log (criteo-synthetic)", group=_SYNTHETIC, scope=PREPARE, low=10
    )
    synthetic_displays: int = option(
        200_000,
        "displays of the synthetic Outbrain log (outbrain-synthetic), 2-12 ads each",
        group=_SYNTHETIC,
        scope=PREPARE,
        low=1,
    )
    out: str | None = option(None, "the prepared folder to write", group=_PREPARE, scope=PREPARE, resumable=True)
    overwrite: bool = option(
        False, "replace a prepared folder already at --out", group=_PREPARE, scope=PREPARE, resumable=True
    )
    feature_spec: str | None = option(
        None, "the YAML feature spec of a CSV/Parquet log (dataset ctr)", group=_PREPARE, scope=PREPARE
    )
    min_frequency: int = option(
        1, "rarer categorical values share the out-of-vocabulary id", group=_PREPARE, scope=PREPARE, low=1
    )
    max_ind_range: int | None = option(
        None, "hash ids modulo this instead of counting a vocabulary (MLPerf)", group=_PREPARE, scope=PREPARE, low=2
    )
    workers: int | Literal["auto"] = option(
        2,
        "preparation processes (auto: one per core this process may use)",
        group=_PREPARE,
        scope=PREPARE,
        low=1,
        resumable=True,
    )
    valid_fraction: float = option(
        0.2,
        "outbrain: the share of displays held out for validation",
        group=_PREPARE,
        scope=PREPARE,
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    shuffle: Literal["rows", "blocks", "none"] = option(
        "rows", "order of training rows each epoch (blocks: batch-sized runs)", group=_SOURCE, scope=CTR
    )
    memory_fraction: float = option(
        0.25,
        "largest share of a process's memory (its GPU's, or its share of RAM) its training rows are held in; "
        "ctr: larger splits are read from disk, batches ahead (0: always from disk); ranking under torchrun: "
        "larger epochs are split among the ranks, each drawing its own part",
        group=_SOURCE,
        scope=RANKING + CTR,
        low=0,
        high=1,
    )


@dataclass
class TrainConfig:
    _RUN = "training run"
    _OPT = "optimizer"
    _SCHEDULE = "learning-rate schedule"
    _EXEC = "execution"
    _SAVE = "checkpoints and scoring"
    _LOG = "logging and profiling"
    _SHARD = "embedding tables across processes (TorchRec)"

    epochs: int = option(20, "training epochs", group=_RUN, low=1, resumable=True)
    batch_size: int = option(16384, "global batch size (split across processes under torchrun)", group=_RUN, low=1)
    max_steps: int | None = option(None, "stop after this many optimizer steps", group=_RUN, low=1, resumable=True)
    seed: int = option(1, "seed of initialization, shuffling and sampling", group=_RUN, low=0)
    negative_samples: int = option(
        4, "negatives per positive, drawn afresh every epoch", group=_RUN, scope=RANKING, low=1
    )
    verify_negatives: bool | Literal["auto"] = option(
        "auto",
        "resample negatives that are known positives (auto: when at least 3% of unchecked draws would be)",
        group=_RUN,
        scope=RANKING,
        metavar="auto|true|false",
    )
    optimizer: Literal["adam", "sgd", "adagrad", "rowwise-adagrad", "ftrl+proximal-adagrad"] = option(
        "adam",
        "optimizer, whose own settings follow (ftrl+proximal-adagrad: FTRL on the model's linear part, "
        "Proximal Adagrad on the rest)",
        group=_OPT,
    )
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up", group=_SCHEDULE, low=0, resumable=True)
    decay_start_step: int = option(
        0, "step where the polynomial decay to 0 starts", group=_SCHEDULE, low=0, resumable=True
    )
    decay_steps: int = option(0, "steps of the decay (0: no decay)", group=_SCHEDULE, low=0, resumable=True)
    decay_power: float = option(2.0, "power of the decay", group=_SCHEDULE, **POSITIVE, resumable=True)
    precision: Precision = option(
        "auto",
        "arithmetic of the forward and backward passes (auto: bf16 where the CPU or GPU computes it natively, "
        "fp16 on GPUs of compute capability 7.x, else fp32)",
        group=_EXEC,
    )
    gemm: Literal["auto", "onednn", "torch"] = option(
        "auto",
        "library of the fp32 CPU matrix products (auto: per layer shape the faster of oneDNN and torch's own, "
        "MKL in x86 builds, measured once per machine and cached)",
        group=_EXEC,
        resumable=True,
    )
    compile: bool = option(False, "torch.compile the model", group=_EXEC, resumable=True)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", group=_EXEC, resumable=True)
    threads: int | None = option(
        None, "torch intra-op threads (none: torch's default)", group=_EXEC, low=1, resumable=True
    )
    collective_timeout_s: float = option(
        600.0,
        "seconds a multi-process run waits in a collective for a peer that stopped answering before it ends",
        group=_EXEC,
        low=1,
        resumable=True,
    )
    embedding_sharding: Literal[
        "none", "auto", "data-parallel", "table-wise", "row-wise", "column-wise", "table-row-wise"
    ] = option(
        "none",
        "none: every process holds every table (recforge's kernels); auto: TorchRec shards them only when they "
        "do not fit --embedding-memory-per-rank; or one TorchRec sharding type for every table",
        group=_SHARD,
        scope=CTR,
        resumable=True,
    )
    embedding_memory_per_rank: str | None = option(
        None,
        "memory for tables and their optimizer state per process, e.g. 8GiB (none: the GPU's, or RAM / processes)",
        group=_SHARD,
        scope=CTR,
        metavar="SIZE",
        resumable=True,
    )
    resume: bool = option(
        False,
        "continue the run in --output-dir from its last checkpoint (implied when torchrun restarts the workers)",
        group=_SAVE,
        resumable=True,
    )
    mode: Literal["train", "eval", "inference"] = option(
        "train",
        "train, or score --restore-checkpoint (eval: metrics; inference: throughput)",
        group=_SAVE,
        resumable=True,
    )
    restore_checkpoint: str | None = option(
        None, "start from these weights (train), or score them (eval, inference)", group=_SAVE, resumable=True
    )
    save_steps: int = option(
        0, "also checkpoint every N steps (0: at evaluations only)", group=_SAVE, low=0, resumable=True
    )
    save_every_minutes: float = option(
        0.0,
        "also checkpoint when this many minutes passed since the last checkpoint (0: never)",
        group=_SAVE,
        low=0,
        resumable=True,
    )
    keep_checkpoint_max: int = option(
        3, "step checkpoints kept (best.pt and last.pt always are)", group=_SAVE, low=1, resumable=True
    )
    write_predictions: bool = option(
        False, "inference: write predictions.npy (grouped click logs: submission.csv too)", group=_SAVE, resumable=True
    )
    print_freq: int = option(0, "a progress line every N steps (0: per evaluation)", group=_LOG, low=0, resumable=True)
    tensorboard: bool = option(
        True,
        "TensorBoard event files in the run folder (with the tensorboard package installed)",
        group=_LOG,
        resumable=True,
    )
    profile: bool = option(False, "a torch.profiler trace into the run folder", group=_LOG, resumable=True)
    profile_start_step: int = option(10, "first profiled step", group=_LOG, low=1, resumable=True)
    profile_steps: int = option(5, "steps profiled", group=_LOG, low=1, resumable=True)


@dataclass
class EvalConfig:
    _EVAL = "evaluation"

    topk: int = option(10, "K of HR@K and NDCG@K", group=_EVAL, scope=RANKING, low=1)
    valid_negative: int = option(
        99, "sampled protocol: negatives ranked with each held-out item", group=_EVAL, scope=RANKING, low=1
    )
    eval_protocol: Literal["sampled", "full"] = option(
        "sampled", "rank among sampled negatives, or among all items", group=_EVAL, scope=RANKING
    )
    valid_protocol: Literal["none", "leave-one-out"] = option(
        "none",
        "none: evaluations score the test items (the NCF papers' protocol); leave-one-out: each user's "
        "second-latest interaction is held out as validation (RecBole's LS split), which evaluations, "
        "early stopping and the best checkpoint use, and the test items are scored once at the end",
        group=_EVAL,
        scope=RANKING,
    )
    eval_split: Literal["valid", "test"] = option("valid", "the split evaluations score", group=_EVAL, scope=CTR)
    final_test: bool = option(
        True,
        "when evaluations score a validation split, score the test split once at the end with the best "
        "checkpoint (summary.json's test_metrics)",
        group=_EVAL,
    )
    valid_batch_size: int = option(1 << 18, "examples scored per forward pass", group=_EVAL, low=1, resumable=True)
    eval_after: int = option(
        0, "evaluate only after this many epochs (and after the last)", group=_EVAL, low=0, resumable=True
    )
    evals_per_epoch: int = option(1, "evaluations (and checkpoints) per epoch", group=_EVAL, low=1, resumable=True)
    no_eval: bool = option(False, "never evaluate (throughput runs)", group=_EVAL, resumable=True)
    quality_target: float | None = option(
        None,
        "stop once the task's metric (HR@K; AUC; MAP@12 for grouped click logs) reaches it (MLPerf: 0.635, 0.8025)",
        group=_EVAL,
        aliases=("hr_threshold",),
        low=0,
        high=1,
        resumable=True,
    )


@dataclass
class RunConfig:
    model: str = "neumf"
    output_dir: str = "runs/latest"
    data: DataConfig = field(default_factory=DataConfig)
    arch: Any = None  # the model's config dataclass; filled from the registry
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: Any = None  # the chosen optimizer's settings dataclass; filled from its table (optim.build)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class _TaskKind(Protocol):
    name: str


class ModelSettings(Protocol):
    """What a config needs of a model: its `arch` dataclass, its own defaults by section, and its
    task (whose `name` a field's scope names)."""

    @property
    def config(self) -> type: ...
    @property
    def defaults(self) -> dict: ...
    @property
    def task(self) -> type[_TaskKind]: ...


SECTIONS = ("data", "arch", "train", "optim", "eval")
TOP_LEVEL = ("model", "output_dir")


def coerce(tp: Any, value: Any) -> Any:
    """Convert a YAML value or a command-line string to the annotated type, or raise ValueError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if type(None) in members and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        problems = []
        for inner in [a for a in members if a is not type(None)]:  # the first that takes it
            try:
                return coerce(inner, value)
            except ValueError as error:
                problems.append(str(error).removeprefix("must be "))
        raise ValueError("must be " + " or ".join(problems))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        (elem,) = typing.get_args(tp)
        if isinstance(value, str):  # "256,256,128" or DLRM's "13-512-256-64"
            value = [v for v in value.replace(" ", ",").replace("-", ",").split(",") if v]
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {value!r}")
        return [coerce(elem, v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ValueError(f"must be a number, got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r}")


def changeable_on_resume(cfg: RunConfig) -> dict[str, set[str]]:
    """By section, the settings `--resume` may change (their option's `resumable`)."""
    return {
        section: {f.name for f in dataclasses.fields(getattr(cfg, section)) if f.metadata.get("resumable")}
        for section in SECTIONS
    }


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def section_classes(arch_cls: type, optim_cls: type) -> dict[str, type]:
    return {"data": DataConfig, "arch": arch_cls, "train": TrainConfig, "optim": optim_cls, "eval": EvalConfig}


def upgraded(values: dict) -> dict:
    """`values` (a preset, or a `RunConfig.to_dict()` stored in a checkpoint) in today's layout:
    keys under `train` that are no training setting (the optimizers' settings, kept there before
    each optimizer had its own section) moved to `optim`."""
    train, optim = values.get("train"), values.get("optim") or {}
    if not isinstance(train, dict) or not isinstance(optim, dict):
        return values  # refused, naming the section, when the config is built
    own = {f.name for f in dataclasses.fields(TrainConfig)}
    moved = {key: value for key, value in train.items() if key not in own}
    if not moved:
        return values
    return values | {"train": {k: v for k, v in train.items() if k in own}, "optim": moved | optim}


def load_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    if not path.is_file():
        raise RecforgeError(f"{path}: config file not found")
    data, lines = read_yaml(path, "a YAML config file")
    if not isinstance(data or {}, dict):
        raise DataError(path, 1, None, "a config file must be a mapping of sections")
    return data or {}, lines


def build_config(
    file_values: dict | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    models: Mapping[str, ModelSettings],
    optimizers: Mapping[str, type],
    source: str | Path = "<config>",
    lines: dict[tuple[str, ...], int] | None = None,
) -> RunConfig:
    """Layer `file_values` (nested, as in YAML) and flat CLI `overrides` over the defaults of
    the chosen model of `models` (the registry's table) and of the chosen optimizer of
    `optimizers` (name -> its settings dataclass)."""
    given = dict(file_values or {})
    file_values = upgraded(given)
    overrides = dict(overrides or {})
    lines = lines or {}
    stored = source == CHECKPOINT_CONFIG
    # Settings a preset still gives under `train` are named where they are written.
    written: dict[tuple[str, ...], tuple[str, ...]] = {
        ("optim", k): ("train", k) for k in file_values.get("optim") or {} if k in (given.get("train") or {})
    }

    def fail(path: tuple[str, ...], message: str):
        path = written.get(path, path)
        raise DataError(source, lines.get(path), ".".join(path), message)

    flags: dict[tuple[str, str], str] = {}  # (section, key) -> the flag that set it

    unknown = set(file_values) - set(SECTIONS) - set(TOP_LEVEL)
    if unknown:
        key = sorted(unknown)[0]
        fail((key,), f"unknown key (expected one of {', '.join(TOP_LEVEL + SECTIONS)})")
    model = overrides.pop("model", None) or file_values.get("model") or RunConfig.model
    if model not in models:
        raise RecforgeError(f"unknown model '{model}' (known: {', '.join(models)})")
    entry = models[model]
    cfg = RunConfig(model=model, arch=entry.config())
    if "output_dir" in file_values:
        cfg.output_dir = coerce(str, file_values["output_dir"])

    def owners(key: str) -> list[str]:
        """The optimizers (other than this run's) with a setting `key`."""
        return [name for name, cls in optimizers.items() if name != cfg.train.optimizer and key in field_types(cls)]

    def other_optimizers(key: str) -> str:
        return f"a setting of --optimizer {' / '.join(owners(key))}, not of {cfg.train.optimizer} (this run's)"

    for section in SECTIONS:
        if section == "optim":  # the optimizer is known now: its settings' section
            cfg.optim = optimizers[cfg.train.optimizer]()
        target = getattr(cfg, section)
        types_ = field_types(type(target))
        for key, value in entry.defaults.get(section, {}).items():  # the model's, under the preset
            if key in types_:  # (a rate for an optimizer without that setting: not its)
                setattr(target, key, value)
        values = file_values.get(section) or {}
        if not isinstance(values, dict):
            fail((section,), "must be a mapping")
        renamed = {alias: f.name for f in dataclasses.fields(target) for alias in f.metadata.get("aliases", ())}
        for key, value in values.items():
            name = renamed.get(key, key)  # an older name of the field
            if name not in types_ and section == "optim" and owners(name) and stored:
                continue  # a checkpoint from before the optimizers' sections stored them all
            if name not in types_:
                fail(
                    (section, key),
                    other_optimizers(name)
                    if section == "optim" and owners(name)
                    else f"unknown key for model '{model}'",
                )
            try:
                setattr(target, name, coerce(types_[name], value))
            except ValueError as e:
                fail((section, key), str(e))
        for key in list(overrides):
            name = renamed.get(key, key)
            if name in types_:
                flags[section, name] = f"--{key.replace('_', '-')}"
                try:
                    setattr(target, name, coerce(types_[name], overrides.pop(key)))
                except ValueError as e:
                    raise RecforgeError(f"{flags[section, name]}: {e}") from None
    if "output_dir" in overrides:
        cfg.output_dir = overrides.pop("output_dir")
    for key in overrides:
        if owners(key):
            raise RecforgeError(f"--{key.replace('_', '-')}: {other_optimizers(key)}")
    if overrides:
        raise RecforgeError(f"unknown option(s) for model '{model}': {', '.join(sorted(overrides))}")
    # A stored config (a checkpoint's) was checked when it was written: only flags count there.
    _refuse_out_of_scope(cfg, model, entry.task.name, flags, {} if stored else file_values, fail)
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            limits = f.metadata.get("range")
            problem = limits and limits.problem(getattr(getattr(cfg, section), f.name))
            if problem and (section, f.name) in flags:
                raise RecforgeError(f"{flags[section, f.name]}: {problem}")
            if problem:
                fail((section, f.name), problem)
    return cfg


CHECKPOINT_CONFIG = "<checkpoint config>"


def _refuse_out_of_scope(cfg: RunConfig, model: str, task: str, flags: dict, file_values: dict, fail) -> None:
    """A setting given (flag or preset) for another kind of model than `model`, with a value other
    than its default, would be silently ignored (--valid-protocol leave-one-out on a click log):
    refused, naming the flag or the preset's line. Preparation settings are `prepare`'s and train's."""
    for section in SECTIONS:
        target = getattr(cfg, section)
        for f in dataclasses.fields(target):
            scope = f.metadata.get("scope") or ()
            if not scope or "prepare" in scope or {task, model} & set(scope):
                continue
            value = getattr(target, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            given = (section, f.name) in flags or f.name in (file_values.get(section) or {})
            if given and value != default:
                kinds = " and ".join({"ctr": "click-log"}.get(s, s) for s in scope)
                message = f"applies to {kinds} models only, not {model}: it would be ignored"
                if (section, f.name) in flags:
                    raise RecforgeError(f"{flags[section, f.name]} {_default_text(value)}: {message}")
                fail((section, f.name), message)


def config_from_dict(values: dict, models: Mapping[str, ModelSettings], optimizers: Mapping[str, type]) -> RunConfig:
    """Rebuild a RunConfig from `RunConfig.to_dict()` output (e.g. stored in a checkpoint)."""
    return build_config(values, models=models, optimizers=optimizers, source=CHECKPOINT_CONFIG)


def _default_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    sections: dict[str, Any],
    exclude: tuple[str, ...] = (),
    scope: tuple[str, ...] | None = None,
    titles: dict[str, str] | None = None,
    hidden: bool = False,
) -> None:
    """One flag per field of `sections` (the classes, or instances whose values are the defaults
    shown), but `exclude`, with the field's help and default, listed under its group (or the
    section's title). Fields whose scope `scope` (task and model names) misses, and all when
    `hidden`, are accepted but not listed. Absent flags stay absent
    (argparse.SUPPRESS), so a YAML preset's values win over the defaults."""
    seen: dict[str, str] = {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section, source in sections.items():
        cls = source if isinstance(source, type) else type(source)
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            name, tp, meta = f.name, hints[f.name], f.metadata
            if name in exclude:
                continue
            if name in seen:
                raise AssertionError(f"config field '{name}' in both '{seen[name]}' and '{section}'")
            seen[name] = section
            title = meta.get("group") or (titles or {}).get(section, section)
            group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
            default = getattr(source, name) if not isinstance(source, type) else _field_default(f)
            listed = not hidden and (scope is None or not meta.get("scope") or bool(set(scope) & set(meta["scope"])))
            text = f"{meta.get('help', '')} (default: {_default_text(default)})".strip()
            help_text = text.replace("%", "%%") if listed else argparse.SUPPRESS
            flags = ["--" + n.replace("_", "-") for n in (name, *meta.get("aliases", ()))]
            common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
            if tp is bool and name.startswith("no_"):  # --no-eval: a plain switch, not --no-no-eval
                group.add_argument(*flags, action="store_const", const=True, **common)
            elif tp is bool:
                group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
            else:
                choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
                group.add_argument(
                    *flags,
                    choices=choices,
                    metavar=None if choices else meta.get("metavar") or _metavar(tp, name),
                    **common,
                )


def _metavar(tp, name: str) -> str:
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    inner = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if typing.get_origin(inner) is list:
        return "N,N,..."
    return {int: "N", float: "X"}.get(inner, name.split("_")[-1].upper())


def _field_default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
