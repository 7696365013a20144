"""Which GEMM library each of a model's linear layers runs on in an fp32 CPU run (see
recforge.runtime.gemm): measured or cached per shape by rank 0, the same for every rank."""

from __future__ import annotations

import math

import torch
import torch.distributed

from recforge.config import TrainConfig
from recforge.models.layers import Linear
from recforge.runtime import gemm
from recforge.runtime.distributed import Dist


def choose_gemms(model: torch.nn.Module, t: TrainConfig, precision: str, device: torch.device, dist: Dist, log):
    """Set each `Linear`'s backend; what was chosen, by layer shape, for summary.json (None where
    no fp32 CPU product runs: GPU, bf16 / fp16 autocast, torch.compile, no linear layer)."""
    linears = [m for m in model.modules() if isinstance(m, Linear) and m.in_features and m.out_features]
    if device.type != "cpu" or precision != "fp32" or t.compile or not linears:
        return None
    rows = min(math.ceil(t.batch_size / dist.world), gemm.CALIBRATION_ROWS)
    shape_of = {m: gemm.Shape(rows, m.in_features, m.out_features) for m in linears}
    shapes = sorted(set(shape_of.values()), key=lambda s: (s.inputs, s.outputs))
    found = [gemm.choose(shapes, t.gemm) if dist.is_main else None]
    if dist.enabled:  # one rank's measurement: every rank computes alike
        torch.distributed.broadcast_object_list(found, src=0)
    chosen = found[0]
    for m, shape in shape_of.items():
        m.backend = chosen[shape].backend
    if t.gemm != "auto":
        how = f"--gemm {t.gemm}"
    else:
        measured = any(c.source == "measured" for c in chosen.values())
        how = f"{'measured now' if measured else 'measured before'}, cached in {gemm.cache_folder()}"
    log(
        f"fp32 GEMMs at {rows:,} rows ({how}): "
        + ", ".join(
            f"{s.inputs}-{s.outputs} {c.backend}" + (f" {c.speedup:.2f}x" if c.seconds else "")
            for s, c in chosen.items()
        )
    )
    return {
        f"{s.inputs}x{s.outputs}": {"backend": c.backend, "seconds": c.seconds, "source": c.source}
        for s, c in chosen.items()
    }
