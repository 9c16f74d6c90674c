"""TT-Rec features looked up together: each core position's tables stacked over the features, one
pass over the whole batch reading every id's core rows from the stacked tables
(:func:`~compemb.embeddings.tt.tt_lookup` over B G ids).

The features of a group share K, the ranks and the split of D (one spec), so core j has rows
r_{j-1} d_j r_j wide in every feature: feature f's rows of core j follow the earlier features'
(its digits' rows plus a row offset, as ``compemb.embeddings.batched.BucketIndex``
computes them).

Letters: B batch, G features, K cores, D width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS, BucketIndex
from compemb.embeddings.stacked import StackedGroup, StackKey
from compemb.embeddings.tt import tt_lookup

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

__all__ = ["TTGroup", "TTStack"]


@dataclass(frozen=True)
class TTStack(StackKey):
    """The key of TT features with these factors of D and ranks r_0 .. r_K."""

    dims: tuple[int, ...]
    ranks: tuple[int, ...]

    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> TTGroup:
        return TTGroup(plans, self.dims, self.ranks, sparse=sparse, device=device, dtype=dtype)


class TTGroup(StackedGroup):
    """G TT-Rec features, each core position stacked (module docstring). Cores start from
    their plan's N(0, sigma_f^2), sigma_f set by the feature's n, as
    :class:`~compemb.embeddings.tt.TTEmbeddingBag` draws them.

    Shapes: ids (B, G) -> (B, G, D).
    """

    def __init__(self, plans: Sequence[FeaturePlan], dims: Sequence[int], ranks: Sequence[int],
                 *, sparse: bool, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.plans, self.dims, self.ranks = tuple(plans), tuple(dims), tuple(ranks)
        self.index = BucketIndex([p.num_categories for p in self.plans],
                                 [p.partitions.layout() for p in self.plans], device=device)
        k = len(self.dims)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(sum(self.index.rows[j]), ranks[j] * dims[j] * ranks[j + 1],
                                     device=device, dtype=dtype))
            for j in range(k))
        self._sparse = [sparse and w.shape[0] > DENSE_GRAD_MAX_ROWS for w in self.weights]
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i, plan in enumerate(self.plans):
                for core, p in zip(self.tables(i), plan.tables, strict=True):
                    core.normal_(0.0, p.init.std)

    def tables(self, i: int) -> list[torch.Tensor]:
        index = self.index
        return [w[index.starts[j][i] : index.starts[j][i] + index.rows[j][i]]
                for j, w in enumerate(self.weights)]

    def table_parameters(self) -> list[nn.Parameter]:
        return list(self.weights)

    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        keys = []
        for i, f in enumerate(features):
            for j, p in enumerate(self.plans[i].tables):
                s = self.index.starts[j][i]
                keys.append((f"features.{f}.{p.name}", f"{prefix}.weights.{j}",
                             slice(s, s + p.rows)))
        return keys

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of the group's features ``members`` (all when None) -> (B, G', D)."""
        cols = slice(None) if members is None else members
        buckets = self.index.buckets(ids, cols)
        out = tt_lookup(buckets, list(self.weights), self._sparse, self.dims, self.ranks)
        return out.view(*ids.shape, out.shape[-1])  # sizes spelled out: a batch may be empty
