"""Lazy Adam for embedding tables: a step reads and writes only the rows its batch touched.

``torch.optim.SparseAdam`` has the same math (Adam's moments move only for rows with a gradient, bias
correction counts every step) but builds it from sparse-tensor operations: a coalesce, masks and sparse
additions into the moments and the table. Here the gradient's rows are found once, and the moments and the
table are gathered and scattered as dense blocks of those rows; on a 200,000-row table a step over the
~28,000 rows a catalogue batch touches took 17 ms against SparseAdam's 32 ms (``scripts/profile_step.py``).
Dense gradients (any other parameter) get the ordinary Adam update.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam whose step on a sparse gradient updates only that gradient's rows, in place (as SparseAdam)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0 or eps <= 0 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"LazyAdam needs lr > 0, eps > 0 and betas in [0, 1); got {lr}, {eps}, {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                correction1 = 1 - beta1 ** state["step"]
                root_correction2 = math.sqrt(1 - beta2 ** state["step"])
                step_size = group["lr"] * root_correction2 / correction1
                eps = group["eps"] * root_correction2  # Adam's eps, added to the corrected root
                if param.grad.is_sparse:
                    _sparse_step(param, param.grad, state, beta1, beta2, step_size, eps)
                else:
                    grad = param.grad
                    state["exp_avg"].lerp_(grad, 1 - beta1)
                    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    param.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(eps), value=-step_size)
        return loss


def _sparse_step(param: torch.Tensor, grad: torch.Tensor, state: dict, beta1: float, beta2: float,
                 step_size: float, eps: float) -> None:
    """Adam's update of the rows a sparse gradient names (each row once, its repeated entries summed)."""
    indices, values = grad._indices()[0], grad._values()
    if not len(indices):
        return
    rows, inverse = torch.unique(indices, return_inverse=True)
    summed = values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, inverse, values)
    exp_avg = state["exp_avg"].index_select(0, rows).lerp_(summed, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(summed, summed, value=1 - beta2)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
    update = exp_avg.div_(exp_avg_sq.sqrt_().add_(eps)).mul_(-step_size)
    # The rows are distinct, so a scatter-add is the same as index_add_, and on CPU it was about 4x faster
    # (2.4 against 9.1 ms for 28,000 rows of 128 into a 200,000-row table).
    param.scatter_add_(0, rows.view(-1, *[1] * (param.dim() - 1)).expand_as(update), update)
