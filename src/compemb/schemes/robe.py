"""ROBE: arrays of M parameters read in hashed blocks
(:class:`~compemb.embeddings.robe.RobeEmbeddingBag`).

By default the paper's ROBE-Z: ONE array for every feature the scheme embeds, planned once as
a collection-level :class:`~compemb.spec.SharedPlan` (``shared.robe.weight`` in checkpoints,
TorchRec table ``robe``), M parameters in all, which ``fit_budget`` searches; each feature
keeps only its hashes (``features.<f>.coefficients``), and its blocks start at any element.
``shared=False`` gives each feature an array of M parameters of its own (``features.<f>.weight``)
and ``aligned=True`` block-aligned offsets: the deviations compemb had first, kept as settings.
With the spec's ``cap_at_full`` (default) a feature whose own tensors would take at least its
full table's bytes keeps the full table. The collection embeds a spec's ROBE features together
(:class:`~compemb.embeddings.batched_robe.RobeGroup`: one hash call and one gather for all of
them), under the same checkpoint keys.

A spec naming exactly the settings compemb wrote before ROBE-Z (size, block, aligned, seed: a
run's config.yaml then) reads as that form (:data:`OLD_DEFAULTS`), so those runs' checkpoints
load as they were written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched_robe import RobeStack
from compemb.embeddings.robe import (
    RobeEmbeddingBag,
    blocks_from_rows,
    check_robe,
    robe_table_shape,
)
from compemb.operations import Operation, full_table_bound
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan, SharedPlan, plan_feature

# A spec written before ROBE-Z became the default names exactly these settings (a run's
# config.yaml held them all) and means the form compemb had then: an array per feature, aligned
# offsets unless it says otherwise, every feature above the threshold given its array.
WRITTEN_BEFORE = frozenset({"size", "block", "aligned", "seed"})
OLD_DEFAULTS = {"shared": False}


@dataclass(frozen=True)
class RobeSettings:
    """The settings of ROBE.

    Attributes:
        size: M, parameters in the array (the shared one; each feature's own when not
            ``shared``); the ``fit_budget`` knob.
        block: Z, contiguous elements per block (Z = D: one block per id); a multiple of 4 to shard.
        aligned: offsets are multiples of Z, which makes ROBE the hashing trick on Z-wide
            chunks (a deviation from the paper, kept as a setting).
        shared: one array for every feature (the paper's ROBE-Z); False: one per feature (a
            deviation: a small feature cannot give its memory to a large one).
        seed: seeds the hashes of the block offsets.
    """

    size: int | None = None
    block: int = 4
    aligned: bool = False
    shared: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size is None:
            raise ValueError("scheme 'robe' needs size (M, parameters in the array)")
        for name in ("size", "block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("aligned", "shared"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        check_robe(self.block, self.size, self.block, not self.per_element, "scheme 'robe'")

    @property
    def per_element(self) -> bool:
        """The per-feature unaligned array: M rows of width 1."""
        return not self.shared and not self.aligned


def _concat_blocks(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
                   module: nn.Module | None) -> list[torch.Tensor]:
    """(N L, Z) rows, each id's L blocks in order -> (N, D); unaligned, (N L 2, Z) rows and
    where each block starts in its first -> the blocks sliced out."""
    if rest:
        return [blocks_from_rows(parts[0], rest[0])]
    return [parts[0].reshape(-1, module.embedding_dim)]


class RobeScheme(Scheme):
    """Hashed blocks of one shared array (ROBE-Z) or of an array per feature; knob: M."""

    name = "robe"
    settings_type = RobeSettings
    knob = "size"
    knob_grows = True
    takes_order = False

    def make_settings(self, given: dict[str, Any]) -> Any:
        if set(given) == WRITTEN_BEFORE:
            given = {**given, **OLD_DEFAULTS}
        return super().make_settings(given)

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        # ids are hashed, not partitioned: the identity, which no renumbering changes
        return P.remainder(num_categories, num_categories)

    def knob_unit(self, spec: EmbeddingSpec) -> int:
        return spec.settings.block

    def knob_placeholder(self, given: dict[str, Any]) -> int:
        block = given.get("block", RobeSettings.block)  # one block: a size every block takes
        return block if type(block) is int and block >= 1 else 16

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # decided in plan_collection, by bytes (which need D)
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        s, n = spec.settings, num_categories
        check_robe(embedding_dim, s.size, s.block, not s.per_element,
                   f"robe (num_categories={n})")
        a = full_table_bound(n)
        return None, [
            ParamPlan("weight", robe_table_shape(s.size, s.block, s.per_element), "table",
                      (-a, a)),
            ParamPlan("coefficients", (2, embedding_dim // s.block), "map", "seed", 4),
        ]

    def plan_collection(self, plans: list[FeaturePlan]) -> list[FeaturePlan]:
        """Shared: the arrays become one, planned once; each feature keeps its hashes. With the
        spec's ``cap_at_full`` a feature whose own tensors would take at least the bytes of its
        full table keeps it (decided here, before the shared array counts its members)."""
        s, cap = plans[0].spec.settings, plans[0].spec.cap_at_full
        if s.shared:
            plans = [dataclasses.replace(p, params=tuple(q for q in p.params
                                                         if q.name != "weight"))
                     for p in plans]  # fmt: skip
        larger = [cap and p.num_bytes + p.index_bytes >= _full_bytes(p)
                  for p in plans]
        kept = [p for p, big in zip(plans, larger, strict=True) if not big]
        if s.shared and kept:
            a = full_table_bound(sum(p.num_categories for p in kept))
            array = ParamPlan("weight", robe_table_shape(s.size, s.block), "table", (-a, a))
            shared = SharedPlan(self.name, (array,), len(kept))
            kept = [dataclasses.replace(p, shared=shared, member=m) for m, p in enumerate(kept)]
        members = iter(kept)
        return [_full(p) if big else next(members) for p, big in zip(plans, larger, strict=True)]

    def module(self, plan: FeaturePlan, *, shared: nn.Module | None = None,
               **common: Any) -> nn.Module:
        s = plan.spec.settings
        return RobeEmbeddingBag(plan.num_categories, plan.embedding_dim, s.size, s.block,
                                s.aligned, s.seed, member=plan.member if s.shared else None,
                                shared=shared, **common)

    def stacking(self, plan: FeaturePlan) -> RobeStack:
        s = plan.spec.settings
        return RobeStack(plan.embedding_dim, s.size, s.block, s.aligned, s.shared)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        s = plan.spec.settings
        if s.per_element:
            raise ValueError(
                f"scheme 'robe' with shared=False and aligned=False has no TorchRec route: "
                f"its per-feature arrays are tables of {s.size} rows of width 1, which FBGEMM "
                f"cannot shard; use shared=True (one (size / block, block) table), "
                f"aligned=True, or train.sharding=replicate"
            )
        # the hashes only (TorchRec holds the array): drawn on the CPU, the array never built
        module = self.module(plan, validate=False, device="meta")
        module.weight = None
        if device is not None and torch.device(device).type != "meta":
            module.to(device)
        return TorchRecPlan(False, 1, _concat_blocks, module, lookup=module.lookup)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        form = ("shared" if s.shared else "per feature") + (", aligned" if s.aligned else "")
        return f"robe M={s.size} Z={s.block}", form


def _full_bytes(plan: FeaturePlan) -> int:
    """Bytes of the feature's full table (float32)."""
    return 4 * plan.num_categories * plan.embedding_dim


def _full(plan: FeaturePlan) -> FeaturePlan:
    """The full table of a feature the scheme would make larger."""
    n = plan.num_categories
    return plan_feature(n, plan.embedding_dim, plan.spec.with_(threshold=n))


__all__ = [
    "OLD_DEFAULTS",
    "WRITTEN_BEFORE",
    "RobeScheme",
    "RobeSettings",
]
