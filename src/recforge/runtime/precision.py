"""Mixed precision: autocast for bf16/fp16, with loss scaling for fp16; `auto` chooses by what the
hardware computes natively.

bf16 pays off only where the hardware has bf16 arithmetic: on a CPU without it (AVX2, or
AVX-512 without avx512_bf16), autocast's bf16 GEMMs are emulated, and W1 trained 15x slower than
in fp32 (2026-12-01). `auto` is bf16 on CPUs with avx512_bf16 or AMX where the model's layers
measure faster in it (the training loop times them: small layers are not), and on GPUs of compute
capability 8.0 or later (Ampere on); fp16 with loss scaling on GPUs of capability 7.x (Volta,
Turing), whose tensor cores compute fp16 but not bf16; else fp32.
"""

from __future__ import annotations

import contextlib
import functools

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names
EMULATED_BF16_COST = "W1 trained 15x slower in bf16 than in fp32 on such a CPU (AVX2, 2026-12-01)"


@functools.cache
def cpu_info(field: str) -> str:
    """The first value of `field` in Linux's /proc/cpuinfo ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return frozenset(cpu_info("flags").split())


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and the evidence."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"GPU compute capability {major}.{minor} ({'>=' if major >= 8 else '<'} 8.0)"
    found = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    return bool(found), (f"CPU flags {', '.join(found)}" if found else f"no {' or '.join(NATIVE_BF16_FLAGS)} CPU flag")


def resolve(device: torch.device, precision: str, bf16_speedup: float | None = None) -> tuple[str, str]:
    """(the precision a run computes in, why): `auto` by native support and, where given, the
    model's products measured in bf16 against fp32 (`bf16_speedup` > 1: bf16 faster); others as given."""
    if precision != "auto":
        return precision, "--precision " + precision
    native, evidence = native_bf16(device)
    if native and bf16_speedup is not None:
        faster = bf16_speedup > 1
        return ("bf16" if faster else "fp32"), (
            f"auto: {evidence}; this model's layers measured {max(bf16_speedup, 1 / bf16_speedup):.2f}x "
            f"{'faster' if faster else 'slower'} in bf16"
        )
    if native:
        return "bf16", f"auto: {evidence}"
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 7:
        return "fp16", f"auto: {evidence}, fp16 tensor cores (>= 7.0)"
    return "fp32", f"auto: {evidence}"


def warning(device: torch.device, precision: str) -> str | None:
    """What to tell a user who asked for bf16 where it is emulated."""
    if precision != "bf16" or device.type != "cpu":
        return None
    native, evidence = native_bf16(device)
    if native:
        return None
    return (
        f"warning: --precision bf16 on a CPU without native bf16 ({evidence}): {EMULATED_BF16_COST}; "
        "--precision auto or fp32 trains in fp32 here"
    )


def autocast(device: torch.device, precision: str):
    precision = resolve(device, precision)[0]
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without scaling; bf16 and fp32 keep a disabled (no-op) scaler."""
    return torch.amp.GradScaler(device.type, enabled=resolve(device, precision)[0] == "fp16")


def configure_fp32_matmul(device: torch.device) -> None:
    """TF32 tensor cores for fp32 GEMMs on Ampere and later, as NVIDIA's figures use."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
