"""`prepare ctr` in units of work: any number of worker processes gives byte-identical output, units
give the rows one pass over the file gives, and an interrupted preparation continues after its
last finished unit to byte-identical output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from faults import assert_interrupted_preparation_continues, prepared_files

from recforge.data.ctr_format import load_meta, load_split
from recforge.prepare import ctr_spec

SPEC = """label: click
numeric: [price, {name: age, transform: standardize}]
categorical: [user, {name: item, min_frequency: 2}]
multi_hot: [{name: topics, delimiter: "|"}]
crossed: [{name: user_x_item, columns: [user, item], hash_buckets: 50}]
group: display
files: {all: log.FORMAT}
holdout: {valid: 0.2, test: 0.1}
"""


def click_log(folder, rows: int = 3000, form: str = "csv", seed: int = 0):
    """A random click log (CSV, or Parquet in row groups of 500) and its spec, in `folder`."""
    rng = np.random.default_rng(seed)
    topics = ["|".join(f"t{t}" for t in rng.integers(0, 30, rng.integers(0, 4))) for _ in range(rows)]
    table = pa.table(
        {
            "click": rng.integers(0, 2, rows),
            "price": rng.integers(-5, 500, rows).astype(float),
            "age": rng.normal(40, 12, rows).round(1),
            "user": [f"u{u}" for u in rng.integers(0, 200, rows)],
            "item": [f"i{i}" for i in rng.zipf(1.5, rows) % 400],
            "topics": topics,
            "display": np.arange(rows) // 4,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    if form == "csv":
        pcsv.write_csv(table, folder / "log.csv")
    else:
        pq.write_table(table, folder / "log.parquet", row_group_size=500)
    (folder / "spec.yaml").write_text(SPEC.replace("FORMAT", form))
    return folder


def arrays(out) -> dict[str, np.ndarray]:
    meta = load_meta(out)
    return {f"{split}/{k}": np.asarray(v) for split in meta.rows for k, v in load_split(out, split).items()}


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_workers_and_units_give_the_rows_of_one_pass(tmp_path, monkeypatch, form):
    raw = click_log(tmp_path / "raw", form=form)
    quiet = {"log": lambda *_: None}
    ctr_spec.prepare_ctr(raw / "spec.yaml", raw, tmp_path / "whole", **quiet)  # one CSV unit: the file
    monkeypatch.setattr(ctr_spec, "UNIT_BYTES", 20_000)  # CSV: ~8 units; Parquet: its 6 row groups
    for workers in (1, 2):
        ctr_spec.prepare_ctr(raw / "spec.yaml", raw, tmp_path / f"workers-{workers}", workers=workers, **quiet)
    assert prepared_files(tmp_path / "workers-2") == prepared_files(tmp_path / "workers-1")
    report = (tmp_path / "workers-2" / "prepare.json").read_text()
    assert '"processes": 2' in report and '"rows_per_s_per_process"' in report
    whole, units = arrays(tmp_path / "whole"), arrays(tmp_path / "workers-1")
    assert whole.keys() == units.keys() and len(whole["train/label"]) == 2100
    for name in whole:  # standardized values are summed unit by unit: equal to float rounding
        np.testing.assert_allclose(units[name], whole[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("step, finished", [("rows", 3), ("fit", 2), ("write", 5)])
def test_an_interrupted_prepare_ctr_continues_after_its_last_unit(tmp_path, monkeypatch, step, finished):
    raw = click_log(tmp_path / "raw")
    monkeypatch.setattr(ctr_spec, "UNIT_BYTES", 20_000)

    def prepare(out, log):
        ctr_spec.prepare_ctr(raw / "spec.yaml", raw, out, log=log)

    assert_interrupted_preparation_continues(tmp_path, monkeypatch, prepare, step, finished)
