"""Deep & Cross Network (Wang et al. 2017) as the paper's section 5 uses it.

Letters: B batch, F_out embedded vectors per row, D embedding width, I input width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from compemb.embeddings import EmbeddingSpec
from compemb.models.base import RankingModel
from compemb.models.parts import MLP, CrossNetwork, OverArch


class DCN(RankingModel):
    """Deep & Cross Network.

    The input ``x0`` is the dense features followed by the F_out flattened embeddings
    (I = num_dense + F_out D). ``deep`` is an MLP I-512-256-64 with ReLU; ``cross`` is six
    cross layers ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``; ``over_arch`` is one linear layer
    on their concatenation (I + 64 -> 1).

    Shapes: dense (B, num_dense), ids (B, F1), bags F - F1 pairs (values (N,), offsets (B,))
    -> logits (B,).

    >>> model = DCN([1000, 20, 7], 13, 16, EmbeddingSpec("qr", collisions=4))
    >>> model(torch.zeros(2, 13), torch.tensor([[1, 2, 3], [4, 5, 6]])).shape
    torch.Size([2])
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_dense: int,
        embedding_dim: int,
        spec: EmbeddingSpec,
        *,
        deep_hidden: Sequence[int] = (512, 256, 64),
        cross_layers: int = 6,
        counts: Sequence[np.ndarray] | None = None,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        sparse_arch: nn.Module | None = None,
    ):
        super().__init__(cardinalities, num_dense, embedding_dim, spec, counts=counts,
                         validate=validate, device=device, dtype=dtype,
                         sparse_arch=sparse_arch)  # fmt: skip
        kw = {"device": device, "dtype": dtype}
        width = num_dense + self.sparse_arch.num_outputs * embedding_dim
        self.deep: nn.Module = MLP(width, deep_hidden, final_activation=True, **kw)
        self.cross = CrossNetwork(width, cross_layers, **kw)
        self.over_arch = OverArch(width + deep_hidden[-1], (), **kw)

    def forward(
        self,
        dense: torch.Tensor,
        ids: torch.Tensor,
        bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        embedded = self._embed(dense, ids, bags)
        x0 = torch.cat([dense, embedded.flatten(1)], dim=1)
        return self.over_arch(torch.cat([self.cross(x0), self.deep(x0)], dim=1))
