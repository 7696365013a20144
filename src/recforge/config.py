"""Typed run configuration, layered: dataclass defaults < YAML preset (`--config`) < CLI flags.

A run is described by `RunConfig`: the model name, the output directory and four sections.
`data`, `train` and `eval` are shared by every model; `arch` is the chosen model's own dataclass
(registered beside the model). Every field of every section is also a command-line flag named
after it (`negative_samples` -> `--negative-samples`), so flag names are unique across sections.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from recforge.errors import DataError, RecforgeError

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Range:
    """The values a number (or every number of a list) may take; checked when a config is built,
    so a degenerate setting fails at once, naming its flag or YAML line, not mid-run."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def problem(self, value) -> str | None:
        if value is None:
            return None
        if isinstance(value, list):
            if not value:
                return "must not be empty"
            return next((f"{problem} (item {i + 1})" for i, v in enumerate(value) if (problem := self.problem(v))), None)
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if above and below:
            return None
        bounds = [f"{'greater than' if self.low_open else 'at least'} {self.low:g}" if self.low is not None else "",
                  f"{'less than' if self.high_open else 'at most'} {self.high:g}" if self.high is not None else ""]
        return f"must be {' and '.join(b for b in bounds if b)}, got {value}"


def bounded(default, low=None, high=None, *, low_open=False, high_open=False):
    """A dataclass field whose value must lie in a `Range` (lists: each item, and not empty)."""
    limits = {"range": Range(low, high, low_open, high_open)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=limits)
    return field(default=default, metadata=limits)


