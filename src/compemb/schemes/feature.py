"""Feature generation: each partition's table gives a vector of its own (k vectors per
category), no composition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched import TableStack
from compemb.embeddings.operation import FeatureEmbeddingBag
from compemb.operations import Operation, full_table_bound
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan, check_sizes
from compemb.schemes.full import separate_outputs
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class FeatureSettings:
    """Attributes:
    collisions: categories per bucket of the largest table.
    k: number of partitions, instead of collisions.
    family: the partitions (a registered partition family; default qr).
    """

    collisions: int | None = None
    k: int | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        check_sizes("feature", self.collisions, self.k)
        if self.family is not None:
            P.get_family(self.family)


class FeatureScheme(Scheme):
    """k tables, k outputs: (B, k, D) per feature."""

    name = "feature"
    settings_type = FeatureSettings
    takes_hot = True

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> P.PartitionSet:
        s = spec.settings
        return P.get_family(s.family or "qr").build(num_categories, s.collisions, s.k)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: P.PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        a = full_table_bound(num_categories)
        return None, [ParamPlan(f"weights.{j}", (r, embedding_dim), "table", (-a, a))
                      for j, r in enumerate(partitions.sizes)]

    def num_outputs(self, plan: FeaturePlan) -> int:
        return plan.partitions.k

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        return FeatureEmbeddingBag(plan.num_categories, plan.embedding_dim, plan.partitions,
                                   **common)

    def stacking(self, plan: FeaturePlan) -> TableStack | str:
        return TableStack.of(plan, None)

    def torchrec(self, plan: FeaturePlan, device: object) -> TorchRecPlan:
        return TorchRecPlan(True, len(plan.tables), separate_outputs)


__all__ = [
    "FeatureScheme",
    "FeatureSettings",
]
