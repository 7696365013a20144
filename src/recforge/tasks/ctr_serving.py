"""A click-log model's serving assets: the prepared folder's encoders (vocabularies, hash settings,
numeric transforms) and its meta.json, copied into the bundle at export. Raw columns named as in
the log (Criteo's I1..I13, C1..C26, or a feature spec's names) are encoded exactly as preparation
encoded its rows; unseen categorical values take the out-of-vocabulary id, as in training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recforge.data.ctr_format import CTRMeta, load_meta
from recforge.data.encoders import load_encoders, one_array, parse_hex32
from recforge.tasks.serving import Request, RequestError, RowScoringAssets


def _arrow_fits(arrow_type: pa.DataType, kind: str) -> bool:
    """Whether values Arrow inferred as `arrow_type` are what a column of `kind` takes."""
    t = pa.types
    if t.is_null(arrow_type):
        return True
    if kind == "number":
        return t.is_integer(arrow_type) or t.is_floating(arrow_type)
    if kind == "list":
        value = getattr(arrow_type, "value_type", None)
        return t.is_string(arrow_type) or (
            t.is_list(arrow_type) and (t.is_string(value) or t.is_integer(value) or t.is_null(value))
        )
    return t.is_string(arrow_type) or (kind == "string" and t.is_integer(arrow_type))


def model_inputs(meta: CTRMeta) -> list[str]:
    """The arrays a click-log model takes, in order: those the prepared layout has."""
    return ["dense", "sparse"] + [k for k, used in (("multi_hot", meta.multi_hot), ("crossed", meta.crossed)) if used]


class ClickLogAssets(RowScoringAssets):
    """Raw click-log rows -> the arrays of a prepared split (dense, sparse, multi_hot, crossed)."""

    what_it_does = "this bundle's model scores click-log rows"

    def __init__(self, folder: Path):
        self.meta: CTRMeta = load_meta(folder)
        self.encoders = load_encoders(folder)
        self.inputs = self._schema()

    @staticmethod
    def write(prepared: Path, out: Path) -> None:
        """Copy what encodes raw rows (meta.json, encoders.json, encoders/) into the bundle."""
        for name in ("meta.json", "encoders.json"):
            shutil.copyfile(prepared / name, out / name)
        if (prepared / "encoders").is_dir():
            shutil.copytree(prepared / "encoders", out / "encoders")

    def _schema(self) -> list[dict]:
        """The raw columns a request names: numeric, categorical (Criteo's 8 hex digits or text)
        and lists; a cross's columns are categorical inputs too."""
        columns: list[dict[str, str | int | None]] = [
            {"name": e.name, "type": "number", "missing": "allowed"} for e in self.encoders.dense
        ]
        columns += [
            {"name": e.name, "type": "hex32" if e.values == "uint32" else "string", "missing": "allowed"}
            for e in self.encoders.sparse
        ]
        columns += [
            {"name": m.name, "type": "list", "max_length": m.max_length, "delimiter": m.delimiter}
            for m in self.encoders.multi_hot
        ]
        named = {c["name"] for c in columns}
        for cross in self.encoders.crossed:
            columns += [{"name": n, "type": "string", "missing": "allowed"} for n in cross.columns if n not in named]
            named |= set(cross.columns)
        return columns

    @property
    def model_inputs(self) -> list[str]:
        return model_inputs(self.meta)

    def recommend_request(self, payload: dict, k: int) -> Request:
        """A context (the request's columns) and candidate rows (each item's): the candidates
        ranked by probability."""
        context, candidates = payload.get("context", {}), payload.get("candidates")
        if not isinstance(context, dict):
            raise RequestError("context", "must be an object of the request's columns")
        if not isinstance(candidates, list) or not candidates or not all(isinstance(c, dict) for c in candidates):
            raise RequestError("candidates", "must be a non-empty list of objects (each candidate item's columns)")
        table = self.table({"rows": [context | c for c in candidates]})

        def ranked(probabilities: np.ndarray) -> dict:
            order = np.argsort(-probabilities, kind="stable")[:k]
            return {
                "ranked": [
                    {"rank": r + 1, "candidate": int(i), "probability": float(probabilities[i])}
                    for r, i in enumerate(order.tolist())
                ]
            }

        return Request(rows=table.num_rows, payload=table, answer=ranked)

    def table(self, payload: dict) -> pa.Table:
        """Criteo's hex columns parsed; a list longer than training's is refused too."""
        if "columns" in payload:
            columns = payload["columns"]
            if not isinstance(columns, dict):
                raise RequestError("columns", "must be an object of column name -> list of values")
            lengths = {len(v) if isinstance(v, (list, pa.Array, pa.ChunkedArray)) else -1 for v in columns.values()}
            if lengths == {0}:
                raise RequestError("columns", "no rows")
            if -1 in lengths or len(lengths) > 1:
                raise RequestError("columns", "every column must be a list, all of the same length")
            missing = [c["name"] for c in self.inputs if c["name"] not in columns]
            if missing:
                raise RequestError(f"columns.{missing[0]}", "missing column")
            return self._checked(
                {c["name"]: self._column(columns[c["name"]], c, "columns") for c in self.inputs}, "columns"
            )
        rows = payload.get("rows")
        if not isinstance(rows, list) or not rows:
            raise RequestError("rows", "must be a non-empty list of objects (or give `columns`)")
        names = [c["name"] for c in self.inputs]
        needed = set(names)
        for i, row in enumerate(rows):  # the check is a C-level subset test per row
            if not isinstance(row, dict) or not needed <= row.keys():
                absent = sorted(needed - row.keys(), key=names.index) if isinstance(row, dict) else ["(an object)"]
                raise RequestError(f"rows[{i}].{absent[0]}", "missing column")
        try:  # every column's type inferred in one C pass; a column of mixed types: per column below
            inferred = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            inferred = None
        return self._checked(
            {
                c["name"]: self._column(
                    inferred.column(c["name"]) if inferred is not None else [r[c["name"]] for r in rows], c, "rows"
                )
                for c in self.inputs
            },
            "rows",
        )

    def _checked(self, columns: dict[str, pa.Array], where: str) -> pa.Table:
        """The table, once Criteo's hex columns are checked and parsed (uint32, null where missing),
        all in one pass: per column, the fixed costs of the check were a quarter of a served one-row
        request, and the model's thread need not parse them again."""
        hexed = [c["name"] for c in self.inputs if c["type"] == "hex32"]
        if hexed:
            values, present, good = parse_hex32(pa.concat_arrays([columns[n] for n in hexed]))
            rows = len(columns[hexed[0]])
            if not good.all():
                column, row = divmod(int(np.flatnonzero(~good)[0]), rows)
                name = hexed[column]
                field = f"rows[{row}].{name}" if where == "rows" else f"columns.{name}[{row}]"
                raise RequestError(field, "must be 8 hex digits (a Criteo categorical value) or empty")
            parsed = pa.array(values, mask=~present)  # one array, sliced per column without a copy
            for k, name in enumerate(hexed):
                columns[name] = parsed.slice(k * rows, rows)
        return pa.table(columns)

    @staticmethod
    def _column(values: list, column: dict, where: str) -> pa.Array:
        name, kind = column["name"], column["type"]

        def bad(message: str, index: int) -> RequestError:
            return RequestError(f"rows[{index}].{name}" if where == "rows" else f"columns.{name}[{index}]", message)

        expected = {"number": (int, float), "list": (list, str), "hex32": (str,), "string": (str, int)}[kind]
        if isinstance(values, pa.ChunkedArray):  # a file's (recforge predict) or an Arrow body's
            values = one_array(values)
        if isinstance(values, pa.Array):
            array = values
        else:
            try:
                array = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                array = None
        if array is None or not _arrow_fits(array.type, kind):
            # The slow pass, for the error only: the first value of another type.
            values = values.to_pylist() if array is not None and not isinstance(values, list) else values
            i = next(
                (
                    i
                    for i, v in enumerate(values)
                    if v is not None and (isinstance(v, bool) or not isinstance(v, expected))
                ),
                0,  # the values are lists of the wrong type
            )
            what = {"number": "a number", "list": "a list", "hex32": "a string", "string": "a string or an integer"}
            raise bad(f"must be {what[kind]} or null, got {json.dumps(values[i])[:40]}", i)
        if kind == "number":
            return array if array.type == pa.float64() else array.cast(pa.float64())
        if kind == "list":
            if not pa.types.is_list(array.type):
                return array.cast(pa.string())  # already delimited text
            lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy()
            if (lengths > column["max_length"]).any():
                i = int(np.flatnonzero(lengths > column["max_length"])[0])
                raise bad(f"a list of {lengths[i]} values, longer than training's {column['max_length']}", i)
            text = pa.ListArray.from_arrays(array.offsets, array.values.cast(pa.string()), mask=array.is_null())
            return pc.binary_join(text, column["delimiter"])
        # hex32: checked and parsed with the others (`_checked`)
        return array if array.type == pa.string() else array.cast(pa.string())

    def encode(self, table: pa.Table) -> dict[str, np.ndarray]:
        return self.encoders.encode(table)
