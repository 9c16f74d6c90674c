"""Row-wise Adagrad: one accumulator per embedding row, updates on the touched rows only.

This module holds compemb's one Adagrad step (:meth:`RowWiseAdagrad.step` over
:func:`sparse_adagrad_` for row gradients): :class:`~compemb.optim.fused.FusedAdagrad` is the
same optimizer with row gradients routed from the lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from compemb import _kernels

__all__ = ["RowWiseAdagrad", "sparse_adagrad_"]


@torch.no_grad()
def sparse_adagrad_(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor,
                    grads: torch.Tensor, lr: float, eps: float, *, compiled: bool = True) -> None:
    """One Adagrad step on the rows of ``weight`` (R, D) that ``rows`` (N,) name.

    ``grads`` (N, D) are summed per row first (rows may repeat), as coalescing a sparse gradient
    would. ``state`` (R, D) is exact Adagrad's sum of squares; (R, 1) makes it row-wise: the sum
    of each row's mean squared gradient. Only the touched rows are read and written.

    ``compiled``: use the compiled CPU kernel (``compemb._kernels``, one pass over
    the touched rows) where it is built and applies; otherwise, or with False, pure torch.
    """
    if compiled and _kernels.sparse_adagrad(weight, state, rows, grads, lr, eps):
        return
    unique, inverse = torch.unique(rows, return_inverse=True)
    grad = grads.new_zeros(unique.numel(), grads.shape[1]).index_add_(0, inverse, grads)
    total = state.index_select(0, unique)
    if total.shape[1] == grad.shape[1]:
        total.addcmul_(grad, grad)
    else:
        total.add_(grad.square().mean(1, keepdim=True))
    state.index_copy_(0, unique, total)
    # The step scaled first: index_add_ with alpha != 1 takes a path about 10x slower.
    weight.index_add_(0, unique, grad.div_(total.sqrt_().add_(eps)).mul_(-lr))


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad whose parameter groups choose exact (per-element) or row-wise accumulators.

    Row-wise (``rowwise=True`` in a group, as FBGEMM/TorchRec do for embedding tables): a table
    of shape (R, D) keeps one accumulator per row, the running sum of the row's mean squared
    gradient, so the optimizer state is R numbers instead of R x D (a 4-byte overhead per row).
    Exact (``rowwise=False``): ``torch.optim.Adagrad``'s update, element by element.

    A sparse gradient (from ``sparse=True`` tables) is not coalesced: :func:`sparse_adagrad_`
    sums its repeated rows and reads and writes only those rows, in the parameter and in the
    state: no pass over the whole table per step. DDP runs use this optimizer, whose tables keep
    their (all-reduced) sparse gradients.

    Update for row r with gradient g_r: ``s_r += mean(g_r^2)`` (row-wise) or ``s += g^2``
    (exact), then ``w_r -= lr * g_r / (sqrt(s_r) + eps)``.

    >>> table = torch.nn.Parameter(torch.zeros(1000, 4))
    >>> opt = RowWiseAdagrad([{"params": [table], "rowwise": True}], lr=0.1)
    >>> opt.state_dict()["param_groups"][0]["rowwise"]
    True
    """

    # What a subclass adds to every group, and the dtype of the per-parameter step count: both
    # part of the state dict, so each optimizer keeps the format its checkpoints were saved in.
    _extra_defaults: ClassVar[dict[str, Any]] = {}
    _step_dtype: ClassVar[torch.dtype] = torch.int64

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
                f"{type(self).__name__}: need lr > 0, eps >= 0 and initial_accumulator_value "
                f">= 0; got lr={lr}, eps={eps}, "
                f"initial_accumulator_value={initial_accumulator_value}"
            )
        defaults = {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value,
                    "rowwise": rowwise, **self._extra_defaults}  # fmt: skip
        super().__init__(params, defaults)

    def _state(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        if "sum" not in state:
            shape = (p.shape[0], 1) if group.get("rowwise", False) and p.dim() > 1 else p.shape
            state["sum"] = torch.full(shape, group["initial_accumulator_value"],
                                      dtype=p.dtype, device=p.device)  # fmt: skip
            state["step"] = torch.zeros((), dtype=self._step_dtype)
        return state["sum"]

    def _row_gradients(self, p: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row gradients ``(rows (N,), grads (N, ...))`` that reached ``p`` other than ``.grad``."""
        return []

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise if ``group`` asks for an update this optimizer does not make."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Update every parameter that has a gradient (``.grad``, or routed row gradients).

        ``closure``, as in torch's optimizers, re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._check_group(group)
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                parts = self._row_gradients(p)
                if p.grad is None and not parts:
                    continue
                total = self._state(p, group)
                self.state[p]["step"] += 1
                rows = p.view(p.shape[0], -1) if p.dim() > 1 else p.view(-1, 1)
                acc = total.view(rows.shape[0], -1)
                grad = p.grad
                if grad is not None and (grad.is_sparse or parts):
                    # A sparse gradient needs no coalescing: the update sums repeated rows.
                    if grad.is_sparse:
                        parts.append((grad._indices()[0], grad._values()))
                    else:  # a routed table that also got a dense gradient: one step for both
                        parts.append((torch.arange(p.shape[0], device=p.device), grad))
                    grad = None
                if parts:
                    index = torch.cat([r for r, _ in parts]) if len(parts) > 1 else parts[0][0]
                    g = torch.cat([g for _, g in parts]) if len(parts) > 1 else parts[0][1]
                    # the width, not -1: a table no id read has a gradient of no rows
                    g = g.reshape(index.numel(), rows.shape[1])
                    sparse_adagrad_(rows, acc, index, g, lr, eps)
                if grad is not None:  # dense
                    g = grad.reshape(rows.shape)
                    if acc.shape[1] != rows.shape[1]:  # row-wise accumulators
                        acc.add_(g.square().mean(1, keepdim=True))
                    else:
                        acc.addcmul_(g, g)
                    rows.addcdiv_(g, acc.sqrt().add_(eps), value=-lr)
        return loss
