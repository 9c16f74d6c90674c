"""ROBE: one array of M parameters per feature, read in hashed blocks
(:class:`~compemb.embeddings.robe.RobeEmbeddingBag`).

Planned per feature, not as one array for the collection (the paper's ROBE-Z shares one array
across every table): each feature's array is its ``weight``, so checkpoints name features as for
every scheme, ``threshold`` keeps small features full as for the others, and ``size`` (the
``fit_budget`` knob) is what each compressed feature holds. The count is exact: M parameters per
compressed feature (with ``threshold`` below M / D a feature may hold more than its full
table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.robe import RobeEmbeddingBag, check_robe, robe_table_shape
from compemb.operations import Operation, full_table_bound
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class RobeSettings:
    """The settings of ROBE.

    Attributes:
        size: M, parameters in each compressed feature's array.
        block: Z, contiguous elements per block (Z = D: one block per id); a multiple of 4 to shard.
        aligned: offsets are multiples of Z, so the array is a table of M / Z rows of width Z (the
            form TorchRec shards); otherwise any offset, and no TorchRec route.
        seed: seeds the hashes of the block offsets.
    """

    size: int | None = None
    block: int = 4
    aligned: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size is None:
            raise ValueError("scheme 'robe' needs size (M, parameters in each feature's array)")
        for name in ("size", "block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.aligned, bool):
            raise ValueError(f"aligned must be a bool, got {self.aligned!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        check_robe(self.block, self.size, self.block, self.aligned, "scheme 'robe'")


def _concat_blocks(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                   module: nn.Module | None) -> list[torch.Tensor]:
    """(N L, Z) rows, each id's L blocks in order -> (N, D)."""
    rows = parts[0]
    return [rows.reshape(-1, module.embedding_dim)]


class RobeScheme(Scheme):
    """One hashed-block array per feature; knob: its size M."""

    name = "robe"
    settings_type = RobeSettings
    knob = "size"
    knob_grows = True
    takes_order = False

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        # ids are hashed, not partitioned: the identity, which no renumbering changes
        return P.remainder(num_categories, num_categories)

    def knob_unit(self, spec: EmbeddingSpec) -> int:
        return spec.settings.block

    def knob_placeholder(self, given: dict[str, Any]) -> int:
        block = given.get("block", RobeSettings.block)  # one block: a size every block takes
        return block if type(block) is int and block >= 1 else 16

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # whether this is smaller than n x D needs D, not given here: ``threshold`` keeps
        # small features full
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        s, n = spec.settings, num_categories
        check_robe(embedding_dim, s.size, s.block, s.aligned, f"robe (num_categories={n})")
        a = full_table_bound(n)
        return None, [ParamPlan("weight", robe_table_shape(s.size, s.block, s.aligned), "table",
                                (-a, a))]

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        s = plan.spec.settings
        return RobeEmbeddingBag(plan.num_categories, plan.embedding_dim, s.size, s.block,
                                s.aligned, s.seed, **common)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        s = plan.spec.settings
        if not s.aligned:
            raise ValueError(
                f"scheme 'robe' with aligned=False has no TorchRec route: its blocks start at "
                f"any of the {s.size} elements, so a block is no row of a table TorchRec can "
                f"shard; use aligned=True (a table of size / block rows) or "
                f"train.sharding=replicate"
            )
        # the hashes only (no array: TorchRec holds it); built on the CPU when tables go to meta
        where = "cpu" if device is not None and torch.device(device).type == "meta" else device
        module = RobeEmbeddingBag(plan.num_categories, plan.embedding_dim, s.size, s.block,
                                  s.aligned, s.seed, validate=False, device=where)
        module.weight = None
        return TorchRecPlan(False, 1, _concat_blocks, module, lookup=module.lookup)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        return f"robe M={s.size} Z={s.block}", "aligned" if s.aligned else "unaligned"


__all__ = [
    "RobeScheme",
    "RobeSettings",
]
