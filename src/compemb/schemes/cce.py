"""CCE: c chunks per id, each a learned-assignment row plus a hashed row of that chunk's
table, reclustered by k-means during training
(:class:`~compemb.embeddings.cce.CCEEmbeddingBag`).

A feature keeps c tables of 2R rows of width D / c (T_i then H_i: a chunk is one table, whole
on one rank under TorchRec's table-wise sharding), 2 R D parameters in all; and, as id maps
counted in ``index_bytes``, the assignment (n x c, 1, 2 or 4 bytes an entry as R needs:
:func:`~compemb.embeddings.cce.assignment_dtype`), the hashes (2 x c int64) and the seen-id
mask (n bytes). The knob is R.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched_cce import CCEStack
from compemb.embeddings.cce import CCEEmbeddingBag, assignment_dtype, check_cce
from compemb.operations import Operation, full_table_bound
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class CCESettings:
    """The settings of CCE.

    Attributes:
        rows: R, rows of each chunk's learned table T_i and of its hashed table H_i (the knob).
        chunks: c, chunks of width D / c (the authors' default: 4).
        seed: seeds the first assignment and the first hashes.
        kmeans_iters: most Lloyd rounds per chunk and reclustering (the authors' code: 100).
        kmeans_samples: most points per centroid k-means is fitted on (the authors': 200).
        kmeans_exact_rows: most R clustered by the exact k-means (greedy k-means++, every
            distance computed: cost R^2); a larger R takes the KD-tree path (sampled, its
            nearest centroids exact; :mod:`compemb.embeddings.kmeans`). 4,096 keeps every R
            run before the tree path existed (at most 1,964) on the exact path; 0: the tree
            path at every R.
        kmeans_max_queries: the tree path's cap on the points its Lloyd rounds assign per
            chunk, summed over the rounds (2^25: a 10x CCE on Criteo Kaggle reclusters in
            minutes on one core; docs/speed.md).
    """

    rows: int | None = None
    chunks: int = 4
    seed: int = 0
    kmeans_iters: int = 100
    kmeans_samples: int = 200
    kmeans_exact_rows: int = 4096
    kmeans_max_queries: int = 2**25

    def __post_init__(self) -> None:
        if self.rows is None:
            raise ValueError("scheme 'cce' needs rows (R, rows of each chunk's table)")
        for name in ("rows", "chunks", "kmeans_iters", "kmeans_samples", "kmeans_max_queries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("seed", "kmeans_exact_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")


def _sum_chunks(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                module: nn.Module | None) -> list[torch.Tensor]:
    """c tables' (2 N, W) rows, each id's two together -> (N, D): each pair summed, chunks
    concatenated."""
    return [torch.cat([p.reshape(-1, 2, p.shape[1]).sum(1) for p in parts], dim=1)]


class CCEScheme(Scheme):
    """c chunk tables of 2R rows per feature, the assignment reclustered in training; knob: R."""

    name = "cce"
    settings_type = CCESettings
    knob = "rows"
    knob_grows = True
    sizes = ("rows",)
    takes_order = False
    reclusters = True

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        # ids are hashed and assigned, not partitioned: the identity, which no renumbering
        # changes
        return P.remainder(num_categories, num_categories)

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        r, n = spec.settings.rows, num_categories
        if 2 * r >= n:
            return (f"cce with rows={r} holds 2 x {r} rows of width D per feature, no fewer "
                    f"than the full table's {n}")
        return None

    def knob_limit(self, cardinalities: Sequence[int], embedding_dim: int) -> int:
        # from n / 2 rows on, a feature's tables hold as much as its full table
        return max(1, max(cardinalities) // 2)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        s, n = spec.settings, num_categories
        check_cce(embedding_dim, s.rows, s.chunks, f"cce (num_categories={n})")
        b = full_table_bound(n) / 2**0.5
        # the module's buffers come first in its state dict, then its tables
        maps = [ParamPlan("assignment", (n, s.chunks), "map", "hash",
                          assignment_dtype(s.rows).itemsize),
                ParamPlan("hash_coefficients", (2, s.chunks), "map", "hash", 8),
                ParamPlan("seen", (n,), "map", "seen", 1)]
        tables = [ParamPlan(f"tables.{i}", (2 * s.rows, embedding_dim // s.chunks), "table",
                            (-b, b)) for i in range(s.chunks)]
        return None, [*maps, *tables]

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        s = plan.spec.settings
        return CCEEmbeddingBag(plan.num_categories, plan.embedding_dim, s.rows, s.chunks, s.seed,
                               kmeans_iters=s.kmeans_iters, kmeans_samples=s.kmeans_samples,
                               kmeans_exact_rows=s.kmeans_exact_rows,
                               kmeans_max_queries=s.kmeans_max_queries, **common)

    def stacking(self, plan: FeaturePlan) -> CCEStack:
        return CCEStack(plan.embedding_dim, plan.spec.settings.chunks)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        width = plan.embedding_dim // plan.spec.settings.chunks
        if width % 4:
            raise ValueError(
                f"scheme 'cce' on TorchRec needs chunk tables of a width that is a multiple of "
                f"4 (FBGEMM's row alignment); embedding_dim={plan.embedding_dim} over "
                f"chunks={plan.spec.settings.chunks} gives {width}: use fewer chunks or "
                f"train.sharding=replicate"
            )
        # the assignment and hashes only (no tables: TorchRec holds them); built on the CPU
        # when tables go to meta
        where = "cpu" if device is not None and torch.device(device).type == "meta" else device
        module = self.module(plan, mode=plan.spec.mode, validate=False, device=where)
        module.tables = None
        return TorchRecPlan(False, 1, _sum_chunks, module, lookup=module.lookup)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        return f"cce R={s.rows} c={s.chunks}", f"k-means {s.kmeans_iters} rounds"


__all__ = [
    "CCEScheme",
    "CCESettings",
]
