"""Building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import nn


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
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def lecun_uniform_(weight: torch.Tensor) -> torch.Tensor:
    bound = (3.0 / weight.shape[1]) ** 0.5
    return nn.init.uniform_(weight, -bound, bound)
