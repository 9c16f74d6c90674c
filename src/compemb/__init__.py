"""compemb: compositional embeddings using complementary partitions for memory-efficient
recommendation models (Shi et al., KDD 2020)."""

from compemb import partitions

__version__ = "0.1.0"

__all__ = ["partitions", "__version__"]
