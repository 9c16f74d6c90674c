"""DHE: no table, an MLP over a dense hash encoding of each id
(:class:`~compemb.embeddings.dhe.DHEEmbeddingBag`). Its size is the network's; the knob is the
hidden width. On TorchRec there is nothing to shard: the network runs data-parallel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.batched_dhe import DHEStack
from compemb.embeddings.dhe import DHEEmbeddingBag, check_dhe
from compemb.operations import Operation
from compemb.partitions import PartitionSet
from compemb.scheme import ParamPlan, Scheme, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan


@dataclass(frozen=True)
class DHESettings:
    """The settings of DHE.

    Attributes:
        width: units of each hidden layer (the size knob).
        depth: hidden layers. 2, not the 5 of the paper's network as reproduced publicly:
            without the paper's batch normalization (left out so an id's vector does not depend
            on its batch) 5 layers learned worse than 2 at equal parameters on MovieLens
            (``benchmarks/dhe_settings.py``, docs/robe-dhe.md).
        hashes: k, the encoding's width (even for ``gaussian``): the paper's 1024, which
            learned better than 64 at equal parameters and either depth on MovieLens. Before,
            the default was 64: a config written then that omits ``hashes`` meant 64 (run
            folders' configs hold every setting, so they keep their k).
        encoding: ``uniform`` on [-1, 1] or ``gaussian`` (Box-Muller), the paper's two transforms.
        seed: seeds the k hashes.
    """

    width: int | None = None
    depth: int = 2
    hashes: int = 1024
    encoding: str = "uniform"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width is None:
            raise ValueError("scheme 'dhe' needs width (units of each hidden layer)")
        check_dhe(self.hashes, self.width, self.depth, self.encoding, "scheme 'dhe'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")


def _decode(parts: list[torch.Tensor], rest: Sequence[torch.Tensor],
            module: nn.Module | None) -> list[torch.Tensor]:
    """No tables: the identity partition's buckets are the ids; (N,) -> (N, D)."""
    return [module.compose(rest[0])]


class DHEScheme(Scheme):
    """An MLP of ``depth`` hidden layers of ``width`` over k hashes; knob: the width."""

    name = "dhe"
    settings_type = DHESettings
    knob = "width"
    knob_grows = True
    takes_order = False

    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        # the identity: its one bucket per id is the id, which the route hands to the network
        return P.remainder(num_categories, num_categories)

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        # no rows to compare: the plan's bytes against the full table's decide
        # (compemb.spec.plan_collection)
        return None

    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        s = spec.settings
        sizes = [s.hashes] + [s.width] * s.depth + [embedding_dim]
        params = []
        for j, (inputs, outputs) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # mlp.<2j>: the j-th linear layer (Mish activations between them hold nothing)
            params += [ParamPlan(f"mlp.{2 * j}.weight", (outputs, inputs), "dense",
                                 "kaiming_uniform"),
                       ParamPlan(f"mlp.{2 * j}.bias", (outputs,), "dense", "kaiming_uniform")]
        # the hash coefficients, saved so a checkpoint reproduces its vectors under any seed
        params.append(ParamPlan("coefficients", (2, s.hashes), "map", "seed", 8))
        return None, params

    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        s = plan.spec.settings
        return DHEEmbeddingBag(plan.num_categories, plan.embedding_dim, s.hashes, s.width,
                               s.depth, s.encoding, s.seed, **common)

    def stacking(self, plan: FeaturePlan) -> DHEStack:
        s = plan.spec.settings
        return DHEStack(plan.embedding_dim, s.hashes, s.width, s.depth, s.encoding)

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        # no table: the whole module runs data-parallel; built on the CPU when tables go to meta
        where = "cpu" if device is not None and torch.device(device).type == "meta" else device
        module = self.module(plan, mode=plan.spec.mode, validate=False, device=where)
        return TorchRecPlan(False, 1, _decode, module)

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        s = spec.settings
        w = s.width
        return (f"dhe w={w} depth={s.depth}",
                f"k={s.hashes} {s.encoding}, {s.hashes * w + (s.depth - 1) * w * w} + {w}D "
                f"mult-adds/id")


__all__ = [
    "DHEScheme",
    "DHESettings",
]
