"""Recommendation models built on the embedding collection: DLRM and DCN, returning logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from compemb.embeddings import EmbeddingSpec
from compemb.models.base import RankingModel
from compemb.models.dcn import DCN
from compemb.models.dlrm import DLRM
from compemb.models.parts import (
    MLP,
    CrossNetwork,
    DenseArch,
    DotInteraction,
    OverArch,
    init_reference_mlp,
)

MODELS: dict[str, type[RankingModel]] = {"dlrm": DLRM, "dcn": DCN}


def build_model(
    name: str,
    cardinalities: Sequence[int],
    num_dense: int,
    embedding_dim: int,
    spec: EmbeddingSpec,
    *,
    counts: Sequence[np.ndarray] | None = None,
    validate: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    sparse_arch: torch.nn.Module | None = None,
) -> RankingModel:
    """Build a registered model by name with the paper's layer sizes.

    ``device="meta"`` builds it without memory, for parameter counts of Criteo-size tables
    (below: 2,500,000 + 4 QR rows for the first feature; the second, n = 3 <= 4 collisions,
    keeps its full table of 3 rows). ``sparse_arch`` replaces the local collection by an
    embedding layer built elsewhere (the TorchRec one that sharded training builds on meta).

    >>> build_model("dcn", [10**7, 3], 13, 16, EmbeddingSpec("qr", collisions=4),
    ...             device="meta").embedding_parameters
    40000112
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](cardinalities, num_dense, embedding_dim, spec, counts=counts,
                         validate=validate, device=device, dtype=dtype,
                         sparse_arch=sparse_arch)  # fmt: skip


__all__ = [
    "DCN",
    "DLRM",
    "MLP",
    "MODELS",
    "CrossNetwork",
    "DenseArch",
    "DotInteraction",
    "OverArch",
    "RankingModel",
    "build_model",
    "init_reference_mlp",
]
