"""Mixed-dimension embeddings (Ginart et al.; the reference DLRM's ``--md-flag``): each feature
a table of its own width w <= D, from the alpha power rule over every feature's cardinality
(:func:`~compemb.embeddings.mixed_dim.md_widths`), projected to D by a bias-free (D, w) matrix
(none where w == D) as the reference's ``PrEmbeddingBag``; ``bias`` adds one (the CCE authors'
low-dimension-plus-linear variant has it).

The widths depend on all features at once, so a feature planned alone gets the width the rule
gives a collection of one (the base width, or the table budget over n), and
``MixedDimScheme.plan_collection`` replans the features of a collection together: over every
feature, those kept full by ``threshold`` included, as the reference runs ``md_solver`` over
all of them (d0 goes to the smallest feature of all) and then keeps the features at or below
``--md-threshold`` at width D with no projection.
"""

from __future__ import annotations

import dataclasses
import warnings
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
    init_bias,
    init_projection,
    md_table_bounds,
    md_widths,
    projection_rule,
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
        table_budget: B, the target sum of n_i w_i over the features (the tables' parameters,
            projections not counted; the reference's ``md_solver(B=...)``), instead of
            ``base_width``. It was ``budget`` until ``model.embedding.budget`` (a memory budget
            of any scheme) took that name; an integer ``budget`` of scheme md is still read
            as this, with a FutureWarning.
        round_pow2: round each width to the nearest power of 2 (the reference's ``round_dim``).
        multiple_of: round each width up to a multiple of this (4: shardable by TorchRec).
        init: ``reference`` (the full table's U(-a, a), Xavier projection), ``xavier``,
            ``unit_norm`` or ``ldim`` (the CCE authors' draws)
            (:class:`~compemb.embeddings.mixed_dim.MixedDimEmbeddingBag`).
        bias: give each projection a (D,) bias, ``nn.Linear``'s draw (the CCE authors'
            ``LowDimensionalEmbedding``); the reference's projection has none.
        widths_over_all: plan the widths over every feature of the collection, those kept
            full by ``threshold`` included (the reference's ``md_solver`` then
            ``md_threshold``); False: over the compressed features only, so d0 goes to the
            smallest compressed feature and the others come out wider (compemb's planning
            before this setting existed: its MD checkpoints with a threshold load with False).
    """

    alpha: float = 0.3
    base_width: int | None = None
    table_budget: int | None = None
    round_pow2: bool = False
    multiple_of: int = 1
    init: str = "reference"
    bias: bool = False
    widths_over_all: bool = True

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {a!r}")
        for name in ("base_width", "table_budget", "multiple_of"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.base_width is not None and self.table_budget is not None:
            raise ValueError(f"give base_width or table_budget, not both (base_width="
                             f"{self.base_width}, table_budget={self.table_budget})")
        for name in ("round_pow2", "bias", "widths_over_all"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be true or false, got {v!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def _widths(settings: MixedDimSettings, cardinalities: Sequence[int], embedding_dim: int
            ) -> list[int]:
    """Each feature's width by the power rule, at most D."""
    s = settings
    base = None if s.table_budget is not None else (s.base_width or embedding_dim)
    widths = md_widths(cardinalities, s.alpha, base_width=base, budget=s.table_budget,
                       round_pow2=s.round_pow2, multiple_of=s.multiple_of)
    return [min(w, embedding_dim) for w in widths]


def _params(settings: MixedDimSettings, num_categories: int, embedding_dim: int, width: int
            ) -> list[ParamPlan]:
    """The (n, w) table and, where w < D, the (D, w) projection and its bias (``bias``)."""
    table = ParamPlan("weight", (num_categories, width), "table",
                      md_table_bounds(settings.init, num_categories, width))
    if width == embedding_dim:
        return [table]
    projection = ParamPlan("projection", (embedding_dim, width), "dense",
                           projection_rule(settings.init))
    if not settings.bias:
        return [table, projection]
    return [table, projection, ParamPlan("bias", (embedding_dim,), "dense", "linear_bias")]


class _Projection(nn.Module):
    """A feature's projection alone, data-parallel on TorchRec: looked-up rows (N, w) -> (N, D)
    (and its bias, added to each row)."""

    def __init__(self, embedding_dim: int, width: int, init: str, bias: bool,
                 device: torch.device | str | None = None):
        super().__init__()
        self.projection = nn.Parameter(torch.empty(embedding_dim, width, device=device))
        init_projection(self.projection, init, embedding_dim)
        self.bias = nn.Parameter(torch.empty(embedding_dim, device=device)) if bias else None
        if self.bias is not None:
            init_bias(self.bias, width)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return rows @ self.projection.t()
        return torch.addmm(self.bias, rows, self.projection.t())


def _project(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
             module: nn.Module | None) -> list[torch.Tensor]:
    return [parts[0] if module is None else module(parts[0])]


class MixedDimScheme(Scheme):
    """A table of width w per feature, widths planned across the collection, and a projection."""

    name = "md"
    settings_type = MixedDimSettings
    knob = "base_width"
    knob_grows = True
    sizes = ("base_width", "table_budget")
    takes_order = False
    plans_every_feature = True

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        return P.remainder(num_categories, num_categories)

    def knob_limit(self, cardinalities: Sequence[int], embedding_dim: int) -> int:
        return embedding_dim  # the smallest feature's width, at most D

    def upgrade_settings(self, given: dict[str, Any]) -> dict[str, Any]:
        # An integer was MD's own target sum of n w; a memory budget of the whole layer is a
        # ratio, a count written as text ("2e6") or bytes, or any count once this reading ends.
        old = given.get("budget")
        if isinstance(old, bool) or not isinstance(old, int):
            return given
        if given.get("table_budget") is not None:
            raise ValueError(f"scheme 'md': give table_budget={given['table_budget']} or the "
                             f"old budget={old}, not both")
        warnings.warn(f"scheme 'md': budget={old} is read as table_budget={old} (MD's target "
                      f"sum of n w, renamed); write table_budget. In a later version an integer "
                      f"budget will be a parameter budget of the whole embedding layer",
                      FutureWarning, stacklevel=3)
        return {**{k: v for k, v in given.items() if k != "budget"}, "table_budget": old,
                "budget": None}

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # a feature at width D is its full table, as the reference keeps it; ``threshold``
        # keeps small features full before the widths are planned
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        (width,) = _widths(spec.settings, [num_categories], embedding_dim)
        return None, _params(spec.settings, num_categories, embedding_dim, width)

    def plan_collection(self, plans: list[FeaturePlan]) -> list[FeaturePlan]:
        ours = [f for f, p in enumerate(plans) if p.scheme is self]
        if not ours:
            return plans
        settings, d = plans[ours[0]].spec.settings, plans[0].embedding_dim
        over = range(len(plans)) if settings.widths_over_all else ours
        widths = dict(zip(over, _widths(settings, [plans[f].num_categories for f in over], d),
                          strict=True))
        out = list(plans)
        for f in ours:
            p = plans[f]
            out[f] = dataclasses.replace(p, params=(
                *_params(settings, p.num_categories, d, widths[f]), *p.maps))
        return out

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        s = plan.spec.settings
        return MixedDimEmbeddingBag(plan.num_categories, plan.embedding_dim,
                                    plan.tables[0].width, init=s.init, bias=s.bias, **common)

    def stacking(self, plan: FeaturePlan) -> MixedDimStack | TableStack | str:
        # a feature kept at width D has no projection: it is a full table
        if plan.tables[0].width == plan.embedding_dim:
            return TableStack.of(plan, "add")
        if plan.spec.settings.bias:
            return "a projection bias (bias: true) is per feature: one module each"
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
        s = plan.spec.settings
        on = "cpu" if device is not None and torch.device(device).type == "meta" else device
        # a bias-free projection is linear: it commutes with sum and mean pooling, so rows
        # are looked up pooled and projected once per bag. With a bias a bag of L ids holds
        # L b (its weights' sum times b): projected per id, then pooled.
        return TorchRecPlan(not s.bias, 1, _project, _Projection(d, w, s.init, s.bias, on))

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        size = f"B={s.table_budget}" if s.table_budget is not None else \
            f"d0={s.base_width if s.base_width is not None else 'D'}"
        return f"md alpha={s.alpha} {size}", s.init + (" +bias" if s.bias else "")


__all__ = [
    "MixedDimScheme",
    "MixedDimSettings",
]
