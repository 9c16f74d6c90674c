"""Opening a dataset by name or folder: the one entry point trainers use."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compemb.data.dataset import Dataset, load_dataset_folder
from compemb.data.movielens import load_movielens_100k, movielens_100k_counts
from compemb.data.storage import read_category_counts

__all__ = ["MOVIELENS_NAMES", "open_category_counts", "open_dataset"]

MOVIELENS_NAMES: tuple[str, ...] = ("movielens", "movielens-100k", "ml-100k")


def open_dataset(spec: str | os.PathLike[str]) -> Dataset:
    """``"movielens"`` (MovieLens-100k from the installed recbole package) or a dataset folder
    written by ``compemb preprocess`` or ``compemb synth``."""
    if str(spec).lower() in MOVIELENS_NAMES:
        return load_movielens_100k()
    if not Path(spec).is_dir():
        raise FileNotFoundError(
            f"dataset {str(spec)!r} is neither one of {MOVIELENS_NAMES} nor a dataset folder"
        )
    return load_dataset_folder(spec)


def open_category_counts(spec: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """The training split's per-id counts of every feature of the dataset ``spec`` names (as
    :func:`open_dataset`): what frequency-aware embeddings are built from."""
    if str(spec).lower() in MOVIELENS_NAMES:
        return movielens_100k_counts()
    return read_category_counts(spec)
