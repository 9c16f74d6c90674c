"""CCE features looked up together: every feature's chunk tables in one stacked table, every
assignment in one stacked map, one gather for the whole batch.

G features with c chunks of width W = D / c each (R_f rows per table may differ). Chunk i of
feature f is rows ``i S + s_f`` to ``i S + s_f + 2 R_f`` of one (c S, W) table, S = sum 2 R_f,
s_f = sum of the earlier features' 2 R_f: an id's 2c rows are read by one gather and summed in
pairs (the fused ``compose_lookup`` with ``add``). The assignments
(sum n_f, c), hashes (G, 2, c) and seen marks (sum n_f,) are stacked the same way; the seen
marks stay rank-local under DDP (``rank_local_buffers``), as the per-feature module's.

Reclustering stays per feature: each member has a child (``_CCEMember``) that owns nothing
and works on views of the stacked tensors with :class:`~compemb.embeddings.cce.CCEEmbeddingBag`'s
own ``recluster``, so the trainer finds the same owners, in the same order, with the same seeds
as with one module per feature.

Letters: B batch, G features, c chunks, W chunk width, n_f categories, R_f rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compemb.embeddings._fused import compose_lookup
from compemb.embeddings._universal import PRIME, hash_coefficients, universal_hash
from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS
from compemb.embeddings.cce import CCEEmbeddingBag
from compemb.embeddings.stacked import StackedGroup, StackKey
from compemb.operations import get_operation

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

__all__ = ["CCEGroup", "CCEStack"]

_ADD = get_operation("add")
_MAP_DTYPES = {1: torch.uint8, 2: torch.uint16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class CCEStack(StackKey):
    """The key of CCE features of ``chunks`` chunks projecting nothing: width D / c."""

    embedding_dim: int
    chunks: int

    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> CCEGroup:
        return CCEGroup(plans, sparse=sparse, device=device, dtype=dtype)


class _CCEMember(nn.Module):
    """One stacked feature as :class:`~compemb.embeddings.cce.CCEEmbeddingBag`'s reclustering
    sees it: views of its tables, assignment, hashes and seen marks in the group's tensors."""

    def __init__(self, group: CCEGroup, i: int):
        super().__init__()
        object.__setattr__(self, "_group", group)  # not a submodule: the group owns this one
        self.i = i
        s = group.plans[i].spec.settings
        self.rows, self.chunks = s.rows, s.chunks
        self.kmeans_iters, self.kmeans_samples = s.kmeans_iters, s.kmeans_samples
        self.kmeans_exact_rows, self.kmeans_max_queries = s.kmeans_exact_rows, s.kmeans_max_queries

    def _span(self) -> slice:
        g = self._group
        return slice(g.id_starts[self.i], g.id_starts[self.i] + g.plans[self.i].num_categories)

    @property
    def seen(self) -> torch.Tensor:
        return self._group.seen[self._span()]

    @property
    def assignment(self) -> torch.Tensor:
        return self._group.assignment[self._span()]

    @property
    def hash_coefficients(self) -> torch.Tensor:
        return self._group.hash_coefficients[self.i]

    @property
    def tables(self) -> list[torch.Tensor]:
        return self._group.tables(self.i)

    def _where(self) -> str:
        return f"CCEGroup feature {self.i}"

    recluster = CCEEmbeddingBag.recluster
    merge_seen = CCEEmbeddingBag.merge_seen
    recluster_table = CCEEmbeddingBag.recluster_table
    table_maps = CCEEmbeddingBag.table_maps


