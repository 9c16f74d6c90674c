"""From a config to a model: the embedding spec, the model for a dataset, the forward call."""

from __future__ import annotations

import torch

from compemb.config import Config
from compemb.data import Batch, Dataset
from compemb.data.sources import open_category_counts
from compemb.embeddings import EmbeddingSpec
from compemb.models import RankingModel, build_model


def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits (B,) of a batch."""
    return model(batch.dense, batch.categorical, batch.bags)


def embedding_spec(config: Config, *, sparse: bool | None = None) -> EmbeddingSpec:
    """The model's :class:`.EmbeddingSpec`; ``sparse`` overrides the config's (where the
    distributed backend cannot all-reduce sparse gradients)."""
    spec = config.model.embedding
    return spec if sparse is None else spec.with_(sparse=sparse)


def model_for(
    config: Config, dataset: Dataset, device: torch.device | str, *, sparse: bool | None = None
) -> RankingModel:
    """Build the configured model for ``dataset`` (its cardinalities and dense width)."""
    spec = embedding_spec(config, sparse=sparse)
    # Frequency-aware embeddings read the training split's counts; the maps they make are saved
    # with the model, so a checkpoint maps ids as its training did.
    counts = open_category_counts(config.data.dataset) if spec.needs_counts else None
    try:
        return build_model(config.model.name, dataset.cardinalities, dataset.num_dense,
                           config.model.embedding_dim, spec, counts=counts,
                           device=device)  # fmt: skip
    except ValueError as err:
        raise ValueError(f"model: {err}") from err
