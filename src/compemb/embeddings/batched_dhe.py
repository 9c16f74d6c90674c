"""DHE features computed together: one hash encoding of every id of the batch and each decoder
layer as one batched matmul over the features (``baddbmm`` of (G, B, in) by (G, in, out)).

The features of a group share the encoding (k, transform) and the decoder's shape; each keeps its
own layers (stacked (G, out, in) weights and (G, out) biases) and its own hash coefficients
((G, 2, k); the features of one spec share a seed, so one encoding serves them all).

Letters: B batch, G features, k hashes, D width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._universal import hash_coefficients
from compemb.embeddings.dhe import dhe_encoding
from compemb.embeddings.stacked import StackedGroup, StackKey

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

__all__ = ["DHEGroup", "DHEStack"]


@dataclass(frozen=True)
class DHEStack(StackKey):
    """The key of DHE features with these settings (:class:`~compemb.schemes.dhe.DHESettings`)
    and width D."""

    embedding_dim: int
    hashes: int
    width: int
    depth: int
    encoding: str

    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> DHEGroup:
        return DHEGroup(plans, self.encoding, device=device, dtype=dtype)


class DHEGroup(StackedGroup):
    """G DHE features (module docstring). Each layer starts as ``nn.Linear``'s default, as
    :class:`~compemb.embeddings.dhe.DHEEmbeddingBag`'s.

    Shapes: ids (B, G) -> (B, G, D).
    """

    def __init__(self, plans: Sequence[FeaturePlan], encoding: str, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.plans, self.encoding = tuple(plans), encoding
        g = len(self.plans)
        dense = self.plans[0].dense  # mlp.<2j>.weight, mlp.<2j>.bias, ...
        kw = {"device": device, "dtype": dtype}
        self.layers = nn.ParameterList(nn.Parameter(torch.empty(g, *p.shape, **kw))
                                       for p in dense)
        self._names = [p.name for p in dense]
        coefficients = [hash_coefficients(p.spec.settings.hashes, p.spec.settings.seed)
                        for p in self.plans]
        # saved with the model only if the plans name them (as the module keeps them)
        kept = any(p.name == "coefficients" for p in self.plans[0].maps)
        self.register_buffer("coefficients", torch.stack(coefficients).to(device),
                             persistent=kept)
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return 0

    def reset_parameters(self) -> None:
        for i in range(len(self.plans)):
            for j in range(0, len(self.layers), 2):
                layer = nn.Linear(self.layers[j].shape[2], self.layers[j].shape[1])
                with torch.no_grad():
                    self.layers[j][i].copy_(layer.weight)
                    self.layers[j + 1][i].copy_(layer.bias)

    def tables(self, i: int) -> list[torch.Tensor]:
        return [p[i] for p in self.layers]

    def table_parameters(self) -> list[nn.Parameter]:
        return []

    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        keys = []
        for i, f in enumerate(features):
            keys += [(f"features.{f}.{name}", f"{prefix}.layers.{j}", i)
                     for j, name in enumerate(self._names)]
            keys += [(f"features.{f}.coefficients", f"{prefix}.coefficients", i)
                     for p in self.plans[i].maps if p.name == "coefficients"]
        return keys

    def _encode(self, ids: torch.Tensor, cols: slice | list[int]) -> torch.Tensor:
        """ids (B, G') -> (G', B, k): one encoding when the features share their hashes."""
        coefficients = self.coefficients[cols]
        dtype = self.layers[0].dtype
        columns = ids.t().contiguous()
        if bool((coefficients == coefficients[:1]).all()):
            x = dhe_encoding(columns.reshape(-1), coefficients[0], self.encoding, dtype)
            return x.view(*columns.shape, x.shape[-1])  # sizes spelled out: B may be 0
        return torch.stack([dhe_encoding(c, co, self.encoding, dtype)
                            for c, co in zip(columns, coefficients, strict=True)])

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of the group's features ``members`` (all when None) -> (B, G', D)."""
        cols = slice(None) if members is None else members
        x = self._encode(ids, cols)
        last = len(self.layers) - 2
        for j in range(0, len(self.layers), 2):
            weight, bias = self.layers[j][cols], self.layers[j + 1][cols]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if j < last:
                x = F.mish(x)
        return x.transpose(0, 1)