class CCEGroup(StackedGroup):
    """G CCE features with c chunks each, stacked (module docstring).

    Init as :class:`~compemb.embeddings.cce.CCEEmbeddingBag` per feature: tables from their
    plan's bounds, the first assignment and hashes from the feature's seed.

    Shapes: ids (B, G) -> (B, G, D).
    """

    rank_local_buffers = ("seen",)

    def __init__(self, plans: Sequence[FeaturePlan], *, sparse: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.plans = tuple(plans)
        c = self.plans[0].spec.settings.chunks
        width = self.plans[0].embedding_dim // c
        self.chunks = c
        self.rows = [p.spec.settings.rows for p in self.plans]
        self.row_starts = [2 * sum(self.rows[:f]) for f in range(len(self.plans))]
        self.span = 2 * sum(self.rows)  # S: rows of one chunk over every feature
        ns = [p.num_categories for p in self.plans]
        self.id_starts = [sum(ns[:f]) for f in range(len(ns))]
        self.weight = nn.Parameter(torch.empty(c * self.span, width, device=device, dtype=dtype))
        self._sparse = sparse and self.weight.shape[0] > DENSE_GRAD_MAX_ROWS
        maps = {p.name: p for p in self.plans[0].maps}
        assignments, coefficients = [], []
        for plan, n in zip(self.plans, ns, strict=True):
            first = hash_coefficients(2 * c, plan.spec.settings.seed)  # as the module draws
            ids = torch.arange(n, device=device)
            assignments.append(universal_hash(ids, first[:, :c], plan.spec.settings.rows))
            coefficients.append(first[:, c:])
        self.register_buffer("assignment", torch.cat(assignments).to(
            _MAP_DTYPES[maps["assignment"].itemsize]))
        self.register_buffer("hash_coefficients", torch.stack(coefficients).to(device))
        self.register_buffer("seen", torch.zeros(sum(ns), dtype=torch.bool, device=device))

        def buffer(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        self.register_buffer("_id_start", buffer(self.id_starts), persistent=False)
        self.register_buffer("_row_start", buffer(self.row_starts), persistent=False)
        self.register_buffer("_rows", buffer(self.rows), persistent=False)
        self.register_buffer("_chunk_start", buffer([i * self.span for i in range(c)]),
                             persistent=False)
        self.members = nn.ModuleList(_CCEMember(self, i) for i in range(len(self.plans)))
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i, plan in enumerate(self.plans):
                for table, p in zip(self.tables(i), plan.tables, strict=True):
                    table.uniform_(*p.bounds)

    def tables(self, i: int) -> list[torch.Tensor]:
        s, r = self.row_starts[i], 2 * self.rows[i]
        return [self.weight[j * self.span + s : j * self.span + s + r]
                for j in range(self.chunks)]

    def table_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        keys: list[tuple[str, str, Any]] = []
        for i, f in enumerate(features):
            plan, a = self.plans[i], self.id_starts[i]
            ids = slice(a, a + plan.num_categories)
            where = {"assignment": ("assignment", ids), "hash_coefficients":
                     ("hash_coefficients", i), "seen": ("seen", ids)}  # fmt: skip
            for p in plan.maps:
                name, at = where[p.name]
                keys.append((f"features.{f}.{p.name}", f"{prefix}.{name}", at))
            s, r = self.row_starts[i], 2 * self.rows[i]
            keys += [(f"features.{f}.{p.name}", f"{prefix}.weight",
                      slice(j * self.span + s, j * self.span + s + r))
                     for j, p in enumerate(plan.tables)]
        return keys

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of the group's features ``members`` (all when None) -> (B, G', D)."""
        cols = slice(None) if members is None else members
        stacked = ids + self._id_start[cols]
        if self.training:
            self.seen[stacked] = True
        start = self._row_start[cols].unsqueeze(-1) + self._chunk_start  # (G', c)
        learned = self.assignment[stacked].long() + start  # (B, G', c)
        a, b = self.hash_coefficients[cols].unbind(1)  # (G', c) each
        rows = self._rows[cols].unsqueeze(-1)
        # universal_hash per feature, in its exact int64 arithmetic
        hashed = (ids.unsqueeze(-1) * a + b) % PRIME % rows + rows + start
        out = compose_lookup(_ADD, [learned, hashed], [self.weight, self.weight],
                             [self._sparse, self._sparse])
        return out.flatten(-2)
