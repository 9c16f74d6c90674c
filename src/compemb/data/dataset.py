"""One :class:`Dataset` interface for every source, and :func:`~compemb.data.sources.open_dataset`.

Batching is defined once, in :meth:`Dataset.batches`: global batch ``i`` holds the rows
``order[i*B:(i+1)*B]`` of a split, where ``order`` is ``arange(rows)`` or, with ``shuffle``, the
permutation ``numpy.random.default_rng(seed).permutation(rows)``. With ``world_size > 1``, rank
``r`` gets part ``r`` of ``np.array_split(global_batch_rows, world_size)``, so every rank takes the
same number of steps (a share may be empty in the last batch). ``start=i`` skips the first ``i``
global batches without reading them, for resuming.

    >>> from compemb.data import open_dataset
    >>> ds = open_dataset("movielens")
    >>> batch = next(ds.batches("train", 4, shuffle=True, seed=1))
    >>> batch.categorical.shape, batch.dense.shape, len(batch.bags)
    (torch.Size([4, 7]), torch.Size([4, 0]), 1)
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compemb.data.batch import Batch
from compemb.data.storage import SPLITS, read_metadata

__all__ = ["Dataset", "SplitArrays", "ArrayDataset", "load_dataset_folder"]


class Dataset(ABC):
    """Train/val/test splits of a CTR dataset, read as :class:`~compemb.data.batch.Batch` es.

    Attributes:
        name: short name of the source.
        feature_names: single-valued features first, then the multi-hot (bag) features.
        cardinalities: number of ids of each feature, in ``feature_names`` order.
        num_dense: number of dense features (0 allowed).
        num_bag_features: how many of the last features are multi-hot bags.
    """

    name: str
    feature_names: tuple[str, ...]
    cardinalities: tuple[int, ...]
    num_dense: int
    num_bag_features: int

    @abstractmethod
    def num_rows(self, split: str) -> int:
        """Number of rows of ``split`` ("train", "val" or "test")."""

    @abstractmethod
    def _gather(self, split: str, rows: slice | np.ndarray) -> Batch:
        """The batch of ``rows`` (a slice, or an index array in the wanted order) of ``split``."""

    def num_batches(self, split: str, batch_size: int) -> int:
        """Number of global batches of ``split``, the last partial one included."""
        _check_batch_size(batch_size)
        return -(-self.num_rows(split) // batch_size)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """This rank's share of each global batch of ``batch_size`` rows, from batch ``start``."""
        _check_batch_size(batch_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start < 0:
            raise ValueError(f"start must be a non-negative batch index, got {start}")
        rows = self.num_rows(split)
        order = np.random.default_rng(seed).permutation(rows) if shuffle else None
        return self._iterate(split, batch_size, order, rows, start, rank, world_size)

    def _iterate(
        self,
        split: str,
        batch_size: int,
        order: np.ndarray | None,
        rows: int,
        start: int,
        rank: int,
        world_size: int,
    ) -> Iterator[Batch]:
        for i in range(start, self.num_batches(split, batch_size)):
            lo = i * batch_size
            size = min(lo + batch_size, rows) - lo
            # As np.array_split: the first `extra` ranks get one row more.
            share, extra = divmod(size, world_size)
            a = lo + rank * share + min(rank, extra)
            b = a + share + (rank < extra)
            yield self._gather(split, slice(a, b) if order is None else order[a:b])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_rows(s)}" for s in SPLITS)
        return f"{type(self).__name__}({self.name!r}, features={len(self.feature_names)}, {sizes})"


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


@dataclass(frozen=True)
class SplitArrays:
    """The arrays of one split (memory-mapped or in memory); n rows.

    Attributes:
        categorical: (n, F) integer ids.
        dense: (n, num_dense) float32.
        labels: (n,) in {0, 1}.
        bags: per bag feature, (values (T,) ids, row_offsets (n + 1,)): row i holds
            ``values[row_offsets[i]:row_offsets[i+1]]``.
    """

    categorical: np.ndarray
    dense: np.ndarray
    labels: np.ndarray
    bags: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def _take(array: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
    if isinstance(rows, slice):
        return np.array(array[rows])  # a copy: tensors must not alias a read-only memory map
    # Reading sorted indices walks a memory map forward; then put rows back in the asked order.
    sorted_rows = np.sort(rows)
    return np.asarray(array[sorted_rows])[np.searchsorted(sorted_rows, rows)]


def _take_bag(values: np.ndarray, row_offsets: np.ndarray, rows: slice | np.ndarray):
    if isinstance(rows, slice):
        rows = np.arange(rows.start, rows.stop)
    starts = row_offsets[rows]
    lengths = row_offsets[rows + 1] - starts
    offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    index = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
    return torch.from_numpy(values[index].astype(np.int64)), torch.from_numpy(offsets)


class ArrayDataset(Dataset):
    """A :class:`Dataset` over NumPy arrays (memory maps or in memory), one set per split."""

    def __init__(
        self,
        name: str,
        feature_names: Sequence[str],
        cardinalities: Sequence[int],
        num_dense: int,
        splits: dict[str, SplitArrays],
        num_bag_features: int = 0,
    ) -> None:
        if len(feature_names) != len(cardinalities):
            raise ValueError(f"{len(feature_names)} feature names, {len(cardinalities)} sizes")
        missing = set(SPLITS) - set(splits)
        if missing:
            raise ValueError(f"dataset {name!r} lacks the splits {sorted(missing)}")
        for split, arrays in splits.items():
            n = len(arrays.labels)
            if (
                arrays.categorical.shape != (n, len(feature_names) - num_bag_features)
                or arrays.dense.shape != (n, num_dense)
                or len(arrays.bags) != num_bag_features
            ):
                raise ValueError(f"dataset {name!r}: the {split} arrays have inconsistent shapes")
        self.name = name
        self.feature_names = tuple(feature_names)
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.num_dense = num_dense
        self.num_bag_features = num_bag_features
        self._splits = splits

    def num_rows(self, split: str) -> int:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return len(self._splits[split].labels)

    def _gather(self, split: str, rows: slice | np.ndarray) -> Batch:
        arrays = self._splits[split]
        return Batch(
            dense=torch.from_numpy(_take(arrays.dense, rows).astype(np.float32, copy=False)),
            categorical=torch.from_numpy(_take(arrays.categorical, rows).astype(np.int64)),
            bags=tuple(_take_bag(values, offs, rows) for values, offs in arrays.bags),
            labels=torch.from_numpy(_take(arrays.labels, rows).astype(np.float32)),
        )


def load_dataset_folder(directory: str | os.PathLike[str]) -> ArrayDataset:
    """Open a dataset folder written by the Criteo preprocessor or the synthetic generator."""
    metadata = read_metadata(directory)
    splits = {}
    for split in SPLITS:
        arrays = [
            np.load(Path(directory) / split / f"{part}.npy", mmap_mode="r")
            for part in ("categorical", "dense", "labels")
        ]
        splits[split] = SplitArrays(*arrays)
    return ArrayDataset(
        name=metadata.name,
        feature_names=metadata.feature_names,
        cardinalities=metadata.cardinalities,
        num_dense=metadata.num_dense,
        splits=splits,
        num_bag_features=metadata.num_bag_features,
    )
