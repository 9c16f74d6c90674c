"""compemb: compositional embeddings using complementary partitions for memory-efficient
recommendation models (Shi et al., KDD 2020)."""

from compemb import partitions
from compemb.embeddings import (
    CompositionalEmbeddingBag,
    EmbeddingBagCollection,
    EmbeddingSpec,
    FeatureEmbeddingBag,
    FullEmbeddingBag,
    HashEmbeddingBag,
    PathEmbeddingBag,
    make_embedding_bag,
)

__version__ = "0.1.0"

__all__ = [
    "CompositionalEmbeddingBag",
    "EmbeddingBagCollection",
    "EmbeddingSpec",
    "FeatureEmbeddingBag",
    "FullEmbeddingBag",
    "HashEmbeddingBag",
    "PathEmbeddingBag",
    "__version__",
    "make_embedding_bag",
    "partitions",
]
