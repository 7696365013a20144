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

Each optimizer owns its settings, a dataclass that is the run's `optim` section when it is chosen
(`--beta1` exists with Adam only). A new optimizer is a settings class, a builder and an entry in
`OPTIMIZERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recforge.config import RunConfig, TrainConfig, option
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


def make_optimizers(cfg: RunConfig, model: nn.Module, parameters: Parameters = Parameters()) -> list:
    """The optimizers of `cfg.train.optimizer`, with its settings (`cfg.optim`), over `model`."""
    return with_initial_rates(OPTIMIZERS[cfg.train.optimizer].build(cfg.optim, model, parameters))


def with_initial_rates(optimizers: list) -> list:
    """`optimizers`, each group's starting rate noted (schedules scale it: `set_learning_rate`)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return optimizers


# Each optimizer's settings: the run's `optim` section when it is chosen (its fields are flags too).
_RATE: dict[str, Any] = {"low": 0, "low_open": True, "resumable": True}
_EPS = option(1e-8, "epsilon added to the denominator", low=0, low_open=True, resumable=True)
_DECAY = option(0.0, "L2 penalty on the dense parameters (not the sparse tables)", low=0, resumable=True)


@dataclass
class AdamSettings:
    learning_rate: float = option(0.001, "learning rate", **_RATE)
    beta1: float = option(0.9, "decay of the gradients' running mean", low=0, high=1, high_open=True, resumable=True)
    beta2: float = option(0.999, "decay of their squares' running mean", low=0, high=1, high_open=True, resumable=True)
    eps: float = _EPS
    weight_decay: float = _DECAY


@dataclass
class SGDSettings:
    learning_rate: float = option(0.001, "learning rate", **_RATE)
    weight_decay: float = _DECAY


@dataclass
class AdagradSettings:
    learning_rate: float = option(0.001, "learning rate", **_RATE)
    eps: float = _EPS


@dataclass
class FtrlProximalAdagradSettings:
    linear_learning_rate: float = option(0.2, "FTRL's learning rate (the linear part)", **_RATE)
    linear_l1_regularization: float = option(0.0, "FTRL's L1", low=0, resumable=True)
    linear_l2_regularization: float = option(0.0, "FTRL's L2", low=0, resumable=True)
    linear_learning_rate_power: float = option(-0.5, "FTRL's learning-rate power", high=0, resumable=True)
    linear_initial_accumulator: float = option(0.1, "FTRL's initial accumulator", low=0, low_open=True)
    deep_learning_rate: float = option(1.0, "Proximal Adagrad's learning rate (the rest of the model)", **_RATE)
    deep_l1_regularization: float = option(0.0, "Proximal Adagrad's L1", low=0, resumable=True)
    deep_l2_regularization: float = option(0.0, "Proximal Adagrad's L2", low=0, resumable=True)
    deep_initial_accumulator: float = option(0.1, "Proximal Adagrad's initial accumulator", low=0, low_open=True)


def _adam(cfg: AdamSettings, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    dense, sparse = parameters.split(model)
    betas = (cfg.beta1, cfg.beta2)
    # The fused kernel updates all dense parameters in one pass (CPU and GPU, torch >= 2.4).
    optimizers = [
        torch.optim.Adam(
            dense, lr=cfg.learning_rate, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
        )
    ]
    return optimizers + ([SparseRowAdam(sparse, lr=cfg.learning_rate, betas=betas, eps=cfg.eps)] if sparse else [])


def _sgd(cfg: SGDSettings, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    dense, sparse = parameters.split(model)  # sparse updates take no weight decay
    groups = [{"params": dense, "weight_decay": cfg.weight_decay}, {"params": sparse, "weight_decay": 0.0}]
    return [SGD([g for g in groups if g["params"]], lr=cfg.learning_rate)]


def _adagrad(cfg: AdagradSettings, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    return [torch.optim.Adagrad(parameters.of(model), lr=cfg.learning_rate, eps=cfg.eps)]


def _rowwise_adagrad(cfg: AdagradSettings, model: nn.Module, parameters: Parameters) -> list[torch.optim.Optimizer]:
    dense, sparse = parameters.split(model)
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adagrad(dense, lr=cfg.learning_rate, eps=cfg.eps)]
    return optimizers + ([RowWiseAdagrad(sparse, lr=cfg.learning_rate, eps=cfg.eps)] if sparse else [])


def _ftrl_proximal_adagrad(cfg: FtrlProximalAdagradSettings, model: nn.Module, parameters: Parameters) -> list:
    # The model's linear part (`recforge.models.base.Model.linear_part`; optim sits beside models
    # in the layers, so it is asked for, not imported).
    linear = model.linear_part()  # type: ignore[operator]
    if not isinstance(linear, nn.Module):
        raise RecforgeError(
            "--optimizer ftrl+proximal-adagrad: needs a model with a linear (wide) part; this one has none"
        )
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


def _fused_sgd(cfg: SGDSettings):
    return torch.optim.SGD, {"lr": cfg.learning_rate}


def _fused_adagrad(cfg: AdagradSettings):
    return torch.optim.Adagrad, {"lr": cfg.learning_rate, "eps": cfg.eps}


def _fused_rowwise_adagrad(cfg: AdagradSettings):
    import torchrec.optim

    return torchrec.optim.RowWiseAdagrad, {"lr": cfg.learning_rate, "eps": cfg.eps}


def _fused_adam(cfg: AdamSettings):
    import torchrec.optim

    return torchrec.optim.Adam, {"lr": cfg.learning_rate, "beta1": cfg.beta1, "beta2": cfg.beta2, "eps": cfg.eps}


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer: its settings (the `optim` section), how it is built over a model, the flags of
    its learning rates (a diverged run's advice names them), the state it keeps per table row of
    width D in floats (for memory plans), and the same algorithm as TorchRec fuses it into a sharded
    table's backward (settings -> (optimizer class, arguments); None: none exists), on which devices."""

    settings: type
    build: Callable  # (settings, model, Parameters) -> optimizers
    rates: str
    table_state: Callable[[int], int]
    fused: Callable | None = None
    fused_on_cpu: bool = True


# --optimizer NAME -> its entry (TrainConfig.optimizer lists the same names).
OPTIMIZERS = {
    "adam": OptimizerEntry(
        AdamSettings, _adam, "--learning-rate", lambda d: 2 * d, _fused_adam, fused_on_cpu=False
    ),  # FBGEMM's fused Adam is a GPU kernel
    "sgd": OptimizerEntry(SGDSettings, _sgd, "--learning-rate", lambda d: 0, _fused_sgd),
    "adagrad": OptimizerEntry(AdagradSettings, _adagrad, "--learning-rate", lambda d: d, _fused_adagrad),
    "rowwise-adagrad": OptimizerEntry(
        AdagradSettings, _rowwise_adagrad, "--learning-rate", lambda d: 1, _fused_rowwise_adagrad
    ),
    "ftrl+proximal-adagrad": OptimizerEntry(
        FtrlProximalAdagradSettings,
        _ftrl_proximal_adagrad,
        "--linear-learning-rate / --deep-learning-rate",
        lambda d: d,  # Proximal Adagrad's accumulator (the deep tables; FTRL's two on 1-wide linear ones)
    ),
}
SETTINGS = {name: entry.settings for name, entry in OPTIMIZERS.items()}  # what config.build_config takes


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
