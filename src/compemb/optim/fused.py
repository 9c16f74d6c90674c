"""Adagrad whose embedding-table updates skip the sparse gradient tensor.

``torch.optim.Adagrad`` on a ``sparse=True`` table receives a sparse COO gradient, coalesces it
(a sort), and adds three more sparse tensors into the parameter and its state. Here the lookup's
backward hands each routed table its row indices and row gradients directly
(:func:`gradient_sink`); :meth:`FusedAdagrad.step` then finds the unique rows, sums their
gradients, and updates the weight and the state of those rows in place: one sort, four passes
over the touched rows, no sparse tensor. The result equals ``torch.optim.Adagrad`` (exact) or
:class:`~compemb.optim.rowwise.RowWiseAdagrad` (``rowwise=True`` groups) on the same batches.

A routed table's ``.grad`` stays None: what reads gradients (clipping, an all-reduce) must not
be combined with routing; the trainer routes only single-process runs.

>>> table = torch.nn.Parameter(torch.zeros(1000, 4))
>>> opt = FusedAdagrad([table], lr=0.1, tables=[table])
>>> gradient_sink(table) is not None
True
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch

from compemb import _kernels

__all__ = ["FusedAdagrad", "gradient_sink", "sparse_adagrad_"]

# id(table) -> (the table, the optimizer it is routed to), both weak: a table or optimizer that
# goes away takes its route with it.
_ROUTES: dict[int, tuple[weakref.ref, weakref.ref]] = {}

Sink = Callable[[torch.Tensor, torch.Tensor], None]


def gradient_sink(table: torch.Tensor) -> Sink | None:
    """Where the lookup's backward sends ``table``'s row gradients, or None (build a gradient).

    The sink takes ``(rows (N,) int64, gradients (N, D))``; rows may repeat.
    """
    route = _ROUTES.get(id(table))
    if route is None:
        return None
    owner, optimizer = route[0](), route[1]()
    if owner is not table or optimizer is None:
        return None
    return optimizer._sink(table)


@torch.no_grad()
def sparse_adagrad_(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor,
                    grads: torch.Tensor, lr: float, eps: float, *, compiled: bool = True) -> None:
    """One Adagrad step on the rows of ``weight`` (R, D) that ``rows`` (N,) name.

    ``grads`` (N, D) are summed per row first (rows may repeat), as coalescing a sparse gradient
    would. ``state`` (R, D) is exact Adagrad's sum of squares; (R, 1) makes it row-wise: the sum
    of each row's mean squared gradient. Only the touched rows are read and written.

    ``compiled``: use the compiled CPU kernel (:mod:`compemb._kernels`, one pass over
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


class FusedAdagrad(torch.optim.Optimizer):
    """Adagrad (exact, or row-wise for ``rowwise=True`` groups) with routed embedding tables.

    Args:
        params: parameters or groups (a group may set ``rowwise``).
        lr, eps, initial_accumulator_value: as ``torch.optim.Adagrad`` (no decay, no weight
            decay).
        rowwise: default for groups: tables (R, D) keep one accumulator per row
            (:class:`~compemb.optim.rowwise.RowWiseAdagrad`'s update); other parameters are
            exact whatever the group says.
        tables: parameters whose row gradients the embedding lookups send straight here
            (:func:`gradient_sink`) instead of building ``.grad``.

    The state dict has torch Adagrad's layout (``sum``, ``step`` per parameter), so a checkpoint
    of one loads into the other where the accumulators have the same shape.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        rowwise: bool = False,
        *,
        tables: Iterable[torch.Tensor] = (),
    ):
        if lr <= 0 or eps < 0 or initial_accumulator_value < 0:
            raise ValueError(
                f"FusedAdagrad: need lr > 0, eps >= 0 and initial_accumulator_value >= 0; got "
                f"lr={lr}, eps={eps}, initial_accumulator_value={initial_accumulator_value}"
            )
        # lr_decay and weight_decay (always 0) keep the groups loadable by torch's Adagrad.
        defaults = {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value,
                    "rowwise": rowwise, "lr_decay": 0.0, "weight_decay": 0.0}  # fmt: skip
        super().__init__(params, defaults)
        own = {id(p) for group in self.param_groups for p in group["params"]}
        self._pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._group_of = {id(p): group for group in self.param_groups for p in group["params"]}
        me = weakref.ref(self)
        for key in [k for k, (t, o) in _ROUTES.items() if t() is None or o() is None]:
            del _ROUTES[key]  # tables or optimizers gone since
        for table in tables:
            if id(table) not in own:
                raise ValueError("FusedAdagrad: a routed table must be one of its parameters")
            _ROUTES[id(table)] = (weakref.ref(table), me)

    def _sink(self, table: torch.Tensor) -> Sink:
        # Looked up when the backward delivers, not when the sink is taken (the forward may
        # come before zero_grad, as in the trainer): a list taken earlier would be orphaned.
        key = id(table)
        return lambda rows, grads: self._pending.setdefault(key, []).append((rows, grads))

    def _state(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "sum" not in state:
            group = self._group_of[id(p)]
            rowwise = group.get("rowwise", False) and p.dim() > 1
            shape = (p.shape[0], 1) if rowwise else p.shape
            state["sum"] = torch.full(shape, group["initial_accumulator_value"],
                                      dtype=p.dtype, device=p.device)  # fmt: skip
            state["step"] = torch.tensor(0.0)
        return state["sum"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients and any row gradients routed since the last step."""
        super().zero_grad(set_to_none)
        self._pending.clear()

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            if group.get("lr_decay") or group.get("weight_decay"):
                raise ValueError("FusedAdagrad has no lr_decay or weight_decay (a checkpoint of "
                                 "torch's Adagrad that used them cannot continue here)")
            for p in group["params"]:
                routed = self._pending.pop(id(p), None)
                if p.grad is None and not routed:
                    continue
                total = self._state(p)
                self.state[p]["step"] += 1
                parts = list(routed or [])
                grad = p.grad
                if grad is not None and (grad.is_sparse or parts):
                    # A sparse gradient needs no coalescing: the update sums repeated rows.
                    if grad.is_sparse:
                        parts.append((grad._indices()[0], grad._values()))
                    else:  # a routed table that also got a dense gradient: one step for both
                        parts.append((torch.arange(p.shape[0], device=p.device), grad))
                    grad = None
                if parts:
                    rows = parts[0][0] if len(parts) == 1 else torch.cat([r for r, _ in parts])
                    grads = parts[0][1] if len(parts) == 1 else torch.cat([g for _, g in parts])
                    view = p.view(p.shape[0], -1)
                    sparse_adagrad_(view, total.view(view.shape[0], -1), rows,
                                    grads.reshape(rows.numel(), -1), lr, eps)  # fmt: skip
                if grad is not None:  # dense
                    if total.shape != grad.shape:  # row-wise accumulators of a dense table
                        total.add_(grad.square().mean(1, keepdim=True))
                    else:
                        total.addcmul_(grad, grad)
                    p.addcdiv_(grad, total.sqrt().add_(eps), value=-lr)
        return loss
