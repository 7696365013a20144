"""A seeded, Criteo-shaped click log with a planted signal, written in the prepared format.

Every row's true click probability is known, so the best achievable AUC (the Bayes AUC: ranking
rows by their true probability) is computed on the evaluation splits and stored in meta.json.
The logit adds up numeric terms, per-value effects of half of the categorical fields and one
pairwise interaction (fields 0 x 1), which a model without feature interactions cannot learn.
Values follow Zipf laws as Criteo's do; numeric features are heavy-tailed counts, some missing.

The raw values go through the click-log encoders as Criteo's do, and the encoders are saved with
the arrays: counts through log1p (missing -> 0), each field's raw uint32 value (1..cardinality-1,
as Criteo's hex would decode) through the modulo encoder with the field's cardinality, which keeps
it as its id. So `load_encoders(folder).encode(rows)` accepts Criteo-format raw rows (hex strings,
counts) for a model trained on this log.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from recforge.data.ctr_format import CTRMeta, allocate, finish, new_folder
from recforge.data.encoders import Categorical, Encoders, Numeric
from recforge.metrics.classification import auc

KAGGLE_CARDINALITIES = [
    1460,
    583,
    100000,
    100000,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    100000,
    3194,
    27,
    14992,
    100000,
    10,
    5652,
    2173,
    4,
    100000,
    18,
    15,
    100000,
    105,
    100000,
]
NUM_DENSE = 13


def _zipf_values(rng: np.random.Generator, cardinality: int, size: int, exponent: float) -> np.ndarray:
    """Raw values 1..cardinality-1 with Zipf-like frequencies (0 is kept for missing/out of vocabulary)."""
    weights = 1.0 / np.arange(1, cardinality) ** exponent
    cdf = np.cumsum(weights) / weights.sum()
    return (np.searchsorted(cdf, rng.random(size)) + 1).astype(np.uint32)


def generate_ctr(
    out: str | Path,
    rows: int = 2_000_000,
    seed: int = 0,
    cardinalities: list[int] | None = None,
    positive_rate: float = 0.25,
    chunk_rows: int = 1 << 20,
    log=print,
    overwrite: bool = False,
) -> CTRMeta:
    """Write `rows` rows split 6/7 train, 1/14 valid, 1/14 test (Criteo Kaggle's day split)."""
    cardinalities = list(cardinalities or KAGGLE_CARDINALITIES)
    fields = len(cardinalities)
    rng = np.random.default_rng(seed)
    dense_weights = rng.normal(0.0, 0.35, NUM_DENSE)
    effect_fields = np.arange(0, fields, 2)  # half of the fields carry per-value effects
    effects = {f: rng.normal(0.0, 0.8, cardinalities[f]).astype(np.float32) for f in effect_fields}
    pair_effect = rng.normal(0.0, 1.0, (64, 64)).astype(np.float32)  # fields 0 x 1, by id mod 64
    missing_rate = rng.uniform(0.0, 0.45, NUM_DENSE)
    scale = rng.uniform(0.5, 3.0, NUM_DENSE)
    dense_names, sparse_names = [f"I{i + 1}" for i in range(NUM_DENSE)], [f"C{i + 1}" for i in range(fields)]
    encoders = Encoders(
        dense=[Numeric(name, "log1p") for name in dense_names],
        sparse=[Categorical(name, "modulo", "uint32", buckets=c) for name, c in zip(sparse_names, cardinalities)],
    )

    train = rows * 6 // 7
    valid = (rows - train) // 2
    sizes = {"train": train, "valid": valid, "test": rows - train - valid}
    start = time.perf_counter()
    with new_folder(out, overwrite) as tmp:
        logits_by_split: dict[str, list[np.ndarray]] = {"valid": [], "test": []}
        labels_by_split: dict[str, list[np.ndarray]] = {"valid": [], "test": []}
        bias = None
        for split, size in sizes.items():
            arrays = allocate(tmp, split, size, NUM_DENSE, fields)
            for lo in range(0, size, chunk_rows):
                n = min(chunk_rows, size - lo)
                counts = np.floor(rng.lognormal(0.0, scale, (n, NUM_DENSE)))
                counts[rng.random((n, NUM_DENSE)) < missing_rate] = np.nan
                dense = np.stack([e.apply(counts[:, j]) for j, e in enumerate(encoders.dense)], axis=1)
                dense = dense.astype(np.float32)
                sparse = np.stack(
                    [
                        e.ids(_zipf_values(rng, e.cardinality, n, 1.05 if e.cardinality > 1000 else 0.8))
                        for e in encoders.sparse
                    ],
                    axis=1,
                )
                logit = (dense - dense.mean(axis=0)) @ dense_weights
                for f in effect_fields:
                    logit += effects[f][sparse[:, f]]
                logit += pair_effect[sparse[:, 0] % 64, sparse[:, 1] % 64]
                if bias is None:  # calibrate once, on the first chunk, to the target positive rate
                    bias = -float(np.quantile(logit, 1 - positive_rate))
                logit = logit + bias
                label = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
                arrays["label"][lo : lo + n] = label
                arrays["dense"][lo : lo + n] = dense
                arrays["sparse"][lo : lo + n] = sparse
                if split in logits_by_split:
                    logits_by_split[split].append(logit)
                    labels_by_split[split].append(label)
            for array in arrays.values():
                array.flush()
        bayes = {
            split: auc(
                torch.from_numpy(np.concatenate(logits_by_split[split])),
                torch.from_numpy(np.concatenate(labels_by_split[split])),
            )
            for split in logits_by_split
            if sizes[split]
        }
        encoders.save(tmp)
        meta = CTRMeta(
            dense_names=dense_names,
            sparse_names=sparse_names,
            cardinalities=cardinalities,
            rows=sizes,
            info={"source": "synthetic", "seed": seed, "bayes_auc": bayes, "seconds": time.perf_counter() - start},
        )
        finish(tmp, meta)
    log(
        f"synthetic click log: {rows:,} rows -> {out} (Bayes AUC valid {bayes.get('valid', float('nan')):.4f}) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return meta
