"""Data: Criteo preprocessing, MovieLens-100k, planted synthetic data, and one Dataset interface."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compemb.data.batch import Batch
    from compemb.data.criteo import CRITEO_KAGGLE_CARDINALITIES
    from compemb.data.dataset import ArrayDataset, Dataset, SplitArrays, load_dataset_folder
    from compemb.data.movielens import load_movielens_100k
    from compemb.data.preprocess import PreprocessOptions, PreprocessSummary, preprocess_criteo
    from compemb.data.sources import open_dataset
    from compemb.data.storage import DatasetMetadata, read_category_counts, read_metadata
    from compemb.data.synthetic import SynthOptions, generate_synthetic

# Imported on first use: preprocessing needs neither torch (the Dataset side) nor the others.
_LAZY = {
    "Batch": "batch",
    "CRITEO_KAGGLE_CARDINALITIES": "criteo",
    "ArrayDataset": "dataset",
    "Dataset": "dataset",
    "SplitArrays": "dataset",
    "load_dataset_folder": "dataset",
    "load_movielens_100k": "movielens",
    "PreprocessOptions": "preprocess",
    "PreprocessSummary": "preprocess",
    "preprocess_criteo": "preprocess",
    "open_dataset": "sources",
    "DatasetMetadata": "storage",
    "read_category_counts": "storage",
    "read_metadata": "storage",
    "SynthOptions": "synthetic",
    "generate_synthetic": "synthetic",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'compemb.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"compemb.data.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CRITEO_KAGGLE_CARDINALITIES",
    "ArrayDataset",
    "Batch",
    "Dataset",
    "DatasetMetadata",
    "PreprocessOptions",
    "PreprocessSummary",
    "SplitArrays",
    "SynthOptions",
    "generate_synthetic",
    "load_dataset_folder",
    "load_movielens_100k",
    "open_dataset",
    "preprocess_criteo",
    "read_category_counts",
    "read_metadata",
]
