"""Proximal optimizers with L1/L2 regularization: FTRL-Proximal and proximal Adagrad.

Both apply the regularizer in closed form after the gradient step (a proximal step) rather
than adding its (sub)gradient to the loss gradient, so L1 drives coordinates to exactly 0.0
and the model stays sparse: the classic choice for large logistic-regression CTR models.
The updates are TensorFlow's `ApplyFtrl` and `ApplyProximalAdagrad`, per coordinate.

Sparse gradients (embedding tables with `sparse=True`) update only the rows in the batch,
their repeated ids summed first, as TensorFlow's `SparseApply*` ops: rows outside the batch
keep their weights and state, while a dense zero gradient would still re-apply the
regularizer to them (and FTRL would set a row to 0 on its first step).
"""

from __future__ import annotations

import torch

from recforge.optim.sparse_grad import touched_rows


class _RowProximal(torch.optim.Optimizer):
    """Shared step: read the touched rows of the weights and fp32 state, let `_update` compute
    them, write them back. Subclasses give `_initial_state` and `_update`."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    for name, value in self._initial_state(group).items():
                        state[name] = torch.full_like(p, value, dtype=torch.float32)
                rows, grad = touched_rows(p.grad)
                rows_state = {name: value.index_select(0, rows) for name, value in state.items()}
                weight = self._update(group, p.index_select(0, rows).float(), grad.float(), rows_state)
                # rows are unique: index_copy_ writes them in parallel, index_add_ would not
                for name, value in rows_state.items():
                    state[name].index_copy_(0, rows, value)
                p.index_copy_(0, rows, weight.to(p.dtype))
        return loss

    def _initial_state(self, group: dict) -> dict[str, float]:
        raise NotImplementedError

    def _update(
        self, group: dict, weight: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """New weights of the rows (fp32); updates the rows' `state` in place."""
        raise NotImplementedError

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts state to the parameter's dtype: keep fp32
            for name, value in state.items():
                state[name] = value.float()


def _check(lr: float, initial_accumulator: float, l1: float, l2: float) -> None:
    if lr < 0 or l1 < 0 or l2 < 0:
        raise ValueError(f"lr, l1 and l2 must be non-negative, got {lr}, {l1}, {l2}")
    if initial_accumulator <= 0:  # a first gradient of 0 would divide by a zero accumulator
        raise ValueError(f"initial_accumulator must be positive, got {initial_accumulator}")


class Ftrl(_RowProximal):
    """FTRL-Proximal (McMahan et al. 2013), as TensorFlow's `ApplyFtrl` (no l2 shrinkage, beta 0).

    Per coordinate, with p = -lr_power (1/2: Adagrad-like per-coordinate step sizes):
        n' = n + g^2;  z += g - (n'^p - n^p) / lr * w;  n = n'
        w = (clip(z, -l1, l1) - z) / (n^p / lr + 2 * l2)
    The weights are recomputed from the accumulated gradients `z` ("linear") each step, so w is
    exactly 0 wherever |z| <= l1. An lr of 0 (the end of a decay schedule) leaves everything as
    it is; the formula would divide by it.
    """

    def __init__(
        self,
        params,
        lr: float = 0.2,
        lr_power: float = -0.5,
        initial_accumulator: float = 0.1,
        l1: float = 0.0,
        l2: float = 0.0,
    ):
        _check(lr, initial_accumulator, l1, l2)
        if lr_power > 0:
            raise ValueError(f"lr_power must be <= 0, got {lr_power}")
        super().__init__(
            params, {"lr": lr, "lr_power": lr_power, "initial_accumulator": initial_accumulator, "l1": l1, "l2": l2}
        )

    def _initial_state(self, group):
        return {"accumulator": group["initial_accumulator"], "linear": 0.0}

    def _update(self, group, weight, grad, state):
        lr, power = group["lr"], -group["lr_power"]
        if lr == 0:
            return weight
        accumulator, linear = state["accumulator"], state["linear"]
        root = accumulator.sqrt() if power == 0.5 else accumulator.pow(power)
        accumulator.addcmul_(grad, grad)
        new_root = accumulator.sqrt() if power == 0.5 else accumulator.pow(power)
        linear.add_(grad).sub_(new_root.sub(root).div_(lr).mul_(weight))
        quadratic = new_root.div_(lr).add_(2 * group["l2"])
        return linear.clamp(-group["l1"], group["l1"]).sub_(linear).div_(quadratic)


class ProximalAdagrad(_RowProximal):
    """Adagrad followed by the L1/L2 proximal step, as TensorFlow's `ApplyProximalAdagrad`.

    Per coordinate:
        n += g^2;  lr_t = lr / sqrt(n);  v = w - lr_t * g
        w = sign(v) * max(|v| - lr_t * l1, 0) / (1 + lr_t * l2)
    Soft-thresholding sets w to exactly 0 wherever the Adagrad step lands within lr_t * l1 of it.
    """

    def __init__(self, params, lr: float = 0.05, initial_accumulator: float = 0.1, l1: float = 0.0, l2: float = 0.0):
        _check(lr, initial_accumulator, l1, l2)
        super().__init__(params, {"lr": lr, "initial_accumulator": initial_accumulator, "l1": l1, "l2": l2})

    def _initial_state(self, group):
        return {"accumulator": group["initial_accumulator"]}

    def _update(self, group, weight, grad, state):
        step = state["accumulator"].addcmul_(grad, grad).rsqrt().mul_(group["lr"])  # lr_t
        v = weight.addcmul_(step, grad, value=-1)
        shrunk = v.abs().sub_(step * group["l1"]).clamp_(min=0).mul_(v.sign())
        return shrunk.div_(step.mul_(group["l2"]).add_(1))
