"""Per-feature category dictionaries for streaming preprocessing, as sorted NumPy arrays.

A Python ``dict`` of tens of millions of ints costs gigabytes and a Python call per value; a
sorted key array with :func:`numpy.searchsorted` costs 12 bytes a key and stays vectorized. Only
the keys not seen before go through :func:`numpy.unique`, so once a feature's dictionary is warm
a chunk costs one binary search per value.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CategoryCounter", "Vocabulary"]

_SORT_FROM = 1 << 16


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in ``sorted_keys`` (clipped) and whether each one is present."""
    pos = np.searchsorted(sorted_keys, keys)
    np.minimum(pos, max(len(sorted_keys) - 1, 0), out=pos)
    if len(sorted_keys) == 0:
        return pos, np.zeros(len(keys), dtype=bool)
    return pos, sorted_keys[pos] == keys


class CategoryCounter:
    """Counts occurrences of int64 keys over many chunks (the ``--min-count`` pass)."""

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)
        self._counts = np.empty(0, dtype=np.int64)

    def add(self, keys: np.ndarray) -> None:
        """Count every value of ``keys`` ((N,) int64)."""
        uniq, counts = np.unique(keys, return_counts=True)
        pos, found = _lookup(self._keys, uniq)
        np.add.at(self._counts, pos[found], counts[found])
        new = ~found
        at = np.searchsorted(self._keys, uniq[new])
        self._keys = np.insert(self._keys, at, uniq[new])
        self._counts = np.insert(self._counts, at, counts[new])

    def frequent(self, min_count: int) -> np.ndarray:
        """Sorted keys seen at least ``min_count`` times."""
        return self._keys[self._counts >= min_count]

    def __len__(self) -> int:
        return len(self._keys)


class Vocabulary:
    """Maps int64 keys to contiguous int32 ids in first-seen order.

    Args:
        bucket: reserve id 0 as a shared bucket for keys that get no id of their own: keys not in
            ``allowed`` (rare ones), and keys met by :meth:`encode` with ``grow=False`` (unseen).
        allowed: sorted keys that may get an id of their own; ``None`` allows every key.
    """

    def __init__(self, *, bucket: bool = False, allowed: np.ndarray | None = None) -> None:
        if allowed is not None and not bucket:
            raise ValueError("a vocabulary restricted to `allowed` keys needs a bucket")
        self.bucket = bucket
        self._allowed = allowed
        self._keys = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int32)
        self._next = int(bucket)

    @property
    def size(self) -> int:
        """Number of ids handed out so far, the bucket included."""
        return self._next

    def encode(self, keys: np.ndarray, *, grow: bool) -> np.ndarray:
        """Ids ((N,) int32) of ``keys`` ((N,) int64); with ``grow``, new keys get new ids."""
        # A big dictionary is searched with sorted keys: the binary searches then walk it forward
        # instead of missing the cache at every level (about 5x faster from 1 M keys on).
        order = np.argsort(keys, kind="stable") if len(self._keys) >= _SORT_FROM else None
        queries = keys if order is None else keys[order]
        pos, found = _lookup(self._keys, queries)
        ids = np.where(found, self._ids[pos] if len(self._ids) else 0, 0).astype(np.int32)
        if not found.all():
            if not grow and not self.bucket:
                raise KeyError(f"{int((~found).sum())} keys have no id and there is no bucket")
            if grow:
                self._add(queries, np.flatnonzero(~found), ids, order)
        if order is None:
            return ids
        out = np.empty_like(ids)
        out[order] = ids
        return out

    def _add(
        self, queries: np.ndarray, missing: np.ndarray, ids: np.ndarray, order: np.ndarray | None
    ) -> None:
        """Give new ids to ``queries[missing]`` (allowed ones), in first-seen order; fill ``ids``.

        ``queries`` is the input itself (``order`` None) or the input sorted by ``order``.
        """
        candidates = queries[missing]
        if self._allowed is not None:
            _, ok = _lookup(self._allowed, candidates)
            missing, candidates = missing[ok], candidates[ok]
        # stable: among equal keys, the first in sorted position is the first seen (sorted
        # queries are already in that order)
        if order is None:
            by_key = np.argsort(candidates, kind="stable")
        else:
            by_key = np.arange(len(candidates))
        sorted_keys = candidates[by_key]
        run_start = np.ones(len(sorted_keys), dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        uniq = sorted_keys[run_start]
        first = missing[by_key[run_start]]
        first_seen = first if order is None else order[first]
        if self._next + len(uniq) > np.iinfo(np.int32).max:
            raise ValueError(f"more than {np.iinfo(np.int32).max} categories in one feature")
        new_ids = np.empty(len(uniq), dtype=np.int32)
        new_ids[np.argsort(first_seen, kind="stable")] = np.arange(
            self._next, self._next + len(uniq), dtype=np.int32
        )
        self._next += len(uniq)
        ids[missing[by_key]] = new_ids[np.cumsum(run_start) - 1]
        at = np.searchsorted(self._keys, uniq)
        self._keys = np.insert(self._keys, at, uniq)
        self._ids = np.insert(self._ids, at, new_ids)
