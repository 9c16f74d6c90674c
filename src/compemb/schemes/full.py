"""The full table: one row per category, what every other scheme is measured against and what
a feature too small to compress falls back to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from compemb import partitions as P
from compemb.embeddings.base import FullEmbeddingBag
from compemb.embeddings.batched import TableStack
from compemb.operations import Operation, full_table_bound
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class FullSettings:
    """The full table has no settings of its own."""


def separate_outputs(parts: list, rest: object, module: object) -> list:
    """TorchRec combination of tables that are each an output of their own (as looked up)."""
    return parts


class FullScheme(Scheme):
    """``nn.EmbeddingBag``'s table: n x D, U(-sqrt(1/n), sqrt(1/n))."""

    name = "full"
    settings_type = FullSettings
    compresses = False
    knob = None
    takes_order = False

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> P.PartitionSet:
        return P.remainder(num_categories, num_categories)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: P.PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        a = full_table_bound(num_categories)
        return None, [ParamPlan("weight", (num_categories, embedding_dim), "table", (-a, a))]

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        return FullEmbeddingBag(plan.num_categories, plan.embedding_dim, **common)

    def stacking(self, plan: FeaturePlan) -> TableStack | str:
        # One table composes with any operation as the identity would: add.
        return TableStack.of(plan, "add")

    def torchrec(self, plan: FeaturePlan, device: object) -> TorchRecPlan:
        return TorchRecPlan(True, 1, separate_outputs)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        return "full", "-"


__all__ = [
    "FullScheme",
    "FullSettings",
    "separate_outputs",
]
