"""Names -> models and their tasks, and the assembly of a run's parts from a config: the one place
(with the CLI and the scorers above it) that knows every model and task. A new model is one
module and one line here; datasets are named in `recforge.data.datasets`, optimizers in
`recforge.optim.build`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recforge import config
from recforge.config import RunConfig
from recforge.core.errors import RecforgeError
from recforge.models import dlrm, ncf, wide_deep
from recforge.models.layers import to_device
from recforge.optim import build as optim
from recforge.tasks.base import Task
from recforge.tasks.ctr import CTRTask
from recforge.tasks.ranking import RankingTask


@dataclass(frozen=True)
class ModelEntry:
    build: Callable  # (dimensions from the task..., config) -> nn.Module
    config: type  # the model's config dataclass (the `arch` section)
    task: type[Task]  # the data, batches and evaluation the model trains on
    defaults: dict = field(default_factory=dict)  # the model's own defaults, by section, under presets and flags


MODELS = {
    "gmf": ModelEntry(ncf.gmf, ncf.NCFConfig, RankingTask),
    "mlp": ModelEntry(ncf.mlp_model, ncf.NCFConfig, RankingTask),
    "neumf": ModelEntry(ncf.neumf, ncf.NCFConfig, RankingTask),
    "dlrm": ModelEntry(
        dlrm.dlrm,
        dlrm.DLRMConfig,
        CTRTask,
        {
            "data": {"dataset": "criteo-kaggle"},
            "train": {"batch_size": 65536, "optimizer": "sgd", "epochs": 1},
            "optim": {"learning_rate": 0.1},
            "eval": {"valid_batch_size": 65536},
        },
    ),
    "wide-deep": ModelEntry(
        wide_deep.wide_deep,
        wide_deep.WideDeepConfig,
        CTRTask,
        {
            "data": {"dataset": "ctr"},
            "train": {"batch_size": 131072, "optimizer": "ftrl+proximal-adagrad", "epochs": 1},
            "eval": {"valid_batch_size": 32768},
        },
    ),
}


# Optimizers by name -> their settings (the `optim` section).
OPTIMIZER_SETTINGS = optim.SETTINGS

# Kinds of task by name (a bundle's manifest names its model's).
TASKS = {entry.task.name: entry.task for entry in MODELS.values()}


def task_named(name: str, where) -> type[Task]:
    if name not in TASKS:
        raise RecforgeError(f"{where}: task {name!r} is no kind of task this recforge knows ({', '.join(TASKS)})")
    return TASKS[name]


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise RecforgeError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name]


def build_config(file_values: dict | None = None, overrides: dict | None = None, **where) -> RunConfig:
    """`config.build_config` over this registry's models and the optimizers (`where`: source= and
    lines= for messages)."""
    return config.build_config(file_values, overrides, models=MODELS, optimizers=OPTIMIZER_SETTINGS, **where)


def config_from_dict(values: dict) -> RunConfig:
    return config.config_from_dict(values, MODELS, OPTIMIZER_SETTINGS)


def build_task(cfg: RunConfig, device: torch.device, dist, log) -> Task:
    """The data, batches and evaluation that the configured model trains on."""
    return model_entry(cfg.model).task(cfg, device, dist, log)


def build_model(cfg: RunConfig, dims: dict, device: torch.device) -> torch.nn.Module:
    entry = model_entry(cfg.model)
    model = entry.build(**dims, cfg=cfg.arch)
    if not isinstance(model, entry.task.model_family):  # what its task's batches, loss and assets assume
        raise TypeError(f"model {cfg.model}: a {type(model).__name__}, not a {entry.task.model_family.__name__}")
    return to_device(model, device)
