"""TT-Rec (Yin et al., MLSys 2021): a feature's n x D table as a tensor train of K cores over
the mixed-radix digits of the id (:mod:`compemb.embeddings.tt`), each core a table of rows
r_{k-1} d_k r_k wide, drawn Gaussian so the chain has the full table's variance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched_tt import TTStack
from compemb.embeddings.tt import TT_INITS, TTEmbeddingBag, balanced_factors, tt_chain, tt_init_std
from compemb.operations import Operation
from compemb.partitions import PartitionSet
from compemb.scheme import NormalInit, ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class TTSettings:
    """The settings of TT-Rec.

    Attributes:
        rank: the inner TT ranks r_1 = ... = r_{K-1} (the size knob).
        num_cores: K >= 2 (3 in TT-Rec): n and D are each split into K factors.
        init: ``paper`` (the chain at the full table's variance) or ``unit_norm`` (vectors of
            norm about 1) (:func:`~compemb.embeddings.tt.tt_init_std`).
    """

    rank: int = 8
    num_cores: int = 3
    init: str = "paper"

    def __post_init__(self) -> None:
        for name, low in (("rank", 1), ("num_cores", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.init not in TT_INITS:
            raise ValueError(f"init must be one of {TT_INITS}, got {self.init!r}")


def _shape(settings: TTSettings, embedding_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(d_1 .. d_K, r_0 .. r_K) of the cores."""
    k = settings.num_cores
    return balanced_factors(embedding_dim, k), (1, *[settings.rank] * (k - 1), 1)


def _cores(settings: TTSettings, num_categories: int, embedding_dim: int,
           partitions: PartitionSet) -> list[ParamPlan]:
    dims, ranks = _shape(settings, embedding_dim)
    std = tt_init_std(num_categories, ranks, embedding_dim, settings.init)
    return [ParamPlan(f"cores.{j}", (rows, ranks[j] * dims[j] * ranks[j + 1]), "table",
                      NormalInit(std)) for j, rows in enumerate(partitions.sizes)]


class TTScheme(Scheme):
    """K core tables per feature, chained per id. A feature whose cores hold at least n rows
    keeps its full table (the default :meth:`~compemb.scheme.Scheme.cannot_shrink`); the rank
    decides whether the cores hold fewer parameters than it."""

    name = "tt"
    settings_type = TTSettings
    knob = "rank"
    knob_grows = True
    sizes = ("rank",)
    takes_order = False

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        return P.balanced_mixed_radix(num_categories, spec.settings.num_cores)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        return None, _cores(spec.settings, num_categories, embedding_dim, partitions)

    def knob_limit(self, cardinalities: Sequence[int], embedding_dim: int) -> int:
        # past sqrt(n D) the middle core alone (r^2 d_k rows' worth) outweighs the full table
        return math.isqrt(max(cardinalities) * embedding_dim) + 1

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        s = plan.spec.settings
        return TTEmbeddingBag(plan.num_categories, plan.embedding_dim, s.rank,
                              num_cores=s.num_cores, init=s.init, **common)

    def stacking(self, plan: FeaturePlan) -> TTStack | str:
        if plan.partitions.layout() is None:
            return "these TT digits are not index arithmetic of the form (i // place) mod m"
        return TTStack(*_shape(plan.spec.settings, plan.embedding_dim))

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        dims, ranks = _shape(plan.spec.settings, plan.embedding_dim)

        def chain(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                  module: nn.Module | None) -> list[torch.Tensor]:
            return [tt_chain(parts, dims, ranks)]

        # the chain is multilinear, not linear: per id, then pooled (one-hot features pooled)
        return TorchRecPlan(False, 1, chain)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        return f"tt r={s.rank}", f"K={s.num_cores} {s.init}"


__all__ = [
    "TTScheme",
    "TTSettings",
]
