"""Embedding modules that drop in where ``torch.nn.EmbeddingBag`` was."""

from compemb.embeddings.base import FullEmbeddingBag, full_table_bound
from compemb.embeddings.collection import EmbeddingBagCollection
from compemb.embeddings.factory import (
    SCHEMES,
    EmbeddingSpec,
    make_embedding_bag,
    resolve_spec,
    spec_partitions,
)
from compemb.embeddings.operation import (
    OPERATIONS,
    CompositionalEmbeddingBag,
    FeatureEmbeddingBag,
    HashEmbeddingBag,
)
from compemb.embeddings.path import TRANSFORMS, PathEmbeddingBag

__all__ = [
    "OPERATIONS",
    "SCHEMES",
    "TRANSFORMS",
    "CompositionalEmbeddingBag",
    "EmbeddingBagCollection",
    "EmbeddingSpec",
    "FeatureEmbeddingBag",
    "FullEmbeddingBag",
    "HashEmbeddingBag",
    "PathEmbeddingBag",
    "full_table_bound",
    "make_embedding_bag",
    "resolve_spec",
    "spec_partitions",
]
