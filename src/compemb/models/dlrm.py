"""DLRM (Naumov et al. 2019) as the paper's section 5 uses it.

Letters: B batch, F_out embedded vectors per row, D embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from compemb.embeddings import EmbeddingSpec
from compemb.models.base import RankingModel
from compemb.models.parts import DenseArch, DotInteraction, OverArch


class DLRM(RankingModel):
    """Deep Learning Recommendation Model.

    ``sparse_arch`` embeds the categorical features into F_out vectors of width D; ``dense_arch``
    (bottom MLP num_dense-512-256-64-D, ReLU after every layer as in the reference) turns the
    dense features into one more; ``interaction`` takes the dot product of every pair of the
    F_out + 1 vectors (strictly lower triangle); ``over_arch`` (top MLP 512-256-1) reads the
    bottom output concatenated with those dot products: width D + (F_out + 1) F_out / 2, 367 for
    Criteo at D = 16.

    With ``num_dense=0`` there is no bottom MLP: only the F_out embeddings interact and the top
    MLP reads their F_out (F_out - 1) / 2 dot products alone.

    Shapes: dense (B, num_dense), ids (B, F1), bags F - F1 pairs (values (N,), offsets (B,))
    -> logits (B,).

    >>> model = DLRM([1000, 20, 7], 13, 16, EmbeddingSpec("qr", collisions=4))
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
        bottom_hidden: Sequence[int] = (512, 256, 64),
        top_hidden: Sequence[int] = (512, 256),
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
        num_vectors = self.sparse_arch.num_outputs
        if num_dense > 0:
            self.dense_arch: DenseArch | None = DenseArch(num_dense, bottom_hidden,
                                                          embedding_dim, **kw)  # fmt: skip
            num_vectors += 1
        else:
            self.dense_arch = None
        self.interaction = DotInteraction(num_vectors, device=device)
        width = self.interaction.out_features + (embedding_dim if num_dense > 0 else 0)
        self.over_arch = OverArch(width, top_hidden, **kw)

    def forward(
        self,
        dense: torch.Tensor,
        ids: torch.Tensor,
        bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        embedded = self._embed(dense, ids, bags)
        if self.dense_arch is None:
            return self.over_arch(self.interaction(embedded))
        bottom = self.dense_arch(dense)
        vectors = torch.cat([bottom.unsqueeze(1), embedded], dim=1)
        return self.over_arch(torch.cat([bottom, self.interaction(vectors)], dim=1))
