"""What a CPU run's linear layers compute in and on (see recforge.runtime.gemm): `--precision
auto` where bf16 is native, and the GEMM library of each layer in fp32; measured or cached per
shape by rank 0, the same for every rank."""

from __future__ import annotations

import math

import torch
import torch.distributed

from recforge.config import TrainConfig
from recforge.models.layers import Linear
from recforge.runtime import gemm
from recforge.runtime.distributed import Dist
from recforge.runtime.precision import native_bf16, resolve


def _shapes(model: torch.nn.Module, t: TrainConfig, dist: Dist) -> dict[Linear, gemm.Shape]:
    """Each linear layer's products in one step of this rank's batch rows."""
    rows = min(math.ceil(t.batch_size / dist.world), gemm.CALIBRATION_ROWS)
    linears = [m for m in model.modules() if isinstance(m, Linear) and m.in_features and m.out_features]
    return {m: gemm.Shape(rows, m.in_features, m.out_features) for m in linears}


def _distinct(shape_of: dict[Linear, gemm.Shape]) -> list[gemm.Shape]:
    """The layers' shapes, each once, narrowest first (the order they are measured and printed in)."""
    return sorted(set(shape_of.values()), key=lambda s: (s.inputs, s.outputs))


def _on_rank0(measure, dist: Dist):
    """`measure()` on rank 0, its result on every rank: one rank's measurement, every rank computes alike."""
    found = [measure() if dist.is_main else None]
    if dist.enabled:
        torch.distributed.broadcast_object_list(found, src=0)
    return found[0]


def choose_precision(model: torch.nn.Module, t: TrainConfig, device: torch.device, dist: Dist) -> tuple[str, str]:
    """(precision, why): `--precision auto` on a CPU with native bf16 is bf16 only where this
    model's linear layers measure faster in it (recforge.runtime.gemm.bf16_speedup); elsewhere
    the flag rule of recforge.runtime.precision.resolve. torch.compile fuses the casts a
    measurement of eager products would count, so a compiled run keeps the flag rule."""
    if t.precision != "auto" or device.type != "cpu" or t.compile or not native_bf16(device)[0]:
        return resolve(device, t.precision)
    shapes = _distinct(_shapes(model, t, dist))
    speedup = _on_rank0(lambda: gemm.bf16_speedup(shapes, t.gemm), dist) if shapes else None
    return resolve(device, t.precision, speedup)


def choose_gemms(model: torch.nn.Module, t: TrainConfig, precision: str, device: torch.device, dist: Dist, log):
    """Set each `Linear`'s backend; what was chosen, by layer shape, for summary.json (None where
    no fp32 CPU product runs: GPU, bf16 / fp16 autocast, torch.compile, no linear layer)."""
    shape_of = _shapes(model, t, dist)
    if device.type != "cpu" or precision != "fp32" or t.compile or not shape_of:
        return None
    shapes = _distinct(shape_of)
    rows = shapes[0].rows
    chosen = _on_rank0(lambda: gemm.choose(shapes, t.gemm), dist)
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
