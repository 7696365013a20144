"""Names -> the ranking datasets that `train` reads (and caches). A new one is one module and one
line here; click logs, prepared offline, are named in `recforge.prepare.click_logs`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from recforge.core.errors import RecforgeError
from recforge.data import interaction_file, movielens, ncf_files, synthetic


@dataclass(frozen=True)
class DatasetEntry:
    sources: Callable[..., list[Path]]  # DataConfig -> the files read (for the cache key)
    read: Callable  # DataConfig -> RawInteractions or an already split LeaveOneOutData


DATASETS = {
    **{
        name: DatasetEntry(partial(movielens.sources, name), partial(movielens.read, name))
        for name in movielens.LAYOUTS
    },
    "csv": DatasetEntry(interaction_file.sources, interaction_file.read),
    "ncf": DatasetEntry(ncf_files.sources, ncf_files.read),
    "synthetic": DatasetEntry(lambda cfg: [], synthetic.generate),
}


def dataset_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise RecforgeError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return DATASETS[name]