POSITIVE = {"low": 0, "low_open": True}
FRACTION = {"low": 0, "high": 1, "high_open": True}  # [0, 1)


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared.

    Ranking (NCF): raw interactions become an implicit leave-one-out dataset, cached.
    Click logs (DLRM): `recforge prepare` writes a prepared folder; training reads it (data_dir).
    """

    dataset: str = "synthetic"  # a name from recforge.registry.DATASETS or CLICK_LOGS
    data_dir: str | None = None  # folder of the raw files (click logs: of the prepared folder)
    data_file: str | None = None  # file (csv/parquet) or NCF file prefix inside data_dir
    cache_dir: str | None = None  # default: ~/.cache/recforge (or $RECFORGE_CACHE)
    clean: bool = False  # rebuild the cache
    user_column: str = "user_id"  # csv/parquet columns
    item_column: str = "item_id"
    rating_column: str | None = "rating"
    timestamp_column: str | None = "timestamp"
    separator: str = ","
    min_rating: float | None = None  # keep ratings >= this as positives (None: all)
    min_user_interactions: int = bounded(20, 1)  # drop users with fewer interactions
    synthetic_users: int = bounded(6040, 1)  # the built-in dataset (ml-1m shape by default)
    synthetic_items: int = bounded(3706, 2)
    synthetic_interactions: int = bounded(1_000_209, 1)
    synthetic_seed: int = bounded(0, 0)
    out: str | None = None  # click logs: `recforge prepare` writes the prepared folder here
    overwrite: bool = False  # click logs: replace a prepared folder already at --out
    min_frequency: int = bounded(1, 1)  # click logs: rarer categorical values share the out-of-vocabulary id
    max_ind_range: int | None = bounded(None, 2)  # click logs: hash ids modulo this instead of a vocabulary (MLPerf)
    workers: int = bounded(2, 1)  # click logs: preparation processes
    feature_spec: str | None = None  # click logs (dataset ctr): the YAML feature spec of a CSV/Parquet log
    synthetic_rows: int = bounded(2_000_000, 10)  # the synthetic click log (criteo-synthetic)
    synthetic_displays: int = bounded(200_000, 1)  # the synthetic Outbrain log (outbrain-synthetic), 2-12 ads each
    valid_fraction: float = bounded(0.2, 0, 1, low_open=True, high_open=True)  # outbrain: the share of displays held out for validation
    shuffle: Literal["rows", "blocks", "none"] = "rows"  # click logs: per-epoch order (blocks: batch-sized runs)


@dataclass
class TrainConfig:
    epochs: int = bounded(20, 1)
    batch_size: int = bounded(16384, 1)  # global: split across ranks under torchrun
    learning_rate: float = bounded(0.001, **POSITIVE)
    beta1: float = bounded(0.9, **FRACTION)
    beta2: float = bounded(0.999, **FRACTION)
    eps: float = bounded(1e-8, **POSITIVE)
    weight_decay: float = bounded(0.0, 0)  # L2 penalty on all parameters (Adam's weight_decay)
    negative_samples: int = bounded(4, 1)  # per positive, drawn afresh every epoch
    verify_negatives: bool = False  # resample negatives that are known positives
    seed: int = bounded(1, 0)
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = bounded(None, 1)  # torch intra-op threads (None: torch's default)
    resume: bool = False  # continue from output_dir/checkpoints/last.pt
    mode: Literal["train", "eval", "inference"] = "train"  # eval/inference score --restore-checkpoint
    restore_checkpoint: str | None = None  # start from these weights (train) or score them (eval, inference)
    optimizer: Literal["adam", "sgd", "adagrad", "rowwise-adagrad", "ftrl+proximal-adagrad"] = "adam"
    # ftrl+proximal-adagrad (Wide & Deep): FTRL on the wide part, Proximal Adagrad on the deep part
    linear_learning_rate: float = bounded(0.2, **POSITIVE)
    linear_l1_regularization: float = bounded(0.0, 0)
    linear_l2_regularization: float = bounded(0.0, 0)
    linear_learning_rate_power: float = bounded(-0.5, high=0)
    linear_initial_accumulator: float = bounded(0.1, **POSITIVE)
    deep_learning_rate: float = bounded(1.0, **POSITIVE)
    deep_l1_regularization: float = bounded(0.0, 0)
    deep_l2_regularization: float = bounded(0.0, 0)
    deep_initial_accumulator: float = bounded(0.1, **POSITIVE)
    warmup_steps: int = bounded(0, 0)  # linear learning-rate warm-up (MLPerf DLRM)
    decay_start_step: int = bounded(0, 0)  # then polynomial decay to 0 over decay_steps (0: no decay)
    decay_steps: int = bounded(0, 0)
    decay_power: float = bounded(2.0, **POSITIVE)
    max_steps: int | None = bounded(None, 1)  # stop after this many optimizer steps
    print_freq: int = bounded(0, 0)  # a progress line every N steps (0: per epoch only)
    save_steps: int = bounded(0, 0)  # also checkpoint every N steps (0: at evaluations)
    keep_checkpoint_max: int = bounded(3, 1)  # step checkpoints kept (best.pt and last.pt always are)
    profile: bool = False  # torch.profiler trace into the run directory
    profile_start_step: int = bounded(10, 1)
    profile_steps: int = bounded(5, 1)
    write_predictions: bool = False  # inference mode: write predictions.npy (and, for grouped click logs, submission.csv)


@dataclass
class EvalConfig:
    topk: int = bounded(10, 1)
    valid_negative: int = bounded(99, 1)  # sampled evaluation: negatives per held-out item
    eval_protocol: Literal["sampled", "full"] = "sampled"
    valid_batch_size: int = bounded(1 << 18, 1)  # examples (ranking: (user, item) pairs) scored per forward pass
    eval_after: int = bounded(0, 0)  # evaluate only after this many epochs
    evals_per_epoch: int = bounded(1, 1)
    no_eval: bool = False  # never evaluate (throughput runs)
    eval_split: Literal["valid", "test"] = "valid"  # click logs: the split evaluations score
    hr_threshold: float | None = bounded(None, 0, 1)  # stop once the task metric (HR@topk; AUC, or MAP@12 for grouped click logs) reaches it (MLPerf: 0.635 HR, 0.8025 AUC)


@dataclass
class RunConfig:
    model: str = "neumf"
    output_dir: str = "runs/latest"
    data: DataConfig = field(default_factory=DataConfig)
    arch: Any = None  # the model's config dataclass; filled from the registry
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = ("data", "arch", "train", "eval")
TOP_LEVEL = ("model", "output_dir")


def coerce(tp: Any, value: Any) -> Any:
    """Convert a YAML value or a command-line string to the annotated type, or raise ValueError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(inner, value)
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
            try:
                number = float(value)
            except ValueError:
                pass
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


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def section_classes(arch_cls) -> dict[str, type]:
    return {"data": DataConfig, "arch": arch_cls, "train": TrainConfig, "eval": EvalConfig}


