"""compemb: compositional embeddings using complementary partitions for memory-efficient
recommendation models (Shi et al., KDD 2020)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Imported on first use, so that commands which never touch torch (``compemb preprocess``, the
# data layer) start without its 1.5-2.5 s import.
_LAZY = {"partitions": "compemb.partitions"} | dict.fromkeys(
    (
        "CompositionalEmbeddingBag",
        "EmbeddingBagCollection",
        "EmbeddingSpec",
        "FeatureEmbeddingBag",
        "FullEmbeddingBag",
        "HashEmbeddingBag",
        "PathEmbeddingBag",
        "make_embedding_bag",
    ),
    "compemb.embeddings",
)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'compemb' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"compemb.{name}" else getattr(module, name)
    globals()[name] = value
    return value


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
