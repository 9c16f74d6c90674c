"""A scheme defined outside the package, as a user would: the hashing trick at a low rank (a
table of ``rank``-wide rows, projected to D by one matrix shared by all rows). Importing this
module registers it; configs name it under ``imports``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compemb import partitions as P
from compemb.embeddings.base import BagModule
from compemb.operations import full_table_bound
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan, check_sizes, register_scheme


@dataclass(frozen=True)
class LowRankHashSettings:
    collisions: int | None = None
    rank: int = 2

    def __post_init__(self) -> None:
        check_sizes("lowrank_hash", self.collisions, None, ("collisions",))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")


class LowRankHashBag(BagModule):
    """Row ``i mod R`` of a (R, rank) table times a (D, rank) projection: (B, D)."""

    def __init__(self, num_categories: int, embedding_dim: int, rows: int, rank: int,
                 mode: str = "sum", *, sparse: bool = False, include_last_offset: bool = False,
                 validate: bool = True, device: Any = None, dtype: Any = None):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        self.partitions = P.remainder(num_categories, rows)
        self.sparse = sparse
        a = full_table_bound(num_categories)
        self.weight = nn.Parameter(torch.empty(rows, rank, device=device, dtype=dtype))
        self.proj = nn.Linear(rank, embedding_dim, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            self.weight.uniform_(-a, a)

    @property
    def num_rows(self) -> int:
        return self.partitions.num_buckets

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        (rows,) = self.partitions.buckets(ids)
        return self.proj(F.embedding(rows, self.weight, sparse=self.sparse))


def _project(parts: list[torch.Tensor], rest: Any, module: nn.Module | None) -> list[torch.Tensor]:
    return [module.proj(parts[0])]


class LowRankHashScheme(Scheme):
    name = "lowrank_hash"
    settings_type = LowRankHashSettings

    def base_partitions(self, spec: Any, num_categories: int) -> P.PartitionSet:
        n = num_categories
        return P.remainder(n, -(-n // spec.settings.collisions))

    def plan_params(self, spec: Any, num_categories: int, embedding_dim: int,
                    partitions: P.PartitionSet) -> tuple[None, list[ParamPlan]]:
        a, r = full_table_bound(num_categories), spec.settings.rank
        return None, [ParamPlan("weight", (partitions.sizes[0], r), "table", (-a, a)),
                      ParamPlan("proj.weight", (embedding_dim, r), "dense", "kaiming_uniform")]

    def module(self, plan: Any, **common: Any) -> nn.Module:
        return LowRankHashBag(plan.num_categories, plan.embedding_dim, plan.tables[0].rows,
                              plan.spec.settings.rank, **common)

    def torchrec(self, plan: Any, device: Any) -> TorchRecPlan:
        # the projection is linear without bias: it commutes with sum pooling
        module = self.module(plan, mode=plan.spec.mode, validate=False, device=device)
        module.weight = None
        return TorchRecPlan(True, 1, _project, module)


register_scheme(LowRankHashScheme())
