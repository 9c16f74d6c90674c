"""Per-feature category dictionaries for streaming preprocessing: open-addressing hash tables in
NumPy, vectorized over a whole block of keys.

Why a hash table: the keys of a large Criteo feature arrive in random order and tens of millions
of them are new, so a sorted key array must be copied whole to merge every block's new keys
(quadratic over a big file), and a Python ``dict`` costs a call and ~100 bytes per key. Here a
key costs 16 to 32 bytes (one uint64 slot, the table kept between a quarter and half full), a
lookup costs one gather plus rarely a few probes, and growth doubles the table (amortized linear).

Every table slot packs ``(key + 1) | code << 33`` into one uint64 (0 = empty), where a key's
code is its index + 1, so a probe reads one word and one comparison tells a hit from a miss
(an empty slot never matches key + 1 >= 1); keys are below 2**33 - 1 (32-bit category values
plus the blank key 2**32), codes below 2**31.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KeyIndex", "CategoryCounter", "Vocabulary", "add_counts"]

_KEY_BITS = np.uint64(33)
_KEY_MASK = np.uint64((1 << 33) - 1)
_MAX_KEY = (1 << 33) - 2
_MAX_INDEX = np.iinfo(np.int32).max - 1
# Fibonacci hashing: the top bits of key * 2**64 / golden ratio spread any key pattern evenly.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _shifted_keys(keys: np.ndarray) -> np.ndarray:
    """``keys + 1`` as uint64, checked to lie in [1, 2**33 - 1]."""
    keys = np.asarray(keys)
    signed = keys.dtype.kind != "u"
    if keys.size and ((signed and keys.min() < 0) or keys.max() > _MAX_KEY):
        raise ValueError(f"keys must lie in [0, 2**33 - 1), got [{keys.min()}, {keys.max()}]")
    return np.add(keys, 1, dtype=np.uint64, casting="unsafe")


def _codes(entries: np.ndarray) -> np.ndarray:
    """The code (index + 1, 0 for an empty slot) of each entry, as int32."""
    out = np.empty(len(entries), dtype=np.uint32)
    if np.little_endian:  # bits 33..63: the high 32-bit word shifted down by one
        np.right_shift(entries.view(np.uint32)[1::2], 1, out=out)
    else:
        out[:] = entries >> _KEY_BITS
    return out.view(np.int32)


class KeyIndex:
    """Maps keys in ``[0, 2**33 - 1)`` to indices ``0, 1, 2, ...`` in the order they are first
    added. Methods return codes: index + 1, and 0 for a key never added.

    Args:
        capacity: initial number of slots, rounded up to a power of two (grows as needed).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._size = 0
        self._allocate(max(int(capacity) - 1, 15).bit_length())

    def _allocate(self, bits: int) -> None:
        self._table = np.zeros(1 << bits, dtype=np.uint64)
        self._mask = (1 << bits) - 1
        self._shift = np.uint64(64 - bits)

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Memory held by the table."""
        return self._table.nbytes

    def _home(self, keys1: np.ndarray) -> np.ndarray:
        slots = np.multiply(keys1, _MIX)
        np.right_shift(slots, self._shift, out=slots)
        return slots.view(np.int64)  # below 2**bits: the same values

    def _probe(self, keys1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key (+ 1), the slot holding it, or else the empty slot ending its probe
        sequence; and that slot's entry (0 when empty)."""
        slots = self._home(keys1)
        entries = self._table[slots]
        # collisions and misses (few once a dictionary is warm); the misses stop at their empty slot
        pending = np.flatnonzero(np.bitwise_and(entries, _KEY_MASK) != keys1)
        pending = pending[entries[pending] != 0]
        while pending.size:
            s = (slots[pending] + 1) & self._mask
            e = self._table[s]
            slots[pending] = s
            entries[pending] = e
            pending = pending[(e != 0) & ((e & _KEY_MASK) != keys1[pending])]
        return slots, entries

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Codes ((N,) int32: index + 1, or 0 where a key was never added) of ``keys`` ((N,))."""
        return _codes(self._probe(_shifted_keys(keys))[1])

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Codes ((N,) int32: index + 1) of ``keys`` ((N,)), giving new keys the next indices in
        the order of their first occurrence in ``keys``."""
        keys1 = _shifted_keys(keys)
        slots, entries = self._probe(keys1)
        out = _codes(entries)
        missing = np.flatnonzero(out == 0)
        if not missing.size:
            return out
        new_keys1, rows_in_run, run_of_row = _first_seen(keys1[missing])
        if self._size + len(new_keys1) > _MAX_INDEX:
            raise ValueError(f"more than {_MAX_INDEX} distinct keys in one index")
        new_codes = np.arange(self._size + 1, self._size + 1 + len(new_keys1), dtype=np.int32)
        if self._grow(self._size + len(new_keys1)):
            start = None
        else:
            # the first occurrence of a new key found the empty slot its probe ends at
            start = slots[missing[rows_in_run]]
        self._insert(new_keys1 | (new_codes.astype(np.uint64) << _KEY_BITS), start)
        self._size += len(new_keys1)
        out[missing] = new_codes[run_of_row]
        return out

    def _grow(self, size: int) -> bool:
        """Double the table until ``size`` keys fill at most half of it; whether it grew."""
        bits = self._mask.bit_length()
        while 2 * size > (1 << bits):
            bits += 1
        if bits == self._mask.bit_length():
            return False
        old = self._table[self._table != 0]
        self._allocate(bits)
        if bits <= 31:  # slot and position pack into one int64 for the sort
            self._place(old)
        else:
            self._insert(old, None)
        return True

    def _place(self, entries: np.ndarray) -> None:
        """Store ``entries`` of distinct keys in the empty table, without probing rounds: put
        in the order of their home slots, each lands at max(its home, the previous one's slot
        + 1), which is what linear probing would do; a run past the end wraps to slot 0."""
        homes = np.sort(self._home(entries & _KEY_MASK) << 32 | np.arange(len(entries)))
        order = (homes & 0xFFFFFFFF).astype(np.intp)
        steps = np.arange(len(entries))
        slots = np.maximum.accumulate((homes >> 32) - steps) + steps
        fits = slots <= self._mask
        self._table[slots[fits]] = entries[order[fits]]
        if not fits.all():
            wrapped = order[~fits]
            self._insert(entries[wrapped], np.zeros(len(wrapped), dtype=np.int64))

    def _insert(self, entries: np.ndarray, start: np.ndarray | None) -> None:
        """Store ``entries`` of distinct keys absent from the table; ``start``: slots from which
        each key's probe may begin (its home slot when None)."""
        slots = self._home(entries & _KEY_MASK) if start is None else start.copy()
        pending = np.arange(len(entries))
        while pending.size:
            s = slots[pending]
            free = self._table[s] == 0
            claim, at = pending[free], s[free]
            # Several keys may claim one free slot: the one whose entry stays there won it.
            self._table[at] = entries[claim]
            lost = self._table[at] != entries[claim]
            pending = np.concatenate([pending[~free], claim[lost]])
            slots[pending] = (slots[pending] + 1) & self._mask


