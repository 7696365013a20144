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

`ftrl+proximal-adagrad` (Wide & Deep, as the replaced TensorFlow system) splits by model part
instead: FTRL on `model.wide`, Proximal Adagrad on the rest, each with its own learning rate and
L1/L2 (`--linear-*`, `--deep-*`), dense or sparse gradients alike.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.config import TrainConfig
from recforge.core.errors import RecforgeError
from recforge.optim.proximal import Ftrl, ProximalAdagrad
from recforge.optim.sparse_grad import touched_rows


class SparseRowAdam(torch.optim.Optimizer):
    """Adam on the rows a step touches ("lazy" Adam), the same update as `torch.optim.SparseAdam`
    (bias corrections from the global step, eps outside the corrected square root), computed on
    the touched rows directly: several times faster per step on CPUs."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, grad = touched_rows(p.grad)
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step_size = group["lr"] * (1 - beta2 ** state["step"]) ** 0.5 / (1 - beta1 ** state["step"])
                # rows are unique: index_copy_ writes them in parallel, index_add_ would not
                step = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                p.index_copy_(0, rows, p.index_select(0, rows).add_(step, alpha=-step_size))


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per table row: the mean of the row's squared gradient.

    FBGEMM's and TorchRec's choice for large tables: D times less optimizer state than Adagrad,
    and every coordinate of a row takes the same step size. With sparse gradients only the rows
    in the batch are touched: state[row] += mean(g_row^2); row -= lr * g_row / (sqrt(state[row]) + eps).
    """

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                rows, grad = touched_rows(p.grad)
                accumulated = state["sum"].index_select(0, rows).add_(grad.float().pow(2).mean(dim=1))
                state["sum"].index_copy_(0, rows, accumulated)
                step = grad / (accumulated.sqrt() + group["eps"]).unsqueeze(1).to(grad.dtype)
                p.index_copy_(0, rows, p.index_select(0, rows).add_(step, alpha=-group["lr"]))


def sparse_parameters(model: nn.Module) -> set[int]:
    """ids of the tables whose gradients are sparse."""
    return {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse
    }


def make_optimizers(cfg: TrainConfig, model: nn.Module) -> list[torch.optim.Optimizer]:
    optimizers = _optimizers(cfg, model)
    for optimizer in optimizers:  # schedules scale each group's own starting rate
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return optimizers


def _optimizers(cfg: TrainConfig, model: nn.Module) -> list[torch.optim.Optimizer]:
    if cfg.optimizer == "ftrl+proximal-adagrad":
        wide = getattr(model, "wide", None)
        if wide is None:
            raise RecforgeError("--optimizer ftrl+proximal-adagrad needs a model with a wide part (wide-deep)")
        wide_ids = {id(p) for p in wide.parameters()}
        return [
            Ftrl(
                wide.parameters(),
                lr=cfg.linear_learning_rate,
                lr_power=cfg.linear_learning_rate_power,
                initial_accumulator=cfg.linear_initial_accumulator,
                l1=cfg.linear_l1_regularization,
                l2=cfg.linear_l2_regularization,
            ),
            ProximalAdagrad(
                [p for p in model.parameters() if id(p) not in wide_ids],
                lr=cfg.deep_learning_rate,
                initial_accumulator=cfg.deep_initial_accumulator,
                l1=cfg.deep_l1_regularization,
                l2=cfg.deep_l2_regularization,
            ),
        ]
    sparse_ids = sparse_parameters(model)
    sparse = [p for p in model.parameters() if id(p) in sparse_ids]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    lr = cfg.learning_rate
    if cfg.optimizer == "adam":
        # The fused kernel updates all dense parameters in one pass (CPU and GPU, torch >= 2.4).
        optimizers = [
            torch.optim.Adam(
                dense, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
            )
        ]
        if sparse:
            optimizers.append(SparseRowAdam(sparse, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps))
        return optimizers
    if cfg.optimizer == "sgd":  # sparse updates take no weight decay
        groups = [{"params": dense, "weight_decay": cfg.weight_decay}, {"params": sparse, "weight_decay": 0.0}]
        return [torch.optim.SGD([g for g in groups if g["params"]], lr=lr)]
    if cfg.optimizer == "adagrad":
        return [torch.optim.Adagrad(dense + sparse, lr=lr, eps=cfg.eps)]
    optimizers = [torch.optim.Adagrad(dense, lr=lr, eps=cfg.eps)]
    if sparse:
        optimizers.append(RowWiseAdagrad(sparse, lr=lr, eps=cfg.eps))
    return optimizers


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
