"""Operation-based compositional embeddings (eq. 3 of the paper): k complementary partitions,
one table each, composed per category by an operation (concat, add, mult).

One scheme object per registered partition family (:data:`compemb.partitions.FAMILIES`), named
after it: qr, mixed_radix, crt, and any family registered later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched import TableStack
from compemb.embeddings.operation import CompositionalEmbeddingBag
from compemb.operations import INIT_RULES, OPERATIONS, Operation, get_operation
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan, check_sizes
from compemb.spec import EmbeddingSpec, FeaturePlan, compose_bounds


@dataclass(frozen=True)
class ComposeSettings:
    """The settings of an operation-based composition.

    Attributes:
        operation: a registered composition operation (concat, add, mult).
        collisions: categories per bucket of the largest table.
        k: number of partitions, instead of collisions (the families that take it).
        init: the tables' init rule (:data:`compemb.operations.INIT_RULES`; ``default`` is
            each operation's own rule).
    """

    operation: str = "mult"
    collisions: int | None = None
    k: int | None = None
    init: str = "default"

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(
                f"operation must be one of {tuple(OPERATIONS)}, got {self.operation!r}"
            )
        if self.init not in INIT_RULES:
            raise ValueError(f"init must be one of {tuple(INIT_RULES)}, got {self.init!r}")


def compose_params(operation: Operation, init: str, where: str, num_categories: int,
                   embedding_dim: int, partitions: P.PartitionSet
                   ) -> tuple[Operation, list[ParamPlan]]:
    """One table per partition, widths and bounds as ``operation`` and rule ``init`` set."""
    n = num_categories
    widths = operation.table_widths(embedding_dim, partitions.k,
                                    f"{where} {operation.name} (num_categories={n})")
    bounds = compose_bounds(operation, partitions, n, init, embedding_dim)
    return operation, [ParamPlan(f"weights.{j}", (r, w), "table", tuple(b)) for j, (r, w, b)
                       in enumerate(zip(partitions.sizes, widths, bounds, strict=True))]


def compose_route(plan: FeaturePlan) -> TorchRecPlan:
    """Every table a TorchRec table, combined by the plan's operation (after pooling when it
    commutes with the pooling)."""
    op = plan.operation

    def combine(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                module: nn.Module | None) -> list[torch.Tensor]:
        return [op.combine(parts)]

    return TorchRecPlan(op.commutes_with_sum_pooling, 1, combine)


class ComposeScheme(Scheme):
    """The tables of partition family ``name`` composed by ``settings.operation``."""

    settings_type = ComposeSettings
    takes_hot = True

    def __init__(self, family: str):
        self.name = family

    def make_settings(self, given: dict[str, Any]) -> ComposeSettings:
        settings = super().make_settings(given)
        check_sizes(self.name, settings.collisions, settings.k, P.get_family(self.name).takes)
        return settings

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> P.PartitionSet:
        s = spec.settings
        return P.get_family(self.name).build(num_categories, s.collisions, s.k)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: P.PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        s = spec.settings
        return compose_params(get_operation(s.operation), s.init, self.name, num_categories,
                              embedding_dim, partitions)

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        return CompositionalEmbeddingBag(
            plan.num_categories, plan.embedding_dim, plan.partitions, plan.operation,
            dims=tuple(t.width for t in plan.tables), init=plan.spec.settings.init, **common,
        )  # fmt: skip

    def stacking(self, plan: FeaturePlan) -> TableStack | str:
        return TableStack.of(plan, plan.operation.name)

    def torchrec(self, plan: FeaturePlan, device: object) -> TorchRecPlan:
        return compose_route(plan)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        return super().describe(spec)[0], spec.settings.operation


__all__ = [
    "ComposeScheme",
    "ComposeSettings",
    "compose_params",
    "compose_route",
]
