"""Row-wise Adagrad: one accumulator per embedding row, updates on the touched rows only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad whose parameter groups choose exact (per-element) or row-wise accumulators.

    Row-wise (``rowwise=True`` in a group, as FBGEMM/TorchRec do for embedding tables): a table
    of shape (R, D) keeps one accumulator per row, the running sum of the row's mean squared
    gradient, so the optimizer state is R numbers instead of R x D (a 4-byte overhead per row).
    Exact (``rowwise=False``): ``torch.optim.Adagrad``'s update, element by element.

    A sparse gradient (from ``sparse=True`` tables) is coalesced and only its rows are read and
    written, in the parameter and in the state: no pass over the whole table per step.

    Update for row r with gradient g_r: ``s_r += mean(g_r^2)`` (row-wise) or ``s += g^2``
    (exact), then ``w_r -= lr * g_r / (sqrt(s_r) + eps)``.

    >>> table = torch.nn.Parameter(torch.zeros(1000, 4))
    >>> opt = RowWiseAdagrad([{"params": [table], "rowwise": True}], lr=0.1)
    >>> opt.state_dict()["param_groups"][0]["rowwise"]
    True
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        rowwise: bool = False,
    ):
        if lr <= 0 or eps < 0 or initial_accumulator_value < 0:
            raise ValueError(
                f"RowWiseAdagrad: need lr > 0, eps >= 0 and initial_accumulator_value >= 0; got "
                f"lr={lr}, eps={eps}, initial_accumulator_value={initial_accumulator_value}"
            )
        defaults = {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value,
                    "rowwise": rowwise}  # fmt: skip
        super().__init__(params, defaults)

    def _state(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        if "sum" not in state:
            shape = (p.shape[0], 1) if group["rowwise"] and p.dim() > 1 else p.shape
            state["sum"] = torch.full(shape, group["initial_accumulator_value"],
                                      dtype=p.dtype, device=p.device)  # fmt: skip
            state["step"] = torch.zeros((), dtype=torch.int64)
        return state["sum"]

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                total = self._state(p, group)
                self.state[p]["step"] += 1
                rows = p.view(p.shape[0], -1) if p.dim() > 1 else p.view(-1, 1)
                acc = total.view(rows.shape[0], -1)
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    index = grad.indices()[0]
                    g = grad.values().reshape(index.numel(), -1)
                else:
                    index, g = None, grad.reshape(rows.shape)
                square = g * g
                if acc.shape[1] == 1 and rows.shape[1] > 1:
                    square = square.mean(1, keepdim=True)
                if index is None:
                    acc.add_(square)
                    rows.addcdiv_(g, acc.sqrt().add_(eps), value=-lr)
                else:
                    acc.index_add_(0, index, square)
                    denom = acc.index_select(0, index).sqrt_().add_(eps)
                    rows.index_add_(0, index, g / denom, alpha=-lr)
        return loss
