"""Names -> the click logs that `recforge prepare NAME ... --out FOLDER` writes as a prepared
folder, each from DataConfig's settings. A new one is a preparer module and one line in `CLICK_LOGS`."""

from __future__ import annotations

import os
from pathlib import Path

from recforge.core.errors import RecforgeError
from recforge.core.files import naming, remove, temp_folder
from recforge.prepare import criteo, ctr_spec, outbrain, synthetic_ctr, synthetic_outbrain


def _required(value, flag: str):
    if value is None:
        raise RecforgeError(f"recforge prepare needs {flag}")
    return value


def _workers(cfg) -> int:
    return len(os.sched_getaffinity(0)) if cfg.workers == "auto" else cfg.workers


def _criteo(cfg, log):
    data_dir = _required(cfg.data_dir, "--data-dir (the raw train.txt or day_N files)")
    return criteo.prepare_criteo(
        cfg.dataset,
        Path(data_dir).expanduser(),
        Path(cfg.out).expanduser(),
        cfg.min_frequency,
        cfg.max_ind_range,
        _workers(cfg),
        log=log,
        overwrite=cfg.overwrite,
    )


def _outbrain(cfg, log):
    return outbrain.prepare_outbrain(
        _required(cfg.data_dir, "--data-dir (the Kaggle Outbrain CSVs)"),
        cfg.out,
        valid_fraction=cfg.valid_fraction,
        seed=cfg.synthetic_seed,
        overwrite=cfg.overwrite,
        log=log,
    )


def _outbrain_synthetic(cfg, log):
    """Kaggle-format CSVs of a synthetic Outbrain world, written beside --out, then prepared."""
    out = Path(cfg.out).expanduser()
    raw = temp_folder(out)
    try:
        with naming(out, inside=raw):  # a full disk is reported as one about --out
            info = synthetic_outbrain.write_outbrain_csvs(raw, displays=cfg.synthetic_displays, seed=cfg.synthetic_seed)
        log(f"outbrain-synthetic: {cfg.synthetic_displays:,} displays; best achievable MAP@12 {info['best_map12']:.4f}")
        return outbrain.prepare_outbrain(
            raw, out, valid_fraction=cfg.valid_fraction, seed=cfg.synthetic_seed, overwrite=cfg.overwrite, log=log
        )
    finally:
        remove(raw)


# Each writes the prepared folder at cfg.out from DataConfig.
CLICK_LOGS = {
    "criteo-kaggle": _criteo,
    "criteo-terabyte": _criteo,
    "ctr": lambda cfg, log: ctr_spec.prepare_ctr(
        _required(cfg.feature_spec, "--feature-spec SPEC.yaml"),
        _required(cfg.data_dir, "--data-dir"),
        cfg.out,
        log,
        cfg.overwrite,
        workers=_workers(cfg),
    ),
    "criteo-synthetic": lambda cfg, log: synthetic_ctr.generate_ctr(
        cfg.out, rows=cfg.synthetic_rows, seed=cfg.synthetic_seed, log=log, overwrite=cfg.overwrite
    ),
    "outbrain": _outbrain,
    "outbrain-synthetic": _outbrain_synthetic,
}
