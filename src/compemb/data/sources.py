"""Opening a dataset by name or folder: the one entry point trainers use."""

from __future__ import annotations

import os
from pathlib import Path

from compemb.data.dataset import Dataset, load_dataset_folder
from compemb.data.movielens import load_movielens_100k

__all__ = ["MOVIELENS_NAMES", "open_dataset"]

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
