"""The hashing trick: category i takes row i mod ceil(n / collisions) of one table (with ``hot``
rows, a private row added to it for each of the most frequent categories)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched import TableStack
from compemb.embeddings.operation import CompositionalEmbeddingBag, HashEmbeddingBag
from compemb.operations import Operation, full_table_bound, get_operation
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan, check_sizes, too_many_collisions
from compemb.schemes.compose import compose_params, compose_route
from compemb.schemes.full import separate_outputs
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class HashSettings:
    """Attributes:
    collisions: categories per row (the table has ceil(n / collisions) rows).
    """

    collisions: int | None = None

    def __post_init__(self) -> None:
        check_sizes("hash", self.collisions, None, ("collisions",))


class HashScheme(Scheme):
    """One remainder table; hot rows are composed with it by ``add``."""

    name = "hash"
    settings_type = HashSettings
    takes_hot = True

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        n = num_categories
        return P.remainder(n, -(-n // spec.settings.collisions))

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # below n collisions the hashed table is smaller; hot rows are not weighed against it
        return too_many_collisions(spec, num_categories)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        if spec.hot:
            return compose_params(get_operation("add"), "default", "hash", num_categories,
                                  embedding_dim, partitions)
        a = full_table_bound(num_categories)
        return None, [ParamPlan("weight", (partitions.sizes[0], embedding_dim), "table", (-a, a))]

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        n, d = plan.num_categories, plan.embedding_dim
        if plan.operation is None:
            return HashEmbeddingBag(n, d, plan.tables[0].rows, **common)
        with warnings.catch_warnings():  # hashing with hot rows shares vectors by design
            warnings.filterwarnings("ignore", message=".*not complementary")
            return CompositionalEmbeddingBag(n, d, plan.partitions, plan.operation,
                                             dims=tuple(t.width for t in plan.tables), **common)

    def stacking(self, plan: FeaturePlan) -> TableStack | str:
        return TableStack.of(plan, "add")

    def torchrec(self, plan: FeaturePlan, device: object) -> TorchRecPlan:
        if plan.operation is None:
            return TorchRecPlan(True, 1, separate_outputs)
        return compose_route(plan)


__all__ = [
    "HashScheme",
    "HashSettings",
]
