"""Offline preparation (ETL): raw click logs -> prepared folders (`recforge.data.ctr_format`) that
training memory-maps. Above `data/` in the layers, beside `tasks/`: training reads what was
prepared and never runs a preparation.

    click_logs.py     the names `recforge prepare` takes -> their preparers
    ctr_spec.py       any CSV / Parquet log a YAML feature spec (specs/) describes
    criteo/           Criteo Kaggle / Terabyte day files (its own parser and split rules)
    outbrain/         the Kaggle Outbrain CSVs joined into one table, then ctr_spec
    synthetic_*.py    click logs with a planted signal (tests, benchmarks, demos)
    journal.py        resumable passes: what an interrupted preparation finished
    workers.py        the process pool the passes run in
"""
