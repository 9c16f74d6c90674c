"""Path-based compositional embeddings (eq. 7 of the paper): a row of the first partition's
table, then one function per further partition, chosen by the category's bucket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched import TableStack
from compemb.embeddings.batched_path import PATH_MAX_BUCKETS, PathStack
from compemb.embeddings.path import TRANSFORMS, PathEmbeddingBag
from compemb.operations import Operation, full_table_bound
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan, check_sizes
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class PathSettings:
    """Attributes:
    collisions: categories per bucket of the first table.
    family: the partitions (a registered partition family; default qr).
    path_transform: linear or mlp.
    path_hidden: hidden units of each path MLP.
    """

    collisions: int | None = None
    family: str | None = None
    path_transform: str = "mlp"
    path_hidden: int = 64

    def __post_init__(self) -> None:
        check_sizes("path", self.collisions, None, ("collisions",))
        if self.family is not None:
            P.get_family(self.family)
        if self.path_transform not in TRANSFORMS:
            raise ValueError(
                f"path_transform must be one of {TRANSFORMS}, got {self.path_transform!r}"
            )
        h = self.path_hidden
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(f"path_hidden must be an int >= 1, got {h!r}")


def _transform_rows(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                    module: nn.Module | None) -> list[torch.Tensor]:
    return [module.transform_rows(parts[0], rest)]


class PathScheme(Scheme):
    """One table and per-bucket functions (their parameters are the plan's dense part)."""

    name = "path"
    settings_type = PathSettings

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        s = spec.settings
        return P.get_family(s.family or "qr").build(num_categories, s.collisions, None)

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        s, d = spec.settings, embedding_dim
        a = full_table_bound(num_categories)
        params = [ParamPlan("weight", (partitions.sizes[0], d), "table", (-a, a))]
        h = s.path_hidden
        shapes = [(d, d)] if s.path_transform == "linear" else [(h, d), (d, h)]
        for j, m in enumerate(partitions.sizes[1:]):
            for layer, (out, inp) in enumerate(shapes):
                params += [ParamPlan(f"paths.{j}.{layer}.weight", (m, out, inp), "dense", "path"),
                           ParamPlan(f"paths.{j}.{layer}.bias", (m, out), "dense", "path")]
        return None, params

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        s = plan.spec.settings
        return PathEmbeddingBag(plan.num_categories, plan.embedding_dim, plan.partitions,
                                s.path_transform, s.path_hidden, **common)

    def stacking(self, plan: FeaturePlan) -> PathStack | str:
        parts, s = plan.partitions, plan.spec.settings
        m = parts.sizes[-1]
        if parts.k != 2 or m > PATH_MAX_BUCKETS:
            return (f"path over {parts.k} partitions with {m} buckets (stacked paths take 2 "
                    f"partitions and at most {PATH_MAX_BUCKETS} buckets)")
        key = TableStack.of(plan, None)
        if isinstance(key, str):
            return key
        return PathStack(s.path_transform, plan.embedding_dim, s.path_hidden, m, key.kinds,
                         key.relabelled)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        # The per-feature module without its table (TorchRec looks that up) applies the
        # functions, data-parallel.
        module = self.module(plan, mode=plan.spec.mode, sparse=plan.spec.sparse, validate=False,
                             device=device)
        module.weight = None
        if device is not None and torch.device(device).type == "meta":
            # the tables are left to DMP; the functions must exist: on the CPU, drawn here
            module.to_empty(device="cpu")
            module.reset_paths()
        return TorchRecPlan(False, 1, _transform_rows, module)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        detail = "linear" if s.path_transform == "linear" else f"mlp h={s.path_hidden}"
        return f"path c={s.collisions}", detail


__all__ = [
    "PathScheme",
    "PathSettings",
]
