"""Mixed dimensions combined with the quotient-remainder trick (``scheme: md_qr``): each feature's
categories ranked by training count (``order: frequency``, required); the h most frequent (the
head) get private rows of width w_h, the rest (the tail) share the rows of QR tables
(quotient ceil((n - h) / c), remainder c, composed by ``operation``, mult by default) of width
w_t, and both are projected to D (:class:`~compemb.embeddings.mixed_dim_qr.HeadTailEmbeddingBag`).

MD sets the widths: the head at the base width d0 (default D), the tail by the alpha power rule
over the two blocks' sizes, w_t = round(d0 * (h / (n - h)) ** alpha) (as
:func:`~compemb.embeddings.mixed_dim.size_block_widths` for the blocks [0, h) and [h, n)); a
part whose projection would not pay is kept at D. QR sets the tail's rows. The default head is
ceil(sqrt(n)) (the head block of ``md_block`` with 2 blocks). ``fit_budget`` turns
``collisions`` (the size falls as it grows, then rises, as QR's).

On TorchRec the head and the two tail tables are stock tables (widths multiples of 4:
``multiple_of: 4``), the ranks and projections data-parallel; every id reads a (clamped) row of
each table and keeps the head's or the tail's vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched_parts import Part, PartedStack
from compemb.embeddings.mixed_dim import (
    INITS,
    frequency_blocks,
    init_projection,
    md_table_bounds,
    projection_pays,
    projection_rule,
)
from compemb.embeddings.mixed_dim_qr import HeadTailEmbeddingBag
from compemb.operations import OPERATIONS, Operation, get_operation
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan, check_sizes
from compemb.schemes.block_mixed_dim import data_parallel_device, plan_ranks
from compemb.schemes.compose import compose_params
from compemb.schemes.mixed_dim import SHARDABLE_WIDTH
from compemb.spec import EmbeddingSpec, FeaturePlan

__all__ = ["MixedDimQRScheme", "MixedDimQRSettings"]


@dataclass(frozen=True)
class MixedDimQRSettings:
    """The settings of MD + QR.

    Attributes:
        operation: the tail's composition (mult, add, concat).
        collisions: c, tail categories per quotient row; the ``fit_budget`` knob.
        head: h, the most frequent categories with private rows (default ceil(sqrt(n))).
        alpha: the power rule's exponent for the tail's width (0: the tail at d0).
        base_width: d0, the head's width (default D).
        multiple_of: round each width up to a multiple of this (4: shardable by TorchRec).
        init: the head's and projections' rule (``reference``, ``xavier``, ``unit_norm``,
            ``ldim``, as :class:`~compemb.embeddings.mixed_dim.MixedDimEmbeddingBag`); the
            tail's tables follow the operation's own rule.
    """

    operation: str = "mult"
    collisions: int | None = None
    head: int | None = None
    alpha: float = 0.3
    base_width: int | None = None
    multiple_of: int = 1
    init: str = "reference"

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {tuple(OPERATIONS)}, got "
                             f"{self.operation!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {a!r}")
        for name in ("head", "base_width", "multiple_of"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def _head(spec: EmbeddingSpec, num_categories: int) -> int:
    h = spec.settings.head
    return frequency_blocks(num_categories, 2)[1] if h is None else h


def _tail_tables(spec: EmbeddingSpec, tail: int, width: int) -> tuple[Operation, list[ParamPlan]]:
    s = spec.settings
    op, tables = compose_params(get_operation(s.operation), "default", "md_qr tail", tail,
                                width, P.quotient_remainder(tail, s.collisions))
    return op, [ParamPlan(f"tail.{t.name}", t.shape, t.role, t.init) for t in tables]


def _round_up(width: int, multiple_of: int) -> int:
    return -(-width // multiple_of) * multiple_of


def _layout(spec: EmbeddingSpec, n: int, d: int) -> tuple[int, int, int]:
    """(h, w_h, w_t) of a feature of n categories (module docstring)."""
    s, h = spec.settings, _head(spec, n)
    d0 = d if s.base_width is None else min(s.base_width, d)
    w_head = min(d, _round_up(d0, s.multiple_of))
    if not projection_pays(h, w_head, d):
        w_head = d
    w_tail = min(d, _round_up(max(1, round(d0 * (h / (n - h)) ** s.alpha)), s.multiple_of))
    if w_tail < d:
        narrow = sum(t.numel for t in _tail_tables(spec, n - h, w_tail)[1]) + d * w_tail
        if narrow >= sum(t.numel for t in _tail_tables(spec, n - h, d)[1]):
            w_tail = d  # the projection would not pay
    return h, w_head, w_tail


class _HeadTailRoute(nn.Module):
    """An MD + QR feature's data-parallel part on TorchRec: ranks and projections."""

    def __init__(self, plan: FeaturePlan, head: int, head_width: int, tail_width: int,
                 device: torch.device | str | None):
        super().__init__()
        d, n, s = plan.embedding_dim, plan.num_categories, plan.spec.settings
        self.head, self.operation = head, plan.operation
        self.tail = P.quotient_remainder(n - head, s.collisions)
        self.register_buffer("relabel", plan_ranks(plan).to(device))
        for name, w in (("head_projection", head_width), ("tail_projection", tail_width)):
            p = None if w == d else nn.Parameter(torch.empty(d, w, device=device))
            if p is not None:
                init_projection(p, s.init, d)
            setattr(self, name, p)

    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """ids (N,) -> rows (N,) of the head, quotient and remainder tables, then whether
        each id is in the head (N,)."""
        rank = self.relabel[ids].long()
        tail = self.tail.buckets((rank - self.head).clamp(min=0))
        return [rank.clamp(max=self.head - 1), *tail, rank < self.head]

    @staticmethod
    def combine(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                module: nn.Module | None) -> list[torch.Tensor]:
        """The head's rows (N, w_h) and the tail's (N, .) -> each id's projected vector."""
        (in_head,) = rest
        head, tail = parts[0], module.operation.combine(parts[1:])
        if module.head_projection is not None:
            head = head @ module.head_projection.t()
        if module.tail_projection is not None:
            tail = tail @ module.tail_projection.t()
        return [torch.where(in_head.unsqueeze(1), head, tail)]


