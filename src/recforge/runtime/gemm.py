"""fp32 GEMM kernels on the CPU, chosen per layer shape by a short measurement on this machine.

Two libraries can run a linear layer's fp32 products: torch's own matmul (MKL's sgemm in x86
builds) and oneDNN. Which is faster depends on the CPU and the shape, and not in a way a vendor
name predicts: MKL runs its AVX2 code on AMD processors even where they have AVX-512, where oneDNN
was 2.2x faster on the DLRM shapes (AMD EPYC, 2026-11-22); on Intel CPUs both use AVX-512 and
differ by shape. So a run times both on each of its layer shapes (forward and both backward
products, at its batch's rows) and takes the faster. A result is cached per CPU model, CPU flags,
torch version and thread count (one small JSON file per shape), so a machine measures a shape once
and every later run, rank and resume there uses the same kernels. `--gemm onednn|torch` skips
the measurement.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from recforge.runtime.precision import cpu_flags, cpu_info

BACKENDS = ("onednn", "torch")
CALIBRATION_ROWS = 4096  # larger batches run the same kernels; timing them would cost seconds
INFERENCE_ROWS = (1, 16, 256, CALIBRATION_ROWS)  # batch sizes a server's layers are measured at
REPEATS = 7  # each backend, alternating, after one warm-up; the median counts
BF16 = "bf16"  # the same product under bf16 autocast: timed beside fp32's to choose `--precision auto`


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """x @ weight.T + bias in fp32 through oneDNN, forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _onednn_linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:  # oneDNN copies a transposed input: transpose the narrower one
            if x.shape[1] < grad.shape[1]:
                grad_weight = _onednn_linear(x.t(), grad.t(), None).t()
            else:
                grad_weight = _onednn_linear(grad.t(), x.t(), None)
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the product is an fp32 CPU one oneDNN can run (elsewhere: GPU, autocast, compile)."""
    # Multi-process CPU runs use it too: their heap corruption came from torch's gloo worker
    # threads (see recforge.runtime.distributed), with or without oneDNN.
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] > 0
        and weight.numel() > 0  # oneDNN has no empty products
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and torch.backends.mkldnn.is_available()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """x @ weight.T + bias on `backend` where oneDNN applies, else torch's."""
    if backend == "onednn" and onednn_applies(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


@dataclass(frozen=True)
class Shape:
    """A linear layer's products: rows x inputs times inputs x outputs, and their two gradients."""

    rows: int
    inputs: int
    outputs: int
    forward_only: bool = False  # inference: the forward product alone

    def __str__(self) -> str:
        return f"{self.rows}x{self.inputs}x{self.outputs}" + ("-forward" if self.forward_only else "")


@dataclass(frozen=True)
class Choice:
    backend: str
    seconds: dict[str, float]  # each backend's median forward + backward; empty when not measured
    source: str  # "measured", "cached" or "--gemm"

    @property
    def speedup(self) -> float:
        """The chosen backend's speed over the other's (1.0 when not measured)."""
        if not self.seconds:
            return 1.0
        return max(self.seconds.values()) / self.seconds[self.backend]


def _forward(kernel: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if kernel == BF16:  # a new autocast region each time: a bf16 run casts its fp32 weights every step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.linear(x, weight, bias)
    return linear(x, weight, bias, kernel)


def time_shape(shape: Shape, repeats: int = REPEATS, kernels: tuple[str, ...] = BACKENDS) -> dict[str, float]:
    """Median seconds of one forward + backward (or forward) of each kernel on random fp32 data of `shape`."""
    generator = torch.Generator().manual_seed(0)
    training = not shape.forward_only
    x = torch.randn(shape.rows, shape.inputs, generator=generator).requires_grad_(training)
    weight = torch.randn(shape.outputs, shape.inputs, generator=generator).requires_grad_(training)
    bias = torch.zeros(shape.outputs, requires_grad=training)
    grad = torch.randn(shape.rows, shape.outputs, generator=generator)
    times: dict[str, list[float]] = {kernel: [] for kernel in kernels}
    for attempt in range(repeats + 1):
        for kernel in kernels:  # alternating, so a slow moment of the machine hits all
            start = time.perf_counter()
            y = _forward(kernel, x, weight, bias)
            if training:
                y.backward(grad.to(y.dtype))
            if attempt:  # the first is warm-up (oneDNN builds its kernel then)
                times[kernel].append(time.perf_counter() - start)
            x.grad = weight.grad = bias.grad = None
    return {kernel: statistics.median(seconds) for kernel, seconds in times.items()}


# The libraries' own caps on the instruction sets they use: a capped run is another machine.
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine_key() -> str:
    """What decides the kernels' speed: CPU model and flags, the instruction sets the libraries
    may use, torch version, threads per process."""
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:8]
    caps = "".join(f"|{name}-{os.environ[name]}" for name in ISA_CAPS if os.environ.get(name))
    return (
        f"{_cpu_model()}|flags-{flags}|aten-{torch.backends.cpu.get_cpu_capability()}{caps}"
        f"|torch-{torch.__version__}|threads-{torch.get_num_threads()}"
    )


def _cpu_model() -> str:
    return cpu_info("model name") or platform.processor() or platform.machine()


def cache_folder() -> Path:
    """$RECFORGE_CACHE_DIR, else $XDG_CACHE_HOME/recforge, else ~/.cache/recforge; then gemm/<machine>."""
    root = os.environ.get("RECFORGE_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "recforge"
    )
    key = machine_key()
    readable = "".join(c if c.isalnum() or c in ".-" else "-" for c in key.split("|")[0])[:40].strip("-")
    return Path(root, "gemm", f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


def _read(path: Path, kernels: tuple[str, ...]) -> dict[str, float] | None:
    try:
        seconds = json.loads(path.read_text())["seconds"]
        return seconds if set(seconds) == set(kernels) and all(v > 0 for v in seconds.values()) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_first(path: Path, shape: Shape, seconds: dict[str, float]) -> dict[str, float]:
    """Store `seconds` unless another process stored this shape first; return what is stored.

    Not through recforge.core.files: a cache is not the run's state, its writes are no kill-test
    fault points, and a cache that cannot be written only means measuring again next time.
    """
    record = {"machine": machine_key(), "shape": str(shape), "seconds": seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", delete=False) as f:
            json.dump(record, f)
        try:
            os.link(f.name, path)  # fails if the file exists: the first measurement stays
        except FileExistsError:
            if _read(path, tuple(seconds)) is None:  # unreadable: replace it
                os.replace(f.name, path)
        finally:
            if os.path.exists(f.name):
                os.unlink(f.name)
    except OSError:
        return seconds
    return _read(path, tuple(seconds)) or seconds


def _measured(shape: Shape, kernels: tuple[str, ...], suffix: str = "") -> tuple[dict[str, float], str]:
    """Each kernel's seconds on `shape` as cached for this machine, measured now where missing."""
    path = cache_folder() / f"{shape}{suffix}.json"
    seconds = _read(path, kernels)
    if seconds is not None:
        return seconds, "cached"
    return _write_first(path, shape, time_shape(shape, kernels=kernels)), "measured"


def inference_backends(inputs: int, outputs: int) -> tuple[tuple[float, str], ...]:
    """For a layer that infers on batches of any size (a server's): (most rows, backend) for each
    of INFERENCE_ROWS, the faster forward product measured there (cached). A batch takes the choice
    of the nearest measured size, on a log scale. On an AVX2 EPYC torch's was 2.4x faster at one
    row and oneDNN's 1.3x at 8,192: one backend for all sizes loses at one end."""
    shapes = [Shape(rows, inputs, outputs, forward_only=True) for rows in INFERENCE_ROWS]
    chosen = choose(shapes)
    bounds = [math.sqrt(a * b) for a, b in zip(INFERENCE_ROWS, INFERENCE_ROWS[1:])] + [math.inf]
    return tuple((bound, chosen[shape].backend) for bound, shape in zip(bounds, shapes))


def choose(shapes: list[Shape], requested: str = "auto") -> dict[Shape, Choice]:
    """The backend of each shape: `requested` if it names one, else the faster measured here."""
    if requested != "auto":
        return {shape: Choice(requested, {}, "--gemm") for shape in shapes}
    chosen = {}
    for shape in shapes:
        seconds, source = _measured(shape, BACKENDS)
        chosen[shape] = Choice(min(BACKENDS, key=seconds.__getitem__), seconds, source)
    return chosen


def bf16_speedup(shapes: list[Shape], backend: str = "auto") -> float:
    """fp32's seconds over bf16 autocast's for one training step's products of `shapes` (> 1: bf16
    is faster), with fp32 on `backend` (auto: the faster library per shape).

    Native bf16 instructions do not make every model faster in bf16: autocast casts the inputs and
    weights of every product, which small layers do not earn back (NeuMF's 64-32-16 tower trained
    1.1-1.25x slower in bf16 on an AMD EPYC with avx512_bf16, 2026-12-03), while DLRM's wide layers
    compute 2x faster. Timed together, alternating, and cached as the fp32 choices are.
    """
    fp32 = bf16 = 0.0
    for shape in shapes:
        seconds = _measured(shape, (*BACKENDS, BF16), suffix="-" + BF16)[0]
        fp32 += min(seconds[b] for b in BACKENDS) if backend == "auto" else seconds[backend]
        bf16 += seconds[BF16]
    return fp32 / bf16
