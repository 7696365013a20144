"""Mixed precision: autocast for bf16/fp16, with loss scaling for fp16."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without scaling; bf16 and fp32 keep a disabled (no-op) scaler."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def configure_fp32_matmul(device: torch.device) -> None:
    """TF32 tensor cores for fp32 GEMMs on Ampere and later, as NVIDIA's figures use."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
