"""Mixed-dimension embeddings (Ginart et al.; the reference DLRM's ``--md-flag``): each feature
a table of its own width w <= D, from the alpha power rule over every feature's cardinality
(:func:`~compemb.embeddings.mixed_dim.md_widths`), projected to D by a bias-free (D, w) matrix
(none where w == D).

The widths depend on all features at once, so a feature planned alone gets the width the rule
gives a collection of one (the base width, or the budget over n), and
``MixedDimScheme.plan_collection`` replans the features of a collection together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched import TableStack
from compemb.embeddings.batched_md import MixedDimStack
from compemb.embeddings.mixed_dim import (
    INITS,
    MixedDimEmbeddingBag,
    init_projection,
    md_table_bounds,
    md_widths,
)
from compemb.operations import Operation
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan

# FBGEMM's sharded kernels take tables whose width is a multiple of this; others stay
# data-parallel, a whole copy per rank.
SHARDABLE_WIDTH = 4


@dataclass(frozen=True)
class MixedDimSettings:
    """The settings of mixed-dimension embeddings.

    Attributes:
        alpha: the power rule's exponent (>= 0; 0: every feature the same width).
        base_width: d0, the width of the feature of fewest categories (default: D, as the
            reference's DLRM runs); or
        budget: B, the target sum of n_i w_i over the features, instead of ``base_width``.
        round_pow2: round each width to the nearest power of 2 (the reference's ``round_dim``).
        multiple_of: round each width up to a multiple of this (4: shardable by TorchRec).
        init: ``reference`` (the full table's U(-a, a), Xavier projection), ``xavier`` or
            ``unit_norm`` (:class:`~compemb.embeddings.mixed_dim.MixedDimEmbeddingBag`).
    """

    alpha: float = 0.3
    base_width: int | None = None
    budget: int | None = None
    round_pow2: bool = False
    multiple_of: int = 1
    init: str = "reference"

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {a!r}")
        for name in ("base_width", "budget", "multiple_of"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.base_width is not None and self.budget is not None:
            raise ValueError(f"give base_width or budget, not both (base_width="
                             f"{self.base_width}, budget={self.budget})")
        if not isinstance(self.round_pow2, bool):
            raise ValueError(f"round_pow2 must be true or false, got {self.round_pow2!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def _widths(settings: MixedDimSettings, cardinalities: Sequence[int], embedding_dim: int
            ) -> list[int]:
    """Each feature's width by the power rule, at most D."""
    s = settings
    base = None if s.budget is not None else (s.base_width or embedding_dim)
    widths = md_widths(cardinalities, s.alpha, base_width=base, budget=s.budget,
                       round_pow2=s.round_pow2, multiple_of=s.multiple_of)
    return [min(w, embedding_dim) for w in widths]


def _params(settings: MixedDimSettings, num_categories: int, embedding_dim: int, width: int
            ) -> list[ParamPlan]:
    """The (n, w) table and, where w < D, the (D, w) projection."""
    table = ParamPlan("weight", (num_categories, width), "table",
                      md_table_bounds(settings.init, num_categories, width))
    if width == embedding_dim:
        return [table]
    rule = "unit_norm" if settings.init == "unit_norm" else "xavier_uniform"
    return [table, ParamPlan("projection", (embedding_dim, width), "dense", rule)]


class _Projection(nn.Module):
    """A feature's projection alone, data-parallel on TorchRec: looked-up rows (N, w) -> (N, D)."""

    def __init__(self, embedding_dim: int, width: int, init: str,
                 device: torch.device | str | None = None):
        super().__init__()
        self.projection = nn.Parameter(torch.empty(embedding_dim, width, device=device))
        init_projection(self.projection, init, embedding_dim)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.projection.t()


def _project(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
             module: nn.Module | None) -> list[torch.Tensor]:
    return [parts[0] if module is None else module(parts[0])]


class MixedDimScheme(Scheme):
    """A table of width w per feature, widths planned across the collection, and a projection."""

    name = "md"
    settings_type = MixedDimSettings
    knob = "base_width"
    knob_grows = True
    sizes = ("base_width", "budget")
    takes_order = False

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        return P.remainder(num_categories, num_categories)

    def knob_limit(self, cardinalities: Sequence[int], embedding_dim: int) -> int:
        return embedding_dim  # the smallest feature's width, at most D

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # a feature at width D is its full table, as the reference keeps it; ``threshold``
        # keeps small features full before the widths are planned
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        (width,) = _widths(spec.settings, [num_categories], embedding_dim)
        return None, _params(spec.settings, num_categories, embedding_dim, width)

    def plan_collection(self, plans: list[FeaturePlan]) -> list[FeaturePlan]:
        settings, d = plans[0].spec.settings, plans[0].embedding_dim
        widths = _widths(settings, [p.num_categories for p in plans], d)
        return [dataclasses.replace(p, params=(*_params(settings, p.num_categories, d, w),
                                               *p.maps))
                for p, w in zip(plans, widths, strict=True)]

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        return MixedDimEmbeddingBag(plan.num_categories, plan.embedding_dim,
                                    plan.tables[0].width, init=plan.spec.settings.init, **common)

    def stacking(self, plan: FeaturePlan) -> MixedDimStack | TableStack | str:
        # a feature kept at width D has no projection: it is a full table
        if plan.tables[0].width == plan.embedding_dim:
            return TableStack.of(plan, "add")
        return MixedDimStack(plan.embedding_dim)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        w, d = plan.tables[0].width, plan.embedding_dim
        if w % SHARDABLE_WIDTH and w != d:
            raise ValueError(
                f"scheme 'md': a table of width {w} (feature of {plan.num_categories} "
                f"categories) is not a multiple of {SHARDABLE_WIDTH}, which FBGEMM needs to "
                f"shard it (it would be copied whole to every rank); set multiple_of="
                f"{SHARDABLE_WIDTH} to round the widths up (counted in the plan)")
        if w == d:
            return TorchRecPlan(True, 1, _project)
        # the projection is linear and bias-free: it commutes with sum and mean pooling
        on = "cpu" if device is not None and torch.device(device).type == "meta" else device
        return TorchRecPlan(True, 1, _project, _Projection(d, w, plan.spec.settings.init, on))

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        size = f"B={s.budget}" if s.budget is not None else \
            f"d0={s.base_width if s.base_width is not None else 'D'}"
        return f"md alpha={s.alpha} {size}", s.init


__all__ = [
    "MixedDimScheme",
    "MixedDimSettings",
]