def key_lines(text: str) -> dict[tuple, int]:
    """Line (1-based) of every mapping key and list item of a YAML document, by its path of keys
    and list positions."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            children = [(str(key.value), key, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(i, item, item) for i, item in enumerate(node.value)]
        else:
            return
        for key, marked, value in children:  # `marked`: the node whose line is the key's
            lines[prefix + (key,)] = marked.start_mark.line + 1
            walk(value, prefix + (key,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def read_yaml(path: Path, what: str) -> tuple[Any, dict[tuple, int]]:
    """A YAML document and the lines of its keys; a file that is not YAML text is a DataError."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text), key_lines(text)
    except UnicodeDecodeError:
        raise DataError(path, None, None, f"not {what} (not UTF-8 text)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, f"invalid YAML: {getattr(e, 'problem', e)}") from None


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
    source: str | Path = "<config>",
    lines: dict[tuple[str, ...], int] | None = None,
) -> RunConfig:
    """Layer `file_values` (nested, as in YAML) and flat CLI `overrides` over the defaults."""
    from recforge.registry import model_entry

    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    lines = lines or {}

    def fail(path: tuple[str, ...], message: str):
        raise DataError(source, lines.get(path), ".".join(path), message)

    flags: dict[tuple[str, str], str] = {}  # (section, key) -> the flag that set it

    unknown = set(file_values) - set(SECTIONS) - set(TOP_LEVEL)
    if unknown:
        key = sorted(unknown)[0]
        fail((key,), f"unknown key (expected one of {', '.join(TOP_LEVEL + SECTIONS)})")
    model = overrides.pop("model", None) or file_values.get("model") or RunConfig.model
    entry = model_entry(model)
    cfg = RunConfig(model=model, arch=entry.config())
    for section, values in entry.defaults.items():  # the model's defaults sit under the preset
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    if "output_dir" in file_values:
        cfg.output_dir = coerce(str, file_values["output_dir"])
    for section, cls in section_classes(entry.config).items():
        values = file_values.get(section) or {}
        if not isinstance(values, dict):
            fail((section,), "must be a mapping")
        types_ = _fields(cls)
        target = getattr(cfg, section)
        for key, value in values.items():
            if key not in types_:
                fail((section, key), f"unknown key for model '{model}'")
            try:
                setattr(target, key, coerce(types_[key], value))
            except ValueError as e:
                fail((section, key), str(e))
        for key in list(overrides):
            if key in types_:
                flags[section, key] = f"--{key.replace('_', '-')}"
                try:
                    setattr(target, key, coerce(types_[key], overrides.pop(key)))
                except ValueError as e:
                    raise RecforgeError(f"{flags[section, key]}: {e}") from None
    if "output_dir" in overrides:
        cfg.output_dir = overrides.pop("output_dir")
    if overrides:
        raise RecforgeError(f"unknown option(s) for model '{model}': {', '.join(sorted(overrides))}")
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            limits = f.metadata.get("range")
            problem = limits and limits.problem(getattr(getattr(cfg, section), f.name))
            if problem and (section, f.name) in flags:
                raise RecforgeError(f"{flags[section, f.name]}: {problem}")
            if problem:
                fail((section, f.name), problem)
    return cfg


def config_from_dict(values: dict) -> RunConfig:
    """Rebuild a RunConfig from `RunConfig.to_dict()` output (e.g. stored in a checkpoint)."""
    return build_config(values, source="<checkpoint config>")


def add_config_flags(parser: argparse.ArgumentParser, sections: dict[str, type], exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of `sections` (but `exclude`); absent flags stay absent (argparse.SUPPRESS) so YAML wins."""
    seen: dict[str, str] = {}
    for section, cls in sections.items():
        group = parser.add_argument_group(section)
        for name, tp in _fields(cls).items():
            if name in exclude:
                continue
            if name in seen:
                raise AssertionError(f"config field '{name}' in both '{seen[name]}' and '{section}'")
            seen[name] = section
            flag = "--" + name.replace("_", "-")
            if tp is bool and name.startswith("no_"):  # --no-eval: a plain switch, not --no-no-eval
                group.add_argument(flag, action="store_const", const=True, default=argparse.SUPPRESS)
            elif tp is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            else:
                choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
                group.add_argument(flag, default=argparse.SUPPRESS, choices=choices, metavar=None if choices else name.upper())
