"""What a bundle keeps beside the model to turn raw requests into model inputs: per kind of task,
the encoding that preparation fitted, written at export and read by the server.

- Click logs (`ClickLogAssets`): the prepared folder's encoders (vocabularies, hash settings,
  numeric transforms) and its meta.json; raw columns named as in the log (Criteo's I1..I13,
  C1..C26, or a feature spec's names) are encoded exactly as preparation encoded its rows.
- Ranking data (`RankingAssets`): the raw user and item ids of the model's indices, titles, and
  each user's training items (excluded from recommendations).

Requests are validated here, so the server answers a bad one with the field it names
(`RequestError`); unseen categorical values take the out-of-vocabulary id, as in training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recforge.core.errors import RecforgeError
from recforge.core.files import write_array, write_json
from recforge.data.ctr_format import CTRMeta, load_meta
from recforge.data.encoders import load_encoders, one_array, parse_hex32


class RequestError(Exception):
    """A request the client must fix: HTTP `status`, the `field` at fault and what is wrong."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


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


def _load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


# ----------------------------------------------------------------------------- click logs


class ClickLogAssets:
    """Raw click-log rows -> the arrays of a prepared split (dense, sparse, multi_hot, crossed)."""

    kind = "ctr"

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
        columns = [{"name": e.name, "type": "number", "missing": "allowed"} for e in self.encoders.dense]
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
        return ["dense", "sparse"] + [
            k for k, used in (("multi_hot", self.meta.multi_hot), ("crossed", self.meta.crossed)) if used
        ]

    def table(self, payload: dict) -> pa.Table:
        """A request's `rows` (objects named by column) or `columns` (name -> values) as an Arrow
        table of the raw inputs (Criteo's hex columns parsed); a missing column, a value of the wrong
        type or a list longer than training's is a RequestError naming it."""
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


# ----------------------------------------------------------------------------- ranking data


class RankingAssets:
    """Raw user ids -> model indices; the items each user trained on; item ids and titles."""

    kind = "ranking"
    model_inputs = ["user", "item"]
    inputs = [{"name": "user", "type": "string"}, {"name": "k", "type": "integer", "missing": "default 10"}]

    def __init__(self, folder: Path):
        self.user_ids = _load_array(folder / "user_ids.npy")
        self.item_ids = _load_array(folder / "item_ids.npy")
        self.seen_offsets = _load_array(folder / "seen_offsets.npy")
        self.seen_items = _load_array(folder / "seen_items.npy")
        titles = folder / "item_titles.npy"
        self.item_titles = _load_array(titles) if titles.exists() else None
        # Raw ids are looked up as text: a JSON request's "196" and 196 are the same user.
        text = self.user_ids.astype(str)
        self._order = np.argsort(text, kind="stable")
        self._sorted = text[self._order]

    @staticmethod
    def write(data, out: Path) -> None:
        """The id maps, titles and training items of a prepared ranking dataset (LeaveOneOutData)."""

        def plain(ids) -> np.ndarray:  # Arrow strings or numpy ints; saved without pickle
            ids = np.asarray(ids.to_numpy(zero_copy_only=False) if hasattr(ids, "to_numpy") else ids)
            return ids.astype(str) if ids.dtype == object else ids

        write_array(out / "user_ids.npy", plain(data.user_ids))
        write_array(out / "item_ids.npy", plain(data.item_ids))
        write_array(out / "seen_offsets.npy", np.asarray(data.user_offsets, np.int64))
        write_array(out / "seen_items.npy", np.asarray(data.train_items, np.int32))
        if data.item_titles is not None:
            write_array(out / "item_titles.npy", plain(data.item_titles).astype(str))

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def user(self, raw) -> int:
        """The model's index of a raw user id; unknown: a RequestError naming `user`."""
        if not isinstance(raw, (str, int)) or isinstance(raw, bool):
            raise RequestError("user", "must be a user id (a string or an integer)")
        key = str(raw)
        at = np.searchsorted(self._sorted, key)
        if at == len(self._sorted) or self._sorted[at] != key:
            raise RequestError("user", f"unknown user {key!r} (not in the training data)")
        return int(self._order[at])

    def seen(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_offsets[user] : self.seen_offsets[user + 1]]

    def top_items(self, scores: np.ndarray, user: int, k: int) -> list[dict]:
        """The k best-scored items the user has not trained on, with ids, scores and titles."""
        scores = scores.astype(np.float64).copy()
        scores[self.seen(user)] = -np.inf
        k = min(k, self.num_items - len(self.seen(user)))
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        items = self.item_ids[top].tolist()
        titles = self.item_titles[top].tolist() if self.item_titles is not None else None
        return [
            {"rank": r + 1, "item": items[r], "score": float(scores[i])}
            | ({"title": titles[r]} if titles is not None else {})
            for r, i in enumerate(top.tolist())
        ]


ASSETS = {"ctr": ClickLogAssets, "ranking": RankingAssets}


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise RecforgeError(f"{folder}: not a recforge bundle (no manifest.json; `recforge export` makes one)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecforgeError(f"{path}: damaged manifest ({e})") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json(folder / "manifest.json", manifest)
