"""Criteo's day files as a `ClickLog` of the pass engine: rows counted by newlines, vocabularies
counted on the train rows (or values hashed modulo `max_ind_range`), rows parsed and encoded;
Kaggle's seven days and Terabyte's day files split as Facebook's DLRM reference splits them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recforge.core.errors import DataError
from recforge.data.ctr_format import CTRMeta
from recforge.data.encoders import Categorical, Encoders, Numeric
from recforge.prepare.criteo.layout import KAGGLE_DAYS, _blocks, _count_lines, _split_rows
from recforge.prepare.criteo.parse import DENSE, SPARSE, _parse_located
from recforge.prepare.engine import ClickLog, Prepared, Unit


@dataclass
class CriteoLog(ClickLog):
    """Criteo Kaggle (one `train.txt`) or Terabyte (`day_0..`) files, read in blocks of `chunk_bytes`."""

    kind: str
    files: list[Path]
    chunk_bytes: int
    line_bytes: float  # the first file's mean line length (for progress estimates)
    min_frequency: int
    max_ind_range: int | None

    def encoders(self) -> Encoders:
        if self.max_ind_range is None:
            sparse = [Categorical(name, "vocabulary", "uint32", self.min_frequency) for name in SPARSE]
        else:
            sparse = [Categorical(name, "modulo", "uint32", buckets=self.max_ind_range) for name in SPARSE]
        return Encoders([Numeric(name, "log1p") for name in DENSE], sparse)

    def train_files(self) -> frozenset[int] | None:
        """Terabyte: every day but the last is train. Kaggle's days are cut from the row count."""
        return frozenset(range(len(self.files) - 1)) if self.kind == "criteo-terabyte" else None

    def splits(self, file_rows: list[int]) -> dict[str, tuple[int, int]]:
        if sum(file_rows) == 0:
            raise DataError(self.files[0], None, None, "no rows")
        ranges, start = {}, 0
        for split, rows in _split_rows(self.kind, file_rows).items():  # in file order: train, test, valid
            ranges[split] = (start, start + rows)
            start += rows
        return ranges

    def estimated_rows(self, unit: Unit) -> int:
        """.gz sizes are scaled by a typical compression ratio of 4."""
        size = (unit.end - unit.start) if unit.end is not None else 4 * Path(unit.path).stat().st_size
        return int(size / self.line_bytes)

    def count(self, unit: Unit, report: Callable[[int], None]) -> int:
        return _count_lines(unit, report)

    def fit(self, unit: Unit, limit: int | None, first_row: int | None, encoders: Encoders, report) -> int:
        """Value counts per field over the first `limit` rows (None: all)."""
        seen = 0
        for data in _blocks(unit, self.chunk_bytes):
            chunk = _parse_located(data, seen, dense=False)
            n = chunk.rows if limit is None else min(chunk.rows, limit - seen)
            for j, encoder in enumerate(encoders.sparse):
                encoder.count(chunk.values[j, :n], chunk.present[j, :n])
            seen += chunk.rows
            report(chunk.rows)
            if limit is not None and seen >= limit:
                break
        return seen

    def encode(self, unit: Unit, first_row: int, encoders: Encoders) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        for data in _blocks(unit, self.chunk_bytes):
            chunk = _parse_located(data, seen)
            assert chunk.dense is not None  # parsed with dense=True
            ids = np.empty((chunk.rows, len(SPARSE)), np.int32)
            for j, encoder in enumerate(encoders.sparse):
                ids[:, j] = encoder.ids(chunk.values[j], chunk.present[j])
            seen += chunk.rows
            yield {"label": chunk.label, "dense": chunk.dense, "sparse": ids}

    def meta(self, prepared: Prepared) -> CTRMeta:
        info: dict[str, Any] = {
            "source": self.kind,
            "files": [
                {"name": p.name, "bytes": p.stat().st_size, "rows": r} for p, r in zip(self.files, prepared.file_rows)
            ],
            "split": (
                f"{KAGGLE_DAYS} days of ceil(rows/{KAGGLE_DAYS}) rows; days 0-5 train"
                if self.kind == "criteo-kaggle"
                else f"days 0-{len(self.files) - 2} train"
            )
            + "; last day: first half test, second half valid",
            "dense": "log(1 + max(x, 0)) as float32; missing -> 0",
            "min_frequency": self.min_frequency if self.max_ind_range is None else None,
            "max_ind_range": self.max_ind_range,
            "sparse": (
                "hex value % max_ind_range; missing -> 0"
                if self.max_ind_range is not None
                else "ids 1..V: train values seen >= min_frequency times, in value order; 0: rarer, unseen or missing"
            ),
        }
        if prepared.distinct is not None:
            info["train_distinct_values"] = prepared.distinct
        cardinalities = [encoder.cardinality for encoder in prepared.encoders.sparse]
        return CTRMeta(DENSE, SPARSE, cardinalities, prepared.rows, info)
