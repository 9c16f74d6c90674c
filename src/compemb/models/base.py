"""What DLRM and DCN share: the embedding layer, the forward signature and the accounting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class RankingModel(nn.Module):
    """A click-through-rate model: dense features and categorical ids in, one logit per row out.

    Subclasses add their dense and interaction parts; this base builds the embedding layer
    (``sparse_arch``, an :class:`~compemb.embeddings.EmbeddingBagCollection`) and counts
    parameters. Forward: ``(dense (B, num_dense), ids (B, F1), bags) -> logits (B,)`` where
    ``bags`` holds the F - F1 multi-hot features as ``(values (N,), offsets (B,))`` pairs.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_dense: int,
        embedding_dim: int,
        spec: EmbeddingSpec,
        *,
        counts: Sequence[np.ndarray] | None = None,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        sparse_arch: nn.Module | None = None,
    ):
        super().__init__()
        self.num_dense = _check_count("num_dense", num_dense, 0)
        self.embedding_dim = _check_count("embedding_dim", embedding_dim, 1)
        # An embedding layer built by the caller (a TorchRecSparseArch whose tables are on the
        # meta device, for DistributedModelParallel to shard) takes the local collection's place.
        self.sparse_arch = sparse_arch if sparse_arch is not None else EmbeddingBagCollection(
            cardinalities, embedding_dim, spec, counts=counts, validate=validate, device=device,
            dtype=dtype
        )

    @property
    def num_parameters(self) -> int:
        """All trainable parameters (counts only: works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def embedding_parameters(self) -> int:
        """Parameters of the embedding layer (tables and, for path-based, their MLPs)."""
        return self.sparse_arch.num_parameters

    @property
    def dense_parameters(self) -> int:
        """Parameters outside the embedding layer (MLPs, interaction, cross network)."""
        return self.num_parameters - self.embedding_parameters

    @property
    def num_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def _embed(
        self,
        dense: torch.Tensor,
        ids: torch.Tensor,
        bags: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        if dense.dim() != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(
                f"{type(self).__name__}: dense must be (B, {self.num_dense}), got shape "
                f"{tuple(dense.shape)}"
            )
        return self.sparse_arch(ids, bags)
