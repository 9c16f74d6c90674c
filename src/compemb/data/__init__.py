"""Data: Criteo preprocessing, MovieLens-100k, planted synthetic data, and one Dataset interface."""

from compemb.data.criteo import CRITEO_KAGGLE_CARDINALITIES

__all__ = ["CRITEO_KAGGLE_CARDINALITIES"]