def _first_seen(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``keys`` in the order of their first occurrence; the position of each one's
    first occurrence; and, for every position, which distinct key it holds."""
    n = len(keys)
    row_bits = np.uint64(max(n - 1, 1).bit_length())
    # one sort of (key, position) packed in a uint64 (33 + 31 bits) groups equal keys, first
    # occurrence first, with no stable (slow) sort
    packed = np.sort((keys << row_bits) | np.arange(n, dtype=np.uint64))
    sorted_keys = packed >> row_bits
    rows = (packed & ((np.uint64(1) << row_bits) - np.uint64(1))).astype(np.intp)
    run_start = np.empty(n, dtype=bool)
    run_start[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=run_start[1:])
    first_rows = rows[run_start]
    # first occurrences in position order, and each one's rank in it, without another sort
    is_first = np.zeros(n, dtype=bool)
    is_first[first_rows] = True
    rank_at = np.cumsum(is_first) - 1
    run_of_row = np.empty(n, dtype=np.intp)
    run_of_row[rows] = rank_at[first_rows][np.cumsum(run_start) - 1]
    first_positions = np.flatnonzero(is_first)
    return keys[first_positions], first_positions, run_of_row


def add_counts(counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``counts`` (grown to fit, possibly a new array) plus the occurrences of each value of
    ``index`` ((N,) non-negative ints)."""
    if not len(index):
        return counts
    top = int(index.max()) + 1
    if top > len(counts):
        counts = np.concatenate(
            [counts, np.zeros(max(top, 2 * len(counts)) - len(counts), np.int64)]
        )
    np.add.at(counts, index, 1)  # NumPy 2's unbuffered fast path: no pass over the range
    return counts


class CategoryCounter:
    """Counts occurrences of keys over many blocks (the ``--min-count`` pass)."""

    def __init__(self) -> None:
        self.index = KeyIndex()
        self._counts = np.zeros(0, dtype=np.int64)

    def add(self, keys: np.ndarray) -> None:
        """Count every value of ``keys`` ((N,) ints in [0, 2**33 - 1))."""
        self._counts = add_counts(self._counts, self.index.add(keys))

    @property
    def counts(self) -> np.ndarray:
        """(distinct keys,) int64: occurrences of each key, in first-seen order."""
        return self._counts[1 : len(self.index) + 1]

    def __len__(self) -> int:
        return len(self.index)


class Vocabulary:
    """Maps keys to contiguous int32 ids in first-seen order.

    Args:
        bucket: reserve id 0 as a shared bucket for keys that get no id of their own: keys met by
            :meth:`encode` with ``grow=False`` that were never added (unseen).

    Use :meth:`frequent` for a vocabulary fixed by a counting pass (rare keys in the bucket).
    """

    def __init__(self, *, bucket: bool = False) -> None:
        self.bucket = bucket
        self._index = KeyIndex()
        self._remap: np.ndarray | None = None
        self._size = int(bucket)

    @classmethod
    def frequent(cls, counter: CategoryCounter, min_count: int) -> Vocabulary:
        """The fixed vocabulary of the keys ``counter`` saw at least ``min_count`` times, in the
        order it first saw them; every other key maps to the bucket id 0."""
        vocab = cls(bucket=True)
        keep = counter.counts >= min_count
        vocab._index = counter.index
        # by code: code 0 (never counted, e.g. unseen in train) is the bucket too
        vocab._remap = np.concatenate([[0], np.where(keep, np.cumsum(keep), 0)]).astype(np.int32)
        vocab._size = 1 + int(keep.sum())
        return vocab

    @property
    def size(self) -> int:
        """Number of ids handed out so far, the bucket included."""
        return self._size

    def encode(self, keys: np.ndarray, *, grow: bool) -> np.ndarray:
        """Ids ((N,) int32) of ``keys`` ((N,) ints in [0, 2**33)); with ``grow``, new keys get new
        ids (a vocabulary from :meth:`frequent` never grows)."""
        if self._remap is not None:
            return self._remap[self._index.lookup(keys)]
        if grow:
            codes = self._index.add(keys)
            self._size = len(self._index) + int(self.bucket)
        else:
            codes = self._index.lookup(keys)
            if not self.bucket and not codes.all():
                raise KeyError(f"{int((codes == 0).sum())} keys have no id and there is no bucket")
        if not self.bucket:
            codes -= 1  # codes are index + 1: with a bucket, exactly the ids (0 = bucket)
        return codes
