"""From a config to a model: the embedding spec, the model for a dataset, the forward call."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from compemb.config import Config
from compemb.data import Batch, Dataset
from compemb.data.sources import open_category_counts
from compemb.embeddings import EmbeddingSpec, resolve_budget
from compemb.models import RankingModel, build_model


def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits (B,) of a batch."""
    return model(batch.dense, batch.categorical, batch.bags)


def resolve_config(config: Config, cardinalities: Sequence[int]) -> Config:
    """The config a run of features of ``cardinalities`` keeps: ``model.embedding.budget``'s
    knob chosen (:func:`~compemb.embeddings.budget.resolve_budget`), or, where the config gives
    it, checked against the budget. A config without a budget is returned as it is."""
    m = config.model
    try:
        spec = resolve_budget(m.embedding, cardinalities, m.embedding_dim)
    except ValueError as err:
        raise ValueError(f"model.embedding: {err}") from err
    if spec is m.embedding:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(m, embedding=spec))


def embedding_spec(config: Config, *, sparse: bool | None = None) -> EmbeddingSpec:
    """The model's :class:`.EmbeddingSpec`; ``sparse`` overrides the config's (where the
    distributed backend cannot all-reduce sparse gradients)."""
    spec = config.model.embedding
    return spec if sparse is None else spec.with_(sparse=sparse)


def model_for(
    config: Config,
    dataset: Dataset,
    device: torch.device | str,
    *,
    sparse: bool | None = None,
    torchrec: bool = False,
) -> RankingModel:
    """Build the configured model for ``dataset`` (its cardinalities and dense width).

    With ``torchrec`` its embedding layer is a
    :class:`~compemb.embeddings.torchrec.TorchRecSparseArch` whose tables are on the meta
    device (nothing allocated), for :class:`~compemb.training.sharding.ShardedTraining` to
    shard; the dataset's single-valued features are declared one-hot, and the tables' init is
    seeded by ``train.seed``.
    """
    config = resolve_config(config, dataset.cardinalities)
    spec = embedding_spec(config, sparse=False if torchrec else sparse)
    # Frequency-aware embeddings read the training split's counts; the maps they make are saved
    # with the model, so a checkpoint maps ids as its training did.
    counts = open_category_counts(config.data.dataset) if spec.needs_counts else None
    cards, dim = dataset.cardinalities, config.model.embedding_dim
    try:
        arch = None
        if torchrec:
            from compemb.embeddings.torchrec import TorchRecSparseArch

            arch = TorchRecSparseArch(cards, dim, spec, counts=counts,
                                      one_hot=len(cards) - dataset.num_bag_features,
                                      seed=config.train.seed, device="meta")  # fmt: skip
        return build_model(config.model.name, cards, dataset.num_dense, dim, spec,
                           counts=counts, device=device, sparse_arch=arch)  # fmt: skip
    except ValueError as err:
        raise ValueError(f"model: {err}") from err
