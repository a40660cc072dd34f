"""Optimizers for embedding tables whose step reads and writes only the rows its batch touched.

- ``RowWiseAdagrad`` (the default for sparse towers, ``model.sparse_optimizer``): one accumulator per row,
  as TorchRec and FBGEMM train embedding tables, so a step reads and writes the touched rows of the table
  and one number per row, nothing else: the cheapest adaptive step per row (the step profile is in the
  benchmarks).
- ``LazyAdam``: ``torch.optim.SparseAdam``'s math (Adam's moments move only for rows with a gradient, bias
  correction counts every step), which SparseAdam builds from sparse-tensor operations (a coalesce, masks,
  sparse additions into the moments and the table). Here the gradient's rows are found once, and the
  moments and the table are gathered and scattered as dense blocks of those rows, which is cheaper than
  sparse-tensor arithmetic on a CPU (``scripts/profile_step.py`` measures it). Dense gradients get Adam.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch

from twotower.errors import ConfigError

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
# The towers the switch to sparse gradients knows, by their specs' targets (not imported: towers import nothing
# of the optimizers, and the specs are plain values).
ID_TOWER = "twotower.model.towers.IdTower"
HISTORY_TOWER = "twotower.model.towers.HistoryTower"


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


def _coalesced_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows a sparse gradient names, in order, and each one's gradient (its repeated entries
    summed). The rows are found by marking them in a table-long mask rather than by sorting the indices
    (``torch.unique``), which is linear instead of a sort."""
    indices, values = grad._indices()[0], grad._values()
    touched = torch.zeros(len(grad), dtype=torch.bool, device=indices.device).index_fill_(0, indices, True)
    rows = touched.nonzero().squeeze(1)
    slot = torch.empty(len(grad), dtype=torch.long, device=indices.device)  # only the rows' places are written
    slot[rows] = torch.arange(len(rows), device=indices.device)
    return rows, values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, slot[indices], values)


def _sparse_step(param: torch.Tensor, grad: torch.Tensor, state: dict, beta1: float, beta2: float,
                 step_size: float, eps: float) -> None:
    """Adam's update of the rows a sparse gradient names (each row once, its repeated entries summed)."""
    rows, summed = _coalesced_rows(grad)
    if not len(rows):
        return
    exp_avg = state["exp_avg"].index_select(0, rows).lerp_(summed, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(summed, summed, value=1 - beta2)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
    _add_to_rows(param, rows, exp_avg.div_(exp_avg_sq.sqrt_().add_(eps)).mul_(-step_size))


def _add_to_rows(param: torch.Tensor, rows: torch.Tensor, update: torch.Tensor) -> None:
    """``param[rows] += update`` for distinct ``rows``. A scatter-add is then the same as ``index_add_``, and
    the faster of the two on a CPU."""
    param.scatter_add_(0, rows.view(-1, *[1] * (param.dim() - 1)).expand_as(update), update)


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row (TorchRec's and FBGEMM's default for embedding tables): a row's
    accumulator adds the mean square of that row's gradient, and the row moves by ``lr`` times its gradient
    over the accumulator's root. A step on a sparse gradient reads and writes only the table's rows (no
    per-element moments to gather and scatter), which makes it the cheapest adaptive step per touched row.
    Dense gradients get the same rule over all rows (a 1-D parameter is one row per element, a scalar one
    row).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 0.1, eps: float = 1e-8) -> None:
        if lr <= 0 or eps <= 0:
            raise ValueError(f"RowWiseAdagrad needs lr > 0 and eps > 0; got {lr}, {eps}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                n_rows = len(param) if param.dim() else 1
                if "sum" not in state:
                    state["sum"] = param.new_zeros(n_rows)
                if param.grad.is_sparse:
                    rows, grad = _coalesced_rows(param.grad)
                else:
                    rows, grad = None, param.grad.reshape(n_rows, -1)
                # the mean square in one pass, scaled before squaring so half precision does not overflow
                square = torch.linalg.vector_norm(grad, dim=1).div_(grad.shape[1] ** 0.5).square_()
                if rows is None:
                    total = state["sum"].add_(square)
                else:
                    total = state["sum"].index_select(0, rows).add_(square)
                    state["sum"].index_copy_(0, rows, total)
                scale = total.sqrt().add_(group["eps"]).reciprocal_().mul_(-group["lr"]).unsqueeze(1)
                if rows is None:
                    param.add_(grad.mul(scale).view_as(param))
                else:  # the coalesced gradient is this step's own copy: scaled in place
                    _add_to_rows(param, rows, grad.mul_(scale))
        return loss


def switch_to_sparse(towers: list[dict], optimizer: OptimizerFactory, sparse_optimizer: OptimizerFactory | None,
                     weight_decay: float, n_ids: int, limit: int) -> OptimizerFactory:
    """The optimizer to train with once ``n_ids`` users and items pass ``limit``: ``sparse_optimizer``, with
    ``towers`` (user, item) made sparse ID towers, where the configuration is ID towers (or the default
    history user tower, whose dense table of item vectors would have every step update every item's row)
    and Adam without weight decay. Otherwise ``optimizer`` as configured, with a warning; or, where the switch
    was asked for at any size (``model=sparse``, a limit of 0), an error."""
    base = getattr(optimizer, "func", optimizer)
    user, item = towers
    default_history = user.get("_target_") == HISTORY_TOWER and user.get("use_id", True) and \
        set(user) <= {"_target_", "use_id", "dropout"}
    if (user.get("_target_") != ID_TOWER and not default_history) or item.get("_target_") != ID_TOWER or \
            any(tower.get("sparse") is not None for tower in towers):
        reason = "towers other than plain ID towers"
    elif base is not torch.optim.Adam:
        reason = f"model.optimizer {getattr(base, '__name__', base)} (set model.sparse_optimizer for another optimizer)"
    elif weight_decay:
        reason = "a model.weight_decay (the sparse optimizers take none)"
    elif sparse_optimizer is None:
        reason = "no model.sparse_optimizer"
    else:
        sparse_base = getattr(sparse_optimizer, "func", sparse_optimizer)
        log.info("%d users and items: sparse ID towers%s with %s at lr %s (model.sparse_above=%d)", n_ids,
                 " (the user tower without its history part)" if default_history else "",
                 getattr(sparse_base, "__name__", sparse_base), getattr(sparse_optimizer, "keywords", {}).get("lr"),
                 limit)
        if default_history:
            user.clear()
        for tower in towers:
            tower.update(_target_=ID_TOWER, sparse=True)
        return sparse_optimizer
    if limit == 0:
        raise ConfigError(f"model=sparse needs plain ID towers, Adam and no weight decay to switch from; "
                            f"this configuration has {reason}")
    log.warning("%d users and items, beyond model.sparse_above=%d, but %s: training as configured, where "
                "every step updates every row", n_ids, limit, reason)
    return optimizer