def _cut(plan: FeaturePlan) -> tuple[list[Part], list[str]]:
    """The head and the tail of a planned feature as stacked parts, and its module's parameter
    order (the head's, the projections, then the tail module's tables)."""
    named = {p.name: p for p in plan.params}
    head, quotient, remainder = (named[n] for n in ("head_weight", "tail.weights.0",
                                                    "tail.weights.1"))
    h, n = head.rows, plan.num_categories
    tail_width = plan.operation.output_width([quotient.width, remainder.width])
    projections = [name for name in ("head_projection", "tail_projection") if name in named]
    parts = [Part(0, h, head.width, (head.name,), "head_projection" if "head_projection" in
                  named else None),
             Part(h, n, tail_width, (quotient.name, remainder.name),
                  "tail_projection" if "tail_projection" in named else None, remainder.rows)]
    return parts, [head.name, *projections, quotient.name, remainder.name]


class MixedDimQRScheme(Scheme):
    """A frequent head of private rows and a QR tail, widths by the MD rule; knob: c."""

    name = "md_qr"
    settings_type = MixedDimQRSettings
    sizes = ("collisions",)

    def make_settings(self, given: dict[str, Any]) -> MixedDimQRSettings:
        settings = super().make_settings(given)
        check_sizes(self.name, settings.collisions, None, ("collisions",))
        return settings

    def check(self, spec: EmbeddingSpec) -> None:
        super().check(spec)
        if spec.order != "frequency":
            raise ValueError(f"scheme 'md_qr' keeps private rows for the most frequent "
                             f"categories: set order: frequency (ranks from the training "
                             f"split's counts), got order={spec.order!r}")

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        return P.remainder(num_categories, num_categories)  # the ranks pick head or tail

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        n, h, c = num_categories, _head(spec, num_categories), spec.settings.collisions
        if n - h < 2 or c >= n - h:
            return (f"md_qr head={h}, collisions={c} for num_categories={n}: the tail of "
                    f"{n - h} categories needs more than c of them")
        rows = h + P.quotient_remainder(n - h, c).num_buckets
        if rows >= n:
            return (f"md_qr head={h}, collisions={c} for num_categories={n} holds {rows} "
                    f"rows, no fewer than the full table's {n}")
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        n, d, init = num_categories, embedding_dim, spec.settings.init
        h, w_head, w_tail = _layout(spec, n, d)
        op, tail = _tail_tables(spec, n - h, w_tail)
        rule = projection_rule(init)
        params = [ParamPlan("head_weight", (h, w_head), "table", md_table_bounds(init, n, w_head)),
                  *tail]
        params += [ParamPlan(name, (d, w), "dense", rule) for name, w in
                   (("head_projection", w_head), ("tail_projection", w_tail)) if w != d]
        return op, params

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        h, w_head, w_tail = _layout(plan.spec, plan.num_categories, plan.embedding_dim)
        s = plan.spec.settings
        return HeadTailEmbeddingBag(
            plan.num_categories, plan.embedding_dim, plan_ranks(plan), head=h, head_width=w_head,
            tail_width=w_tail, collisions=s.collisions, operation=plan.operation, init=s.init,
            **common)  # fmt: skip

    def stacking(self, plan: FeaturePlan) -> PartedStack:
        return PartedStack(plan.embedding_dim, plan.operation.name, _cut)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        d = plan.embedding_dim
        widths = [t.width for t in plan.tables]
        if any(w % SHARDABLE_WIDTH and w != d for w in widths):
            raise ValueError(
                f"scheme 'md_qr': table widths {widths} (feature of {plan.num_categories} "
                f"categories) are not all multiples of {SHARDABLE_WIDTH}, which FBGEMM needs "
                f"to shard a table; set multiple_of={SHARDABLE_WIDTH} (counted in the plan)")
        h, w_head, w_tail = _layout(plan.spec, plan.num_categories, d)
        route = _HeadTailRoute(plan, h, w_head, w_tail, data_parallel_device(device))
        return TorchRecPlan(False, 1, _HeadTailRoute.combine, route, lookup=route.lookup)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        h = "sqrt(n)" if s.head is None else s.head
        d0 = "D" if s.base_width is None else s.base_width
        return f"md_qr c={s.collisions} h={h} alpha={s.alpha} d0={d0}", s.operation
