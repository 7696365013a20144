"""Optimizers and learning-rate schedules.

Parameters split in two groups: embedding tables built with sparse gradients (`sparse=True`)
and everything else. Each `--optimizer` names what both groups get, using a sparse-gradient
algorithm for the tables where one exists:

| --optimizer      | dense parameters        | sparse tables                       |
|------------------|-------------------------|-------------------------------------|
| sgd              | SGD                     | SGD (sparse update)                 |
| adagrad          | Adagrad                 | Adagrad (sparse update)             |
| adam             | Adam (fused)            | SparseRowAdam (lazy: rows in batch) |
| rowwise-adagrad  | Adagrad                 | RowWiseAdagrad (one accumulator/row)|

`ftrl+proximal-adagrad` (Wide & Deep's, as the replaced TensorFlow system) splits by model part
instead: FTRL on the model's `linear_part()`, Proximal Adagrad on the rest, each with its own learning rate and
L1/L2 (`--linear-*`, `--deep-*`), dense or sparse gradients alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from recforge.config import TrainConfig
from recforge.core.errors import RecforgeError
from recforge.optim.proximal import Ftrl, ProximalAdagrad
from recforge.optim.row_wise import SGD, RowWiseAdagrad, SparseRowAdam


def sparse_parameters(model: nn.Module) -> set[int]:
    """ids of the tables whose gradients are sparse."""
    return {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse
    }


@dataclass(frozen=True)
class Parameters:
    """Which of a model's parameters the optimizers take: all but `fused` (ids of parameters updated
    inside the backward pass: sharded tables), with `tables` (ids of embedding tables whose gradient
    is dense, TorchRec's data-parallel ones) taking the sparse-table algorithm as well."""

    fused: frozenset[int] = frozenset()
    tables: frozenset[int] = frozenset()

    def of(self, module: nn.Module) -> list:
        return [p for p in module.parameters() if id(p) not in self.fused]

    def split(self, model: nn.Module) -> tuple[list, list]:
        """(dense parameters, embedding tables)."""
        tables = sparse_parameters(model) | self.tables
        params = self.of(model)
        return [p for p in params if id(p) not in tables], [p for p in params if id(p) in tables]


def make_optimizers(cfg: TrainConfig, model: nn.Module, parameters: Parameters = Parameters()) -> list:
    return with_initial_rates(OPTIMIZERS[cfg.optimizer].build(cfg, model, parameters))


def with_initial_rates(optimizers: list) -> list:
    """`optimizers`, each group's starting rate noted (schedules scale it: `set_learning_rate`)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return optimizers


def _adam(cfg: TrainConfig, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    dense, sparse = parameters.split(model)
    betas = (cfg.beta1, cfg.beta2)
    # The fused kernel updates all dense parameters in one pass (CPU and GPU, torch >= 2.4).
    optimizers = [
        torch.optim.Adam(
            dense, lr=cfg.learning_rate, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
        )
    ]
    return optimizers + ([SparseRowAdam(sparse, lr=cfg.learning_rate, betas=betas, eps=cfg.eps)] if sparse else [])


def _sgd(cfg: TrainConfig, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    dense, sparse = parameters.split(model)  # sparse updates take no weight decay
    groups = [{"params": dense, "weight_decay": cfg.weight_decay}, {"params": sparse, "weight_decay": 0.0}]
    return [SGD([g for g in groups if g["params"]], lr=cfg.learning_rate)]


def _adagrad(cfg: TrainConfig, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    return [torch.optim.Adagrad(parameters.of(model), lr=cfg.learning_rate, eps=cfg.eps)]


def _rowwise_adagrad(cfg: TrainConfig, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    dense, sparse = parameters.split(model)
    optimizers = [torch.optim.Adagrad(dense, lr=cfg.learning_rate, eps=cfg.eps)]
    return optimizers + ([RowWiseAdagrad(sparse, lr=cfg.learning_rate, eps=cfg.eps)] if sparse else [])


def _ftrl_proximal_adagrad(cfg: TrainConfig, model: nn.Module, parameters: Parameters) -> list:
    # The model's linear part (`recforge.models.base.Model.linear_part`; optim sits beside models
    # in the layers, so it is asked for, not imported).
    linear = model.linear_part()
    if not isinstance(linear, nn.Module):
        raise RecforgeError(f"--optimizer {cfg.optimizer}: needs a model with a linear (wide) part; this one has none")
    linear_ids = {id(p) for p in linear.parameters()}
    return [
        Ftrl(
            parameters.of(linear),
            lr=cfg.linear_learning_rate,
            lr_power=cfg.linear_learning_rate_power,
            initial_accumulator=cfg.linear_initial_accumulator,
            l1=cfg.linear_l1_regularization,
            l2=cfg.linear_l2_regularization,
        ),
        ProximalAdagrad(
            [p for p in parameters.of(model) if id(p) not in linear_ids],
            lr=cfg.deep_learning_rate,
            initial_accumulator=cfg.deep_initial_accumulator,
            l1=cfg.deep_l1_regularization,
            l2=cfg.deep_l2_regularization,
        ),
    ]


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable  # (train config, model, Parameters) -> optimizers
    rates: str  # the flags that set its learning rates (a diverged run's advice names them)


# --optimizer NAME -> how it is built (TrainConfig.optimizer lists the same names).
OPTIMIZERS = {
    "adam": OptimizerEntry(_adam, "--learning-rate"),
    "sgd": OptimizerEntry(_sgd, "--learning-rate"),
    "adagrad": OptimizerEntry(_adagrad, "--learning-rate"),
    "rowwise-adagrad": OptimizerEntry(_rowwise_adagrad, "--learning-rate"),
    "ftrl+proximal-adagrad": OptimizerEntry(_ftrl_proximal_adagrad, "--linear-learning-rate / --deep-learning-rate"),
}


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the learning rate after `step` optimizer steps: linear warm-up, constant,
    then polynomial decay to zero (MLPerf DLRM's schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay_steps and step >= cfg.decay_start_step:
        return max(0.0, 1.0 - (step - cfg.decay_start_step) / cfg.decay_steps) ** cfg.decay_power
    return 1.0


def set_learning_rate(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig, step: int) -> None:
    factor = lr_factor(cfg, step)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
