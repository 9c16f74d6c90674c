"""Mixed-dimension features looked up together: one stacked table and one stacked projection per
width.

G features with tables (n_f, w_f), w_f < D, and projections (D, w_f). The features of one width
w share a table (sum n_f, w) (feature f's rows from a row offset) and a projection tensor
(G_w, D, w): a batch costs one gather and one batched matmul per distinct width (about 10 at
alpha 0.3, at most 4 with ``multiple_of: 4``), whatever the number of features. Features whose
plan keeps width D (no projection) stack with the full tables instead
(``compemb.embeddings.batched.TableStack``).

Letters: B batch, G features, D width, w a table's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compemb.embeddings._fused import assemble, compose_lookup
from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS
from compemb.embeddings.mixed_dim import init_projection
from compemb.embeddings.stacked import Columns, StackedGroup, StackKey, columns_of
from compemb.operations import get_operation

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

__all__ = ["MixedDimGroup", "MixedDimStack"]

_ONE = get_operation("add")  # one table: the lookup's rows as they are


@dataclass(frozen=True)
class MixedDimStack(StackKey):
    """The key of the MD features of width < D that project to ``embedding_dim``."""

    embedding_dim: int

    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> MixedDimGroup:
        return MixedDimGroup(plans, sparse=sparse, device=device, dtype=dtype)


class MixedDimGroup(StackedGroup):
    """G mixed-dimension features, one stacked table and projection per width.

    The tables take their plan's bounds and the projections their plan's rule (``xavier_uniform``
    or ``unit_norm``), as :class:`~compemb.embeddings.mixed_dim.MixedDimEmbeddingBag` draws them.

    Shapes: ids (B, G) -> (B, G, D).
    """

    def __init__(self, plans: Sequence[FeaturePlan], *, sparse: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.plans = tuple(plans)
        d = self.plans[0].embedding_dim
        self.embedding_dim = d
        width = [p.tables[0].width for p in self.plans]
        self.widths = tuple(sorted(set(width)))
        # per width: its features (positions in the group) and their row offsets
        self._members = [[f for f, w in enumerate(width) if w == v] for v in self.widths]
        self._where = {f: (i, j) for i, fs in enumerate(self._members) for j, f in enumerate(fs)}
        self._starts = [[sum(self.plans[g].num_categories for g in fs[:j]) for j in range(len(fs))]
                        for fs in self._members]  # fmt: skip
        kw = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(sum(self.plans[f].num_categories for f in fs), v, **kw))
            for v, fs in zip(self.widths, self._members, strict=True))
        self.projections = nn.ParameterList(
            nn.Parameter(torch.empty(len(fs), d, v, **kw))
            for v, fs in zip(self.widths, self._members, strict=True))
        self._sparse = tuple(sparse and w.shape[0] > DENSE_GRAD_MAX_ROWS for w in self.weights)
        for i, (fs, starts) in enumerate(zip(self._members, self._starts, strict=True)):
            self.register_buffer(f"_cols{i}", torch.tensor(fs, device=device), persistent=False)
            self.register_buffer(f"_start{i}", torch.tensor(starts, device=device),
                                 persistent=False)
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return sum(p.num_categories for p in self.plans)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for f, plan in enumerate(self.plans):
                table, projection = self.tables(f)
                table.uniform_(*plan.tables[0].bounds)
                init_projection(projection, plan.dense[0].init, self.embedding_dim)

    def tables(self, i: int) -> list[torch.Tensor]:
        w, j = self._where[i]
        s = self._starts[w][j]
        return [self.weights[w][s : s + self.plans[i].num_categories], self.projections[w][j]]

    def table_parameters(self) -> list[nn.Parameter]:
        return list(self.weights)

    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        keys = []
        for i, f in enumerate(features):
            w, j = self._where[i]
            s, n = self._starts[w][j], self.plans[i].num_categories
            table, projection = (p.name for p in self.plans[i].params if p.role != "map")
            keys += [(f"features.{f}.{table}", f"{prefix}.weights.{w}", slice(s, s + n)),
                     (f"features.{f}.{projection}", f"{prefix}.projections.{w}", j)]
        return keys

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of the group's features ``members`` (all when None) -> (B, G', D)."""
        cols: Columns = slice(None) if members is None else members
        pieces, slots = [], []
        for w in range(len(self.widths)):
            if isinstance(cols, slice):
                at, picked = getattr(self, f"_cols{w}"), slice(None)
            else:
                where, picked = columns_of(cols, self._members[w])
                if not where:
                    continue
                at = torch.tensor(where, device=ids.device)
            buckets = ids.index_select(1, at) + getattr(self, f"_start{w}")[picked]
            rows = compose_lookup(_ONE, [buckets], [self.weights[w]], [self._sparse[w]])
            # (B, G_w, w) x (G_w, D, w) -> (B, G_w, D): one batched matmul over the features
            pieces.append(torch.einsum("bgw,gdw->bgd", rows, self.projections[w][picked]))
            slots.append(at)
        if isinstance(cols, slice) and len(pieces) == 1:
            return pieces[0]
        return assemble(pieces, slots, ids.shape[1])
