"""Building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import nn


def dropout_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bernoulli(p) drop mask from 16-bit random lanes (p resolved to 1/65536).

    `bernoulli_` draws one random number per element; slicing 64-bit draws into four 16-bit
    lanes needs a quarter of the generator calls (5x faster on CPU, the largest cost of a
    dropout MLP step there).
    """
    count = shape.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device)
    lanes = words.view(torch.int16)[:count].view(shape)
    return lanes < round(p * 65536) - 32768


class _ReLUDropout(torch.autograd.Function):
    """relu(x) with dropout in one autograd node; only the output is saved for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        y = x.masked_fill(dropout_mask(x.shape, p, x.device), 0.0).clamp_(min=0.0).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(y)
        ctx.scale = 1.0 / (1.0 - p)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        # y > 0 exactly where x > 0 and the unit was kept.
        return torch.ops.aten.threshold_backward(grad, y, 0.0).mul_(ctx.scale), None


class ReLUDropout(nn.Module):
    """ReLU followed by inverted dropout (a no-op in eval mode)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            return _ReLUDropout.apply(x, self.p)
        return torch.relu(x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... each followed by ReLU (and dropout if > 0).

    Weights start Glorot-uniform, biases at zero, as NCF and DLRM initialise their towers.
    """
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if last_activation or i < len(sizes) - 2:
            layers.append(ReLUDropout(dropout))
    return nn.Sequential(*layers)


def lecun_uniform_(weight: torch.Tensor) -> torch.Tensor:
    bound = (3.0 / weight.shape[1]) ** 0.5
    return nn.init.uniform_(weight, -bound, bound)
