"""The optimizers a run can name in ``train.optimizer``: one registry of small objects.

Each :class:`OptimizerKind` carries what the config loader (name, default learning rate, whether
it takes sparse gradients), the memory accounting (state kept per parameter element) and the
trainer (how to build it) need. It stands at the ground layer, beside the config that checks
names against it; torch is imported only when an optimizer is built. Adding an optimizer is one
build function and one :func:`register` line.

>>> optimizer_kind("amsgrad").sparse
False
>>> optimizer_kind("adam")
Traceback (most recent call last):
ValueError: unknown optimizer 'adam'; use one of adagrad, amsgrad, rowwise_adagrad, sgd
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["OPTIMIZERS", "Build", "OptimizerKind", "make_optimizer", "optimizer_kind", "register"]

#: ``build(parameters, lr, tables)``: an optimizer over ``parameters`` (see :class:`OptimizerKind`).
Build = Callable[[list["torch.nn.Parameter"], float, Sequence["torch.nn.Parameter"]],
                 "torch.optim.Optimizer"]  # fmt: skip


@dataclass(frozen=True)
class OptimizerKind:
    """One optimizer, as config, trainer and memory accounting see it.

    Attributes:
        name: what ``train.optimizer`` says.
        build: ``build(parameters, lr, tables)``: the optimizer over ``parameters``; ``tables``
            are the embedding tables among them (for optimizers that treat tables apart).
        default_lr: the learning rate when ``train.lr`` is unset (torch's default, which the
            paper used); None: the config must set one.
        sparse: takes the sparse gradients of ``sparse=True`` tables, touching only the rows a
            batch used; otherwise the tables need dense gradients.
        state_per_element: numbers of optimizer state per parameter element.
        rowwise_tables: tables keep one state number per row instead.
        fused: builds the same optimizer with the tables' row gradients routed from the lookup's
            backward straight into the update (:mod:`compemb.optim.fused`; the tables get no
            ``.grad``); None where there is no such variant.
    """

    name: str
    build: Build
    default_lr: float | None
    sparse: bool
    state_per_element: int
    rowwise_tables: bool = False
    fused: Build | None = None

    def state_numel(self, shape: Sequence[int], *, table: bool) -> int:
        """Numbers of state this optimizer keeps for a parameter of ``shape``."""
        if table and self.rowwise_tables and len(shape) > 1:
            return shape[0]
        numel = 1
        for n in shape:
            numel *= n
        return self.state_per_element * numel


OPTIMIZERS: dict[str, OptimizerKind] = {}


def register(kind: OptimizerKind) -> OptimizerKind:
    """Add ``kind`` to :data:`OPTIMIZERS` (a name is registered once)."""
    if kind.name in OPTIMIZERS:
        raise ValueError(f"optimizer {kind.name!r} is already registered")
    OPTIMIZERS[kind.name] = kind
    return kind


def optimizer_kind(name: str) -> OptimizerKind:
    """The registered optimizer ``name``; an unknown name raises with the valid ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def make_optimizer(
    name: str,
    parameters: Iterable[torch.nn.Parameter],
    lr: float | None = None,
    *,
    tables: Iterable[torch.nn.Parameter] = (),
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``parameters``; ``lr=None`` takes its default.

    ``tables`` are the embedding tables among ``parameters`` (row-wise Adagrad keeps one
    accumulator per row of them, and exact Adagrad for every other parameter). ``fused=True``
    takes the optimizer's fused variant where it has one (same updates; the tables' row
    gradients go straight into the update and their ``.grad`` stays None, so nothing else may
    read or all-reduce those gradients).
    """
    import torch

    kind = optimizer_kind(name)
    if lr is None:
        if kind.default_lr is None:
            raise ValueError(f"optimizer {name!r} needs a learning rate (train.lr), e.g. 0.1")
        lr = kind.default_lr
    # torch's sparse Adagrad rebuilds sparse tensors from gradients that are valid by
    # construction; opting out of the invariant checks explicitly (the default) silences the
    # warning torch otherwise prints on every run.
    torch.sparse.check_sparse_tensor_invariants.disable()
    build = kind.fused if fused and kind.fused is not None else kind.build
    return build(list(parameters), lr, list(tables))


def _adagrad(parameters: list, lr: float, tables: Sequence) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adagrad(parameters, lr=lr)


def _amsgrad(parameters: list, lr: float, tables: Sequence) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(parameters, lr=lr, amsgrad=True)


def _rowwise_adagrad(parameters: list, lr: float, tables: Sequence) -> torch.optim.Optimizer:
    from compemb.optim.rowwise import RowWiseAdagrad

    table_ids = {id(t) for t in tables}
    groups = [
        {"params": [p for p in parameters if id(p) in table_ids], "rowwise": True},
        {"params": [p for p in parameters if id(p) not in table_ids], "rowwise": False},
    ]
    return RowWiseAdagrad([g for g in groups if g["params"]], lr=lr)


def _fused_adagrad(parameters: list, lr: float, tables: Sequence) -> torch.optim.Optimizer:
    from compemb.optim.fused import FusedAdagrad

    return FusedAdagrad(parameters, lr=lr, tables=tables)


def _fused_rowwise_adagrad(parameters: list, lr: float, tables: Sequence
                           ) -> torch.optim.Optimizer:  # fmt: skip
    from compemb.optim.fused import FusedAdagrad

    table_ids = {id(t) for t in tables}
    groups = [
        {"params": [p for p in parameters if id(p) in table_ids], "rowwise": True},
        {"params": [p for p in parameters if id(p) not in table_ids], "rowwise": False},
    ]
    return FusedAdagrad([g for g in groups if g["params"]], lr=lr, tables=tables)


def _sgd(parameters: list, lr: float, tables: Sequence) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(parameters, lr=lr)


# Adagrad keeps a sum of squares; AMSGrad (torch's Adam, which has no sparse variant) keeps
# exp_avg, exp_avg_sq and max_exp_avg_sq; plain SGD (no momentum) keeps nothing.
register(OptimizerKind("adagrad", _adagrad, default_lr=0.01, sparse=True, state_per_element=1,
                       fused=_fused_adagrad))  # fmt: skip
register(OptimizerKind("amsgrad", _amsgrad, default_lr=0.001, sparse=False, state_per_element=3))
register(OptimizerKind("rowwise_adagrad", _rowwise_adagrad, default_lr=0.01, sparse=True,
                       state_per_element=1, rowwise_tables=True,
                       fused=_fused_rowwise_adagrad))  # fmt: skip
register(OptimizerKind("sgd", _sgd, default_lr=None, sparse=True, state_per_element=0))
