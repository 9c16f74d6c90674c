"""Block mixed-dimension embeddings (``scheme: md_block``; Ginart et al.'s popularity blocks):
mixed widths inside each feature. The feature's categories, ranked by their training count
(``order: frequency``, required), are cut into blocks of geometrically growing size
(:func:`~compemb.embeddings.mixed_dim.frequency_blocks`: starts ceil(n^(b/K))), and block b is a
table of width w_b <= D with its own bias-free projection to D
(:class:`~compemb.embeddings.mixed_dim.BlockMixedDimEmbeddingBag`).

Widths come from the blocks' sizes alone (:func:`~compemb.embeddings.mixed_dim.size_block_widths`:
the head block at the base width d0, the others by the alpha power rule, a block whose
projection would not pay kept at D), so a layout is sized without counts and ``fit_budget``
turns d0 (the knob; the size grows with it). The counts decide only which category sits in
which block: the ranks are the ``relabel`` map of ``order: frequency`` (4 bytes a category),
saved with the feature.

On TorchRec each block's table is a stock table (widths multiples of 4, ``multiple_of: 4``) and
the projections and ranks are data-parallel: an id reads one row of its own block's table.
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
    BlockMixedDimEmbeddingBag,
    frequency_blocks,
    init_projection,
    md_table_bounds,
    projection_rule,
    size_block_widths,
)
from compemb.operations import Operation
from compemb.partitions import PartitionSet, relabel_dtype
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.schemes.mixed_dim import SHARDABLE_WIDTH
from compemb.spec import EmbeddingSpec, FeaturePlan

__all__ = ["BlockMixedDimScheme", "BlockMixedDimSettings", "data_parallel_device", "plan_ranks"]


@dataclass(frozen=True)
class BlockMixedDimSettings:
    """The settings of block mixed-dimension embeddings.

    Attributes:
        alpha: the power rule's exponent (>= 0; 0: every block at d0).
        num_blocks: K, blocks per feature (fewer where their starts coincide on a small
            feature).
        base_width: d0, the head block's width (default D); the ``fit_budget`` knob.
        multiple_of: round each width up to a multiple of this (4: shardable by TorchRec).
        init: ``reference``, ``xavier``, ``unit_norm`` or ``ldim``, per block as
            :class:`~compemb.embeddings.mixed_dim.MixedDimEmbeddingBag`.
    """

    alpha: float = 0.3
    num_blocks: int = 4
    base_width: int | None = None
    multiple_of: int = 1
    init: str = "reference"

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {a!r}")
        for name in ("num_blocks", "base_width", "multiple_of"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def _layout(spec: EmbeddingSpec, num_categories: int, embedding_dim: int
            ) -> tuple[tuple[int, ...], list[int]]:
    """The block starts and widths of a feature of n categories."""
    s = spec.settings
    starts = frequency_blocks(num_categories, s.num_blocks)
    return starts, size_block_widths(starts, embedding_dim, s.alpha, s.base_width,
                                     s.multiple_of)


def plan_ranks(plan: FeaturePlan) -> torch.Tensor:
    """The frequency rank of every category of a planned feature ((n,), the ``relabel`` map of
    ``order: frequency``, stored as :func:`~compemb.partitions.relabel_dtype` says)."""
    ranks = plan.partitions.relabeling()
    if ranks is None:
        raise ValueError(f"scheme {plan.spec.scheme!r}: this plan holds no frequency ranks (a "
                         f"sizing plan); plan the feature with its counts to build it")
    return ranks.to(relabel_dtype(plan.num_categories))


def data_parallel_device(device: torch.device | str | None) -> torch.device | str | None:
    """Where a route's data-parallel module is built: the CPU when the tables go to meta."""
    return "cpu" if device is not None and torch.device(device).type == "meta" else device


