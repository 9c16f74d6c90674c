"""Adagrad whose embedding-table updates skip the sparse gradient tensor.

``torch.optim.Adagrad`` on a ``sparse=True`` table receives a sparse COO gradient, coalesces it
(a sort), and adds three more sparse tensors into the parameter and its state. Here the lookup's
backward hands each routed table its row indices and row gradients directly
(:func:`gradient_sink`); the optimizer's step then finds the unique rows, sums their
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
from typing import Any, ClassVar

import torch

from compemb.optim.rowwise import RowWiseAdagrad

__all__ = ["FusedAdagrad", "gradient_sink"]

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


class FusedAdagrad(RowWiseAdagrad):
    """Adagrad (exact, or row-wise for ``rowwise=True`` groups) with routed embedding tables.

    Args:
        params: parameters or groups (a group may set ``rowwise``).
        lr: learning rate, as ``torch.optim.Adagrad`` (no decay, no weight decay).
        eps: added to the root of the accumulator, as ``torch.optim.Adagrad``.
        initial_accumulator_value: starting value of every accumulator.
        rowwise: default for groups: tables (R, D) keep one accumulator per row
            (:class:`~compemb.optim.rowwise.RowWiseAdagrad`'s update); other parameters are
            exact whatever the group says.
        tables: parameters whose row gradients the embedding lookups send straight here
            (:func:`gradient_sink`) instead of building ``.grad``.

    The step is :class:`~compemb.optim.rowwise.RowWiseAdagrad`'s, fed the routed rows. The state
    dict has torch Adagrad's layout (``sum``, a float ``step`` per parameter, ``lr_decay`` and
    ``weight_decay`` in every group), so a checkpoint of one loads into the other where the
    accumulators have the same shape.
    """

    # lr_decay and weight_decay (always 0) keep the groups loadable by torch's Adagrad.
    _extra_defaults: ClassVar[dict[str, Any]] = {"lr_decay": 0.0, "weight_decay": 0.0}
    _step_dtype: ClassVar[torch.dtype] = torch.float32

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
        super().__init__(params, lr, eps, initial_accumulator_value, rowwise)
        own = {id(p) for group in self.param_groups for p in group["params"]}
        self._pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
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

    def _row_gradients(self, p: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._pending.pop(id(p), [])

    def _check_group(self, group: dict[str, Any]) -> None:
        if group.get("lr_decay") or group.get("weight_decay"):
            raise ValueError("FusedAdagrad has no lr_decay or weight_decay (a checkpoint of "
                             "torch's Adagrad that used them cannot continue here)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients and any row gradients routed since the last step."""
        super().zero_grad(set_to_none)
        self._pending.clear()
