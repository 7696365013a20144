"""Names -> models and datasets. A new model or dataset is one module and one line here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from recforge.data import interaction_file, movielens, ncf_files, synthetic
from recforge.errors import RecforgeError
from recforge.models import ncf
from recforge.tasks.ranking import RankingTask


@dataclass(frozen=True)
class ModelEntry:
    build: Callable  # (dimensions from the task..., config) -> nn.Module
    config: type  # the model's config dataclass (the `arch` section)
    task: str  # which task (data, batches, evaluation) the model trains on


@dataclass(frozen=True)
class DatasetEntry:
    sources: Callable[..., list[Path]]  # DataConfig -> the files read (for the cache key)
    read: Callable  # DataConfig -> RawInteractions or an already split LeaveOneOutData


MODELS = {
    "gmf": ModelEntry(ncf.gmf, ncf.NCFConfig, "ranking"),
    "mlp": ModelEntry(ncf.mlp_model, ncf.NCFConfig, "ranking"),
    "neumf": ModelEntry(ncf.neumf, ncf.NCFConfig, "ranking"),
}

DATASETS = {
    **{name: DatasetEntry(partial(movielens.sources, name), partial(movielens.read, name)) for name in movielens.LAYOUTS},
    "csv": DatasetEntry(interaction_file.sources, interaction_file.read),
    "ncf": DatasetEntry(ncf_files.sources, ncf_files.read),
    "synthetic": DatasetEntry(lambda cfg: [], synthetic.generate),
}


TASKS = {"ranking": RankingTask}


def build_task(cfg, device, dist, log):
    """The data, batches and evaluation that the configured model trains on."""
    return TASKS[model_entry(cfg.model).task](cfg, device, dist, log)


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise RecforgeError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name]


def dataset_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise RecforgeError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return DATASETS[name]