class _BlockRoute(nn.Module):
    """A block MD feature's data-parallel part on TorchRec: its ranks (``relabel``) and the
    blocks' projections. :meth:`lookup` gives every id a row in each block's table (clamped,
    unused outside its block) and its block; :meth:`combine` keeps each id's own block."""

    def __init__(self, plan: FeaturePlan, starts: Sequence[int], widths: Sequence[int],
                 device: torch.device | str | None):
        super().__init__()
        d = plan.embedding_dim
        self.register_buffer("relabel", plan_ranks(plan).to(device))
        self.register_buffer("starts", torch.tensor(starts, device=device), persistent=False)
        self.bounds = tuple(zip(starts[:-1], starts[1:], strict=True))  # Python ints: no sync
        self.projections = nn.ParameterDict({
            str(j): nn.Parameter(torch.empty(d, w, device=device))
            for j, w in enumerate(widths) if w != d})
        for p in self.projections.values():
            init_projection(p, plan.spec.settings.init, d)

    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """ids (N,) -> K rows (N,), one per block's table, then each id's block (N,)."""
        rank = self.relabel[ids].long()
        block = torch.bucketize(rank, self.starts[1:-1], right=True)
        return [*((rank - a).clamp(0, b - a - 1) for a, b in self.bounds), block]

    @staticmethod
    def combine(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                module: nn.Module | None) -> list[torch.Tensor]:
        """Each block's rows (N, w_b) projected, each id's own block kept: -> [(N, D)]."""
        (block,) = rest
        out = None
        for j, rows in enumerate(parts):
            p = module.projections.get(str(j))
            v = rows if p is None else rows @ p.t()
            out = v if out is None else torch.where((block == j).unsqueeze(1), v, out)
        return [out]


def _cut(plan: FeaturePlan) -> tuple[list[Part], list[str]]:
    """The blocks of a planned feature as stacked parts, and its module's parameter order."""
    d, parts, start = plan.embedding_dim, [], 0
    for j, table in enumerate(plan.tables):
        parts.append(Part(start, start + table.rows, table.width, (table.name,),
                          None if table.width == d else f"projections.{j}"))
        start += table.rows
    return parts, [p.name for p in plan.params if p.role != "map"]


class BlockMixedDimScheme(Scheme):
    """Frequency blocks of falling width per feature, each projected to D; knob: d0."""

    name = "md_block"
    settings_type = BlockMixedDimSettings
    knob = "base_width"
    knob_grows = True
    sizes = ("base_width",)

    def check(self, spec: EmbeddingSpec) -> None:
        super().check(spec)
        if spec.order != "frequency":
            raise ValueError(f"scheme 'md_block' lays its blocks over frequency ranks: set "
                             f"order: frequency (ranks from the training split's counts), got "
                             f"order={spec.order!r}")

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        return P.remainder(num_categories, num_categories)  # the ranks index the blocks

    def knob_limit(self, cardinalities: Sequence[int], embedding_dim: int) -> int:
        return embedding_dim

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # a block whose projection would not pay is kept at D: never more than the full table
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        n, d = num_categories, embedding_dim
        starts, widths = _layout(spec, n, d)
        init = spec.settings.init
        tables = [ParamPlan(f"weights.{j}", (b - a, w), "table", md_table_bounds(init, n, w))
                  for j, (a, b, w) in enumerate(zip(starts[:-1], starts[1:], widths,
                                                    strict=True))]
        rule = projection_rule(init)
        projections = [ParamPlan(f"projections.{j}", (d, w), "dense", rule)
                       for j, w in enumerate(widths) if w != d]
        return None, [*tables, *projections]

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        starts, _ = _layout(plan.spec, plan.num_categories, plan.embedding_dim)
        return BlockMixedDimEmbeddingBag(
            plan.num_categories, plan.embedding_dim, plan_ranks(plan), starts,
            [t.width for t in plan.tables], init=plan.spec.settings.init, **common)

    def stacking(self, plan: FeaturePlan) -> PartedStack:
        return PartedStack(plan.embedding_dim, None, _cut)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        d = plan.embedding_dim
        widths = [t.width for t in plan.tables]
        odd = [w for w in widths if w % SHARDABLE_WIDTH and w != d]
        if odd:
            raise ValueError(
                f"scheme 'md_block': block widths {widths} (feature of {plan.num_categories} "
                f"categories) are not all multiples of {SHARDABLE_WIDTH}, which FBGEMM needs "
                f"to shard a table; set multiple_of={SHARDABLE_WIDTH} (counted in the plan)")
        starts, _ = _layout(plan.spec, plan.num_categories, d)
        route = _BlockRoute(plan, starts, widths, data_parallel_device(device))
        return TorchRecPlan(False, 1, _BlockRoute.combine, route, lookup=route.lookup)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        d0 = s.base_width if s.base_width is not None else "D"
        return f"md_block alpha={s.alpha} K={s.num_blocks} d0={d0}", s.init
