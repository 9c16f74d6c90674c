"""Composition operations (paper eq. 6) and initialization rules, as small registered objects.

An operation combines the k rows a category gets from its partitions' tables into one vector.
Everything that composes (the per-feature modules, the fused gather-and-compose node, the
stacked collection, the TorchRec collection) reads the same :class:`Operation` object from
:data:`OPERATIONS`, so adding an operation is one subclass plus one :func:`register_operation`
call. An unknown name raises.

An init rule draws each table of a composition: :data:`INIT_RULES` maps the ``init`` field of an
:class:`~compemb.spec.EmbeddingSpec` to a rule.

Letters: N rows, k parts, D_j width of part j, D output width, n categories.

>>> mult = get_operation("mult")
>>> mult.combine([torch.full((1, 2), 2.0), torch.full((1, 2), 3.0)]).tolist()
[[6.0, 6.0]]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from compemb.registry import Registry

__all__ = [
    "INIT_RULES",
    "OPERATIONS",
    "Add",
    "Bounds",
    "Concat",
    "Mult",
    "Operation",
    "full_table_bound",
    "get_init_rule",
    "get_operation",
    "register_init_rule",
    "register_operation",
    "table_bounds",
]

Bounds = list[tuple[float, float]]


def full_table_bound(num_categories: int) -> float:
    """a = sqrt(1 / n): the full table's init is U(-a, a), the reference DLRM's choice.

    Every compemb scheme starts its vectors at this scale unless an init rule says otherwise:
    each coordinate has mean 0 and variance a^2 / 3.
    """
    return math.sqrt(1.0 / num_categories)


class Operation(ABC):
    """How k rows (one per partition) make a category's vector.

    Attributes:
        name: the registry key (``EmbeddingSpec.operation``).
        identity: a value e with ``combine(x, e, ..., e) == x`` (1 for mult, 0 for add): what
            a missing part contributes, so a feature with fewer tables can share a stacked
            group with k-table features; None when there is none (concat).
        commutes_with_sum_pooling: sum-pooling each table's rows and then combining equals
            combining per category and then pooling (add, concat); mult does not.
        needs_parts_for_backward: the gradient of a part depends on the other parts' values.
        gradient_is_identity: every part's gradient is the output's gradient itself (add), so
            it needs neither arithmetic nor a copy.
    """

    name: ClassVar[str]
    identity: ClassVar[float | None] = None
    commutes_with_sum_pooling: ClassVar[bool] = False
    needs_parts_for_backward: ClassVar[bool] = True
    gradient_is_identity: ClassVar[bool] = False

    def table_widths(self, embedding_dim: int, k: int, where: str) -> tuple[int, ...]:
        """The width D_j of each of k tables for an output of width D (default: all D)."""
        return (embedding_dim,) * k

    def output_width(self, widths: Sequence[int]) -> int:
        """D from the tables' widths (default: the common width)."""
        return widths[0]

    def accepts_widths(self, widths: Sequence[int], embedding_dim: int) -> bool:
        """Whether tables of these widths make vectors of width D (default: all D wide)."""
        return all(w == embedding_dim for w in widths)

    def init_bounds(self, k: int, num_categories: int) -> Bounds:
        """The library's U(lo, hi) for each of k tables (default: the full table's U(-a, a))."""
        a = full_table_bound(num_categories)
        return [(-a, a)] * k

    @abstractmethod
    def combine(self, parts: Sequence[torch.Tensor], out: torch.Tensor | None = None
                ) -> torch.Tensor:
        """k tensors (N, D_j) -> (N, D); written into ``out`` when given."""

    @abstractmethod
    def partial(self, grad: torch.Tensor, parts: Sequence[torch.Tensor] | None, j: int,
                widths: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient reaching part j: grad (N, D) -> (N, D_j).

        ``parts`` are the forward's parts (None when ``needs_parts_for_backward`` is false).
        May return ``grad`` itself (or a view of it) when no arithmetic is needed; writes into
        ``out`` when it computes.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Concat(Operation):
    """Concatenation: the tables split the output width (D = sum D_j)."""

    name = "concat"
    commutes_with_sum_pooling = True
    needs_parts_for_backward = False

    def table_widths(self, embedding_dim: int, k: int, where: str) -> tuple[int, ...]:
        """As equal as possible, wider ones first."""
        if embedding_dim < k:
            raise ValueError(
                f"{where}: concat of {k} tables needs embedding_dim >= {k}, got {embedding_dim}"
            )
        base, extra = divmod(embedding_dim, k)
        return tuple(base + (j < extra) for j in range(k))

    def output_width(self, widths: Sequence[int]) -> int:
        return sum(widths)

    def accepts_widths(self, widths: Sequence[int], embedding_dim: int) -> bool:
        return sum(widths) == embedding_dim

    def combine(self, parts, out=None):
        return torch.cat(list(parts), dim=-1, out=out)

    def partial(self, grad, parts, j, widths, out=None):
        start = sum(widths[:j])
        return grad[..., start : start + widths[j]]


class Add(Operation):
    """Element-wise sum. Init: each of k tables U(-a/sqrt(k), a/sqrt(k)), so the sum has the
    full table's variance."""

    name = "add"
    identity = 0.0
    commutes_with_sum_pooling = True
    needs_parts_for_backward = False
    gradient_is_identity = True

    def init_bounds(self, k: int, num_categories: int) -> Bounds:
        a = full_table_bound(num_categories) / math.sqrt(k)
        return [(-a, a)] * k

    def combine(self, parts, out=None):
        if len(parts) == 1:
            return parts[0].clone() if out is None else out.copy_(parts[0])
        out = torch.add(parts[0], parts[1], out=out)
        for p in parts[2:]:
            out.add_(p)
        return out

    def partial(self, grad, parts, j, widths, out=None):
        return grad


class Mult(Operation):
    """Element-wise product. Init: every table U(-a, a), zero mean, so composed vectors start
    much smaller than the full table's (variance (a^2/3)^k) with independent signs for the
    categories that share a row. Chosen by measurement (``compemb experiment init``,
    docs/movielens/init): it beat a full-scale first table times U(1/2, 3/2) gates (rule
    ``gates``) and zero-mean tables scaled to the full table's variance."""

    name = "mult"
    identity = 1.0

    def combine(self, parts, out=None):
        if len(parts) == 1:
            return parts[0].clone() if out is None else out.copy_(parts[0])
        out = torch.mul(parts[0], parts[1], out=out)
        for p in parts[2:]:
            out.mul_(p)
        return out

    def partial(self, grad, parts, j, widths, out=None):
        assert parts is not None
        others = [p for i, p in enumerate(parts) if i != j]
        if not others:
            return grad
        result = torch.mul(grad, others[0], out=out)
        for p in others[1:]:
            result.mul_(p)
        return result


OPERATIONS: Registry[Operation] = Registry("operation")


def register_operation(operation: Operation) -> Operation:
    """Add an operation to :data:`OPERATIONS` under its ``name`` (a name is taken once)."""
    if not isinstance(operation, Operation):
        raise TypeError(f"register an Operation instance, got {type(operation).__name__}")
    return OPERATIONS.register(operation.name, operation)


def get_operation(name: str) -> Operation:
    """The registered operation called ``name``; raises with the valid names otherwise."""
    return OPERATIONS.lookup(name)


for _op in (Concat(), Add(), Mult()):
    register_operation(_op)


# An init rule: (operation, k, n) -> U(lo, hi) for each of the k tables of a composition; a
# rule registered with takes_width=True also receives D, the composed width (None where a
# caller does not know it).
InitRule = Callable[..., Bounds]


def _library(operation: Operation, k: int, n: int) -> Bounds:
    return operation.init_bounds(k, n)


def _gates(operation: Operation, k: int, n: int) -> Bounds:
    """mult: a first table U(-b, b) times U(1/2, 3/2) gates, b = a / (13/12)^((k-1)/2), so the
    product has the full table's variance (the library's first mult rule); others: library."""
    if operation.name != "mult":
        return operation.init_bounds(k, n)
    b = full_table_bound(n) / (13.0 / 12.0) ** ((k - 1) / 2)
    return [(-b, b)] + [(0.5, 1.5)] * (k - 1)


def _reference(operation: Operation, k: int, n: int) -> Bounds:
    """The reference implementation's U(sqrt(1/n), 1) for every table (all positive)."""
    return [(full_table_bound(n), 1.0)] * k


def _zero_mean(operation: Operation, k: int, n: int) -> Bounds:
    """U(-a, a) for every table, whatever the operation (the naive choice)."""
    a = full_table_bound(n)
    return [(-a, a)] * k


def _unit_tail(operation: Operation, k: int, n: int) -> Bounds:
    """mult: the first table U(-b, b), b = a * 3^((k-1)/2), every other table U(-1, 1): zero-mean
    everywhere, the product at the full table's variance a^2/3, and no factor near zero (the
    library's U(-a, a) factors start at a saddle when a = sqrt(1/n) is tiny: README, seed spread);
    others: library."""
    if operation.name != "mult":
        return operation.init_bounds(k, n)
    b = full_table_bound(n) * 3.0 ** ((k - 1) / 2)
    return [(-b, b)] + [(-1.0, 1.0)] * (k - 1)


def _unit_norm(operation: Operation, k: int, n: int, d: int | None = None) -> Bounds:
    """Composed vectors of norm about 1 (each coordinate variance 1/D), the scale recipes
    written for unit-norm embeddings assume (CCE's GMF with AdamW): every table U(-c, c), zero
    mean, with c chosen per operation. mult: the product of k factors of variance c^2/3 has
    variance (c^2/3)^k = 1/D, so c = sqrt(3) * D^(-1/(2k)); add: k terms of variance 1/(kD),
    c = sqrt(3/(kD)); concat: c = sqrt(3/D). Independent of n, unlike every other rule."""
    if d is None:
        raise ValueError(f"init rule unit_norm scales with the composed width D; call "
                         f"table_bounds(..., embedding_dim=D) (operation {operation.name!r})")
    if operation.name == "mult":
        c = math.sqrt(3.0) * d ** (-1.0 / (2 * k))
    elif operation.name == "add":
        c = math.sqrt(3.0 / (k * d))
    elif operation.name == "concat":
        c = math.sqrt(3.0 / d)
    else:
        raise ValueError(f"init rule unit_norm knows mult, add and concat, not "
                         f"{operation.name!r}")
    return [(-c, c)] * k


INIT_RULES: Registry[InitRule] = Registry("init rule")


def register_init_rule(name: str, rule: InitRule, *, takes_width: bool = False) -> InitRule:
    """Add a rule to :data:`INIT_RULES` (a name is taken once). A rule is called
    ``rule(operation, k, n)``, or ``rule(operation, k, n, D)`` with ``takes_width``."""
    if not takes_width:
        def narrow(operation: Operation, k: int, n: int, d: int | None = None) -> Bounds:
            return rule(operation, k, n)

        narrow.__doc__ = rule.__doc__
        INIT_RULES.register(name, narrow)
        return rule
    return INIT_RULES.register(name, rule)


def get_init_rule(name: str) -> InitRule:
    """The registered init rule called ``name``; raises with the valid names otherwise."""
    return INIT_RULES.lookup(name)


for _name, _rule in (("default", _library), ("gates", _gates), ("reference", _reference),
                     ("zero_mean", _zero_mean), ("unit_tail", _unit_tail)):
    register_init_rule(_name, _rule)
register_init_rule("unit_norm", _unit_norm, takes_width=True)


def table_bounds(operation: Operation, k: int, num_categories: int, init: str = "default",
                 embedding_dim: int | None = None) -> Bounds:
    """U(lo, hi) of each of k composed tables under rule ``init``: the one place modules, the
    collection and the TorchRec collection get their bounds from. ``embedding_dim`` is the
    composed width D (needed by ``unit_norm``)."""
    bounds = get_init_rule(init)(operation, k, num_categories, embedding_dim)
    if len(bounds) != k:
        raise ValueError(f"init rule {init!r} gave {len(bounds)} bounds for {k} tables")
    return list(bounds)
