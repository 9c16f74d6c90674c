"""Complementary partitions of a category set (paper section 3): pure integer index arithmetic.

A *partition set* maps every category index ``i`` in ``[0, n)`` to one bucket per partition.
The partitions are *complementary* when no two categories share every bucket, so a composition
of per-partition embeddings can give every category its own vector.

Every constructor returns a :class:`PartitionSet`::

    >>> import torch
    >>> qr = quotient_remainder(10, collisions=4)
    >>> qr.sizes
    (3, 4)
    >>> [b.tolist() for b in qr.buckets(torch.tensor([0, 5, 9]))]
    [[0, 1, 2], [0, 1, 1]]
    >>> qr.is_complementary()
    True

All bucket arithmetic is integer arithmetic on int64 tensors (floor division and remainder);
no value ever passes through a float, so it is exact for every index up to 2**63 - 1.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import reduce
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from compemb.registry import Registry

__all__ = [
    "FAMILIES",
    "ORDERS",
    "Digit",
    "HeadPartitions",
    "HotSlots",
    "RelabeledPartitions",
    "frequency_rank",
    "frequency_relabeling",
    "relabel_dtype",
    "PartitionFamily",
    "PartitionSet",
    "ModuloPartitions",
    "MixedRadixPartitions",
    "ExplicitPartitions",
    "remainder",
    "quotient_remainder",
    "mixed_radix",
    "chinese_remainder",
    "balanced_mixed_radix",
    "balanced_chinese_remainder",
    "for_collisions",
    "explicit",
    "get_family",
    "register_family",
]

_INT64_MAX = 2**63 - 1


def _check_count(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {value!r} ({type(value).__name__})")
    if not minimum <= int(value) <= _INT64_MAX:
        raise ValueError(f"{what} must be in [{minimum}, 2**63 - 1], got {value}")
    return int(value)


def relabel_dtype(num_categories: int) -> torch.dtype:
    """How a relabel map of n categories is stored: int32 (4 bytes an id) while its values fit,
    int64 from n > 2^31 on.

    >>> relabel_dtype(10**6), relabel_dtype(2**31 + 1)
    (torch.int32, torch.int64)
    """
    return torch.int32 if num_categories <= 2**31 else torch.int64


def _as_index(idx: torch.Tensor) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(idx).__name__}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"indices must be an integer tensor, got dtype {idx.dtype}")
    return idx.long()


class Digit(NamedTuple):
    """One partition written as index arithmetic: bucket ``(i // place) mod modulus``, with
    ``rows`` buckets. A modulus that no quotient below n reaches is a no-op."""

    place: int
    modulus: int
    rows: int


def digit(idx: torch.Tensor, place: int | torch.Tensor, modulus: int | torch.Tensor, *,
          divide: bool = True, reduce: bool = True) -> torch.Tensor:
    """``(idx // place) mod modulus`` in exact int64 arithmetic; ``place``/``modulus`` may be
    tensors broadcasting against ``idx`` (the stacked collection's per-feature values).
    ``divide``/``reduce`` false skip a step known to be a no-op."""
    if divide:
        idx = torch.div(idx, place, rounding_mode="floor")
    return torch.remainder(idx, modulus) if reduce else idx


class HotSlots(NamedTuple):
    """A partition that gives each of the ``hot`` ids (sorted, (H,) int64) a bucket of its own
    (its position among them) and every other id the shared bucket H: ``rows`` = H + 1."""

    ids: torch.Tensor
    rows: int


class PartitionSet(ABC):
    """k partitions of the categories ``[0, num_categories)``.

    Attributes:
        num_categories: n, the number of categories.
        sizes: the number of buckets of each partition, in order.
    """

    num_categories: int
    sizes: tuple[int, ...]

    def layout(self) -> tuple[Digit | HotSlots, ...] | None:
        """Each partition as a :class:`Digit` (or :class:`HotSlots`) of the relabelled id
        (:meth:`relabeling`); None when the family is not of that form (attribute tables),
        which the stacked collection then embeds feature by feature."""
        return None

    def relabeling(self) -> torch.Tensor | None:
        """The (n,) int64 map applied to every id before :meth:`layout`'s arithmetic, or None
        (ids are used as they are)."""
        return None

    def on_maps(self, relabel: torch.Tensor | None, hot: torch.Tensor | None) -> PartitionSet:
        """These partitions reading their id maps from the given tensors (of the same shapes:
        a module's buffers after a move), unchecked; partitions without maps are themselves."""
        return self

    @abstractmethod
    def buckets(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Bucket ids of ``idx`` in every partition.

        Args:
            idx: integer tensor of any shape with values in ``[0, num_categories)``.
                Values are not range-checked here (modules check their inputs).

        Returns:
            One int64 tensor per partition, each of ``idx``'s shape, with values in
            ``[0, sizes[j])``.
        """

    @abstractmethod
    def is_complementary(self) -> bool:
        """Whether every pair of distinct categories differs in at least one partition (exact)."""

    @property
    def k(self) -> int:
        """The number of partitions."""
        return len(self.sizes)

    @property
    def num_buckets(self) -> int:
        """The total number of buckets: the rows all tables of a compositional embedding hold."""
        return sum(self.sizes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_categories={self.num_categories}, sizes={self.sizes})"


class ModuloPartitions(PartitionSet):
    """Partition j maps ``i`` to ``i mod moduli[j]``: the hashing trick (k = 1) and the
    Chinese-remainder partitions (section 3.1(4)).

    Complementary exactly when ``lcm(moduli) >= num_categories``: two indices share every
    remainder iff they are congruent modulo the lcm.
    """

    def __init__(self, num_categories: int, moduli: Sequence[int]):
        self.num_categories = _check_count(num_categories, "num_categories")
        self.moduli = tuple(_check_count(m, f"moduli[{j}]") for j, m in enumerate(moduli))
        if not self.moduli:
            raise ValueError("moduli must not be empty")
        # A modulus above n only ever sees residues below n.
        self.sizes = tuple(min(m, self.num_categories) for m in self.moduli)

    def layout(self) -> tuple[Digit, ...]:
        return tuple(Digit(1, m, s) for m, s in zip(self.moduli, self.sizes, strict=True))

    def buckets(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = _as_index(idx)
        return tuple(torch.remainder(idx, m) for m in self.moduli)

    def is_complementary(self) -> bool:
        return reduce(math.lcm, self.moduli, 1) >= self.num_categories


class MixedRadixPartitions(PartitionSet):
    """Partitions by the digits of ``i`` in a mixed radix (section 3.1(2) and 3.1(3)).

    Digit j is ``(i // (r_0 * ... * r_{j-1})) mod r_j`` for the radices ``r`` from least to most
    significant. The most significant digit is not reduced, so its partition holds only the
    ``ceil(n / (r_0 * ... * r_{k-2}))`` buckets that occur. ``order`` lists which digit each
    partition uses (the quotient-remainder trick puts the quotient, the large table, first).
    Complementary by construction: the digits of ``i`` determine ``i``.
    """

    def __init__(
        self, num_categories: int, radices: Sequence[int], order: Sequence[int] | None = None
    ):
        self.num_categories = n = _check_count(num_categories, "num_categories")
        self.radices = tuple(_check_count(r, f"radices[{j}]") for j, r in enumerate(radices))
        k = len(self.radices)
        if k == 0:
            raise ValueError("radices must not be empty")
        product = math.prod(self.radices)
        if product < n:
            raise ValueError(
                f"radices {self.radices} have product {product} < num_categories {n}: "
                f"digits in this radix cannot tell all categories apart; raise a radix "
                f"(e.g. balanced_mixed_radix({n}, {k}))"
            )
        self.order = tuple(range(k)) if order is None else tuple(order)
        if sorted(self.order) != list(range(k)):
            raise ValueError(f"order must be a permutation of 0..{k - 1}, got {self.order}")
        # Place values, capped at n: beyond n every quotient is 0 and the product would only
        # risk int64 overflow.
        places = []
        place = 1
        for r in self.radices:
            places.append(min(place, n))
            place *= r
        top = -(-n // places[-1])
        # The top digit is never reduced: its modulus is its size, a no-op below n.
        digits = [Digit(p, r, min(r, n))
                  for p, r in zip(places[:-1], self.radices[:-1], strict=True)]
        digits.append(Digit(places[-1], top, top))
        self._layout = tuple(digits[d] for d in self.order)
        self.sizes = tuple(d.rows for d in self._layout)

    def layout(self) -> tuple[Digit, ...]:
        return self._layout

    def buckets(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = _as_index(idx)
        n = self.num_categories
        return tuple(digit(idx, d.place, d.modulus, divide=d.place != 1,
                           reduce=-(-n // d.place) > d.modulus) for d in self._layout)

    def is_complementary(self) -> bool:
        return math.prod(self.radices) >= self.num_categories


class ExplicitPartitions(PartitionSet):
    """Partitions given by one bucket-id array per partition, e.g. a car's year, make and type.

    Complementarity is checked exactly and vectorized: the bucket tuples are folded into one
    dense rank per category, partition by partition, and the partitions are complementary iff
    all n ranks differ.
    """

    def __init__(self, bucket_ids: Sequence[np.ndarray | torch.Tensor | Sequence[int]],
                 sizes: Sequence[int] | None = None):
        if len(bucket_ids) == 0:
            raise ValueError("explicit partitions need at least one bucket-id array")
        arrays = []
        for j, ids in enumerate(bucket_ids):
            a = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
            if a.ndim != 1 or a.size == 0:
                raise ValueError(f"bucket_ids[{j}] must be a non-empty 1-D array, got {a.shape}")
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"bucket_ids[{j}] must hold integers, got dtype {a.dtype}")
            if a.min() < 0:
                raise ValueError(f"bucket_ids[{j}] holds {a.min()} < 0; bucket ids start at 0")
            arrays.append(a.astype(np.int64))
        n = arrays[0].size
        for j, a in enumerate(arrays):
            if a.size != n:
                raise ValueError(f"bucket_ids[{j}] has {a.size} entries, bucket_ids[0] has {n}")
        observed = tuple(int(a.max()) + 1 for a in arrays)
        if sizes is None:
            sizes = observed
        sizes = tuple(_check_count(s, f"sizes[{j}]") for j, s in enumerate(sizes))
        if len(sizes) != len(arrays):
            raise ValueError(f"{len(sizes)} sizes given for {len(arrays)} partitions")
        for j, (s, o) in enumerate(zip(sizes, observed, strict=True)):
            if o > s:
                raise ValueError(f"bucket_ids[{j}] holds bucket {o - 1}, but sizes[{j}] is {s}")
        self.num_categories = n
        self.sizes = sizes
        self._tables = {torch.device("cpu"): tuple(torch.from_numpy(a) for a in arrays)}

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._tables:
            self._tables[device] = tuple(t.to(device) for t in self._tables[torch.device("cpu")])
        return self._tables[device]

    def buckets(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = _as_index(idx)
        return tuple(t[idx] for t in self._tables_on(idx.device))

    def is_complementary(self) -> bool:
        key = np.zeros(self.num_categories, dtype=np.int64)
        for t in self._tables[torch.device("cpu")]:
            a = t.numpy()
            # Fold one partition in, then re-rank so the key stays below n (no overflow).
            key = key * (int(a.max()) + 1) + a
            _, key = np.unique(key, return_inverse=True)
        return int(key.max()) + 1 == self.num_categories


def remainder(num_categories: int, num_buckets: int) -> ModuloPartitions:
    """The hashing trick: one partition, ``i -> i mod num_buckets``."""
    return ModuloPartitions(num_categories, (num_buckets,))


def quotient_remainder(num_categories: int, collisions: int) -> MixedRadixPartitions:
    """The quotient-remainder trick (section 2): partitions ``i // c`` then ``i mod c``.

    Sizes ``(ceil(n / c), c)``: the large quotient table first.
    """
    n = _check_count(num_categories, "num_categories")
    c = _check_count(collisions, "collisions")
    return MixedRadixPartitions(n, (c, -(-n // c)), order=(1, 0))


def mixed_radix(num_categories: int, radices: Sequence[int]) -> MixedRadixPartitions:
    """Generalized quotient-remainder partitions (section 3.1(3)), least significant first.

    Raises:
        ValueError: if the product of ``radices`` is below ``num_categories``.
    """
    return MixedRadixPartitions(num_categories, radices)


def chinese_remainder(num_categories: int, moduli: Sequence[int]) -> ModuloPartitions:
    """Chinese-remainder partitions (section 3.1(4)): ``i mod m_j`` for pairwise coprime ``m_j``.

    Raises:
        ValueError: if two moduli share a factor, or their product is below ``num_categories``.
    """
    parts = ModuloPartitions(num_categories, moduli)
    m = parts.moduli
    for a in range(len(m)):
        for b in range(a + 1, len(m)):
            g = math.gcd(m[a], m[b])
            if g != 1:
                raise ValueError(
                    f"chinese_remainder moduli must be pairwise coprime: moduli[{a}]={m[a]} and "
                    f"moduli[{b}]={m[b]} share the factor {g}; try "
                    f"balanced_chinese_remainder({parts.num_categories}, {len(m)})"
                )
    if math.prod(m) < parts.num_categories:
        raise ValueError(
            f"chinese_remainder moduli {m} have product {math.prod(m)} < num_categories "
            f"{parts.num_categories}: some categories would share every bucket"
        )
    return parts


def _iroot_ceil(n: int, k: int) -> int:
    """The smallest integer r with r**k >= n (exact, no float)."""
    lo, hi = 1, 1
    while hi**k < n:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if mid**k >= n:
            hi = mid
        else:
            lo = mid + 1
    return lo


def balanced_mixed_radix(num_categories: int, k: int) -> MixedRadixPartitions:
    """Mixed-radix partitions with k radices near n^(1/k): the fewest total rows for k tables.

    Starts from ``floor``-ish radices and raises them one at a time until their product covers
    n, so the radices differ by at most one.
    """
    n = _check_count(num_categories, "num_categories")
    k = _check_count(k, "k")
    r = _iroot_ceil(n, k)
    radices = [r] * k
    # Lower radices one by one while the product still covers n: sizes differ by at most one.
    for j in range(k):
        radices[j] -= 1
        if radices[j] < 1 or math.prod(radices) < n:
            radices[j] += 1
            break
    return MixedRadixPartitions(n, radices)


def balanced_chinese_remainder(num_categories: int, k: int) -> ModuloPartitions:
    """Pairwise coprime moduli near n^(1/k) whose product covers n, with the smallest sum.

    Tries greedy coprime runs starting at several points at and below n^(1/k) and keeps the
    run with the fewest total rows (then the smallest largest table) among those that cover n.
    """
    n = _check_count(num_categories, "num_categories")
    k = _check_count(k, "k")
    if k == 1:
        return chinese_remainder(n, (n,))
    r = _iroot_ceil(n, k)
    best: tuple[int, ...] | None = None
    for start in range(max(2, r - 64), r + 1):
        chosen: list[int] = []
        m = start
        while len(chosen) < k - 1:
            if all(math.gcd(m, c) == 1 for c in chosen):
                chosen.append(m)
            m += 1
        # The last modulus: the smallest coprime one that makes the product cover n.
        last = max(m, -(-n // math.prod(chosen)))
        while any(math.gcd(last, c) != 1 for c in chosen):
            last += 1
        cand = (*chosen, last)
        if best is None or (sum(cand), max(cand)) < (sum(best), max(best)):
            best = cand
    assert best is not None
    return chinese_remainder(n, best)


def for_collisions(
    num_categories: int, collisions: int, family: str = "qr"
) -> MixedRadixPartitions | ModuloPartitions:
    """Two complementary partitions whose largest table has about ``n / collisions`` rows.

    Args:
        family: ``"qr"`` (quotient-remainder: sizes ``(ceil(n/c), c)``) or ``"crt"``
            (coprime moduli ``(ceil(n/c) + e, c)`` with the smallest ``e >= 0`` that makes them
            coprime).
    """
    n = _check_count(num_categories, "num_categories")
    c = _check_count(collisions, "collisions")
    if family == "qr":
        return quotient_remainder(n, c)
    if family == "crt":
        big = -(-n // c)
        while math.gcd(big, c) != 1:
            big += 1
        return chinese_remainder(n, (big, c))
    raise ValueError(f"family must be 'qr' or 'crt', got {family!r}")


def explicit(
    *bucket_ids: np.ndarray | torch.Tensor | Sequence[int], sizes: Sequence[int] | None = None
) -> ExplicitPartitions:
    """Partitions from attributes: one bucket-id array per partition, each of length n.

    >>> cars = explicit([0, 0, 1, 1], [0, 1, 0, 1])  # year, make
    >>> cars.sizes, cars.is_complementary()
    ((2, 2), True)
    """
    return ExplicitPartitions(bucket_ids, sizes)



ORDERS = ("natural", "frequency", "interleaved", "random")


def frequency_rank(counts: np.ndarray) -> np.ndarray:
    """Each category's rank by count, most frequent first, ties by id: (n,) int64.

    >>> frequency_rank(np.array([5, 9, 5, 0])).tolist()
    [1, 0, 2, 3]
    """
    counts = np.asarray(counts)
    rank_of = np.empty(len(counts), dtype=np.int64)
    rank_of[np.argsort(-counts.astype(np.int64), kind="stable")] = np.arange(len(counts))
    return rank_of


def frequency_relabeling(base: PartitionSet, order: str, counts: np.ndarray | None = None,
                         seed: int = 0) -> np.ndarray | None:
    """The new id of every category under ``order``: (n,) int64 permutation, or None for
    ``natural`` (ids as they are).

    - ``frequency``: the i-th most frequent category becomes id i (ties by old id), so the
      head shares buckets with the head (QR: the top c share quotient row 0).
    - ``interleaved``: the i-th most frequent category gets the i-th id in the order that
      changes the largest partition's bucket fastest (ids sorted by their buckets from the
      smallest partition to the largest), so the most frequent categories land in different
      rows of the largest table (QR: the top ceil(n/c) have quotient rows of their own and
      share remainder 0).
    - ``random``: a permutation seeded by ``seed`` (removes the effect of first-seen order).

    Args:
        counts: (n,) training-split counts per category (``frequency``, ``interleaved``).
    """
    n = base.num_categories
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "natural":
        return None
    if order == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    if counts is None:
        raise ValueError(f"order {order!r} needs the training split's category counts")
    counts = np.asarray(counts)
    if counts.shape != (n,):
        raise ValueError(f"counts must have shape ({n},) for {n} categories, got {counts.shape}")
    rank_of = frequency_rank(counts)
    if order == "frequency":
        return rank_of
    ids = torch.arange(n)
    buckets = [b.numpy() for b in base.buckets(ids)]
    by_size = sorted(range(base.k), key=lambda j: (base.sizes[j], -j))
    # lexsort sorts by the last key first: the smallest partition is the primary key.
    slots = np.lexsort([buckets[j] for j in reversed(by_size)])
    return slots[rank_of]


class RelabeledPartitions(PartitionSet):
    """``base`` applied to ``relabel[i]``: the categories renumbered before partitioning (by
    frequency rank or at random; see :func:`frequency_relabeling`).

    Complementary exactly when ``base`` is: ``relabel`` must be a permutation of ``[0, n)``
    (checked), so distinct categories keep distinct ids.
    """

    def __init__(self, base: PartitionSet, relabel: np.ndarray | torch.Tensor):
        if base.relabeling() is not None:
            raise ValueError(f"{base} is already relabelled; relabel its base instead")
        a = relabel.cpu().numpy() if isinstance(relabel, torch.Tensor) else np.asarray(relabel)
        n = base.num_categories
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"relabel must be ({n},) integers, got {a.shape} {a.dtype}")
        seen = np.zeros(n, dtype=bool)
        inside = (a >= 0) & (a < n)
        seen[a[inside]] = True
        if not inside.all() or not seen.all():
            raise ValueError(f"relabel must be a permutation of 0..{n - 1}")
        self.base = base
        self.num_categories = n
        self.sizes = base.sizes
        self._relabel = torch.from_numpy(a.astype(np.int64))
        self._on: dict[torch.device, torch.Tensor] = {self._relabel.device: self._relabel}

    def relabeling(self) -> torch.Tensor:
        return self._relabel

    def on_maps(self, relabel: torch.Tensor | None, hot: torch.Tensor | None) -> PartitionSet:
        moved = copy.copy(self)
        moved._relabel = relabel
        moved._on = {relabel.device: relabel}
        return moved

    def layout(self) -> tuple[Digit | HotSlots, ...] | None:
        return self.base.layout()

    def buckets(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = _as_index(idx)
        if idx.device not in self._on:
            self._on[idx.device] = self._relabel.to(idx.device)
        return self.base.buckets(self._on[idx.device][idx].long())

    def is_complementary(self) -> bool:
        return self.base.is_complementary()

    def __repr__(self) -> str:
        return f"RelabeledPartitions({self.base!r})"


class HeadPartitions(PartitionSet):
    """``base`` plus one more partition that gives each of the ``hot`` categories a bucket of
    its own and every other category one shared bucket (:class:`HotSlots`, last).

    Composed by an operation, a hot category's vector combines its private row with its
    ``base`` rows, so it can take any value (add: the private row is a free offset; mult: a
    free gate on non-zero base rows), while the tail shares one row and is composed by ``base``
    as before. Complementary when ``base`` is (a partition added never merges categories).

    Args:
        base: the tail's partitions (possibly relabelled).
        hot: the hot category ids (distinct, in ``[0, n)``).
    """

    def __init__(self, base: PartitionSet, hot: np.ndarray | torch.Tensor | Sequence[int]):
        a = hot.cpu().numpy() if isinstance(hot, torch.Tensor) else np.asarray(hot)
        n = base.num_categories
        a = a.astype(np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= n):
            raise ValueError(f"hot ids must be in 0..{n - 1}")
        if np.unique(a).size != a.size:
            raise ValueError("hot ids must be distinct")
        relabel = base.relabeling()
        # Slots are positions among the sorted relabelled ids: what the stacked collection
        # computes from the relabelled id it already has.
        keys = a if relabel is None else relabel.numpy()[a]
        self.base = base
        self.num_categories = n
        self.hot = torch.from_numpy(np.sort(keys))
        self.sizes = (*base.sizes, a.size + 1)
        self._on: dict[torch.device, torch.Tensor] = {self.hot.device: self.hot}

    def relabeling(self) -> torch.Tensor | None:
        return self.base.relabeling()

    def on_maps(self, relabel: torch.Tensor | None, hot: torch.Tensor | None) -> PartitionSet:
        moved = copy.copy(self)
        moved.base = self.base.on_maps(relabel, None)
        moved.hot = hot
        moved._on = {hot.device: hot}
        return moved

    def layout(self) -> tuple[Digit | HotSlots, ...] | None:
        inner = self.base.layout()
        return None if inner is None else (*inner, HotSlots(self.hot, self.sizes[-1]))

    def buckets(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = _as_index(idx)
        if idx.device not in self._on:
            self._on[idx.device] = self.hot.to(idx.device)
        relabel = self.relabeling()
        key = idx if relabel is None else relabel.to(idx.device)[idx].long()
        return (*self.base.buckets(idx), hot_slot(key, self._on[idx.device]))

    def is_complementary(self) -> bool:
        return self.base.is_complementary()

    def __repr__(self) -> str:
        return f"HeadPartitions({self.base!r}, hot={self.hot.numel()})"


def hot_slot(key: torch.Tensor, hot: torch.Tensor) -> torch.Tensor:
    """Bucket of each key under :class:`HotSlots`: its position in the sorted ``hot`` (H,), or
    H when it is not hot. ``hot`` may be (G, H) with keys (..., G): one sorted row per feature,
    padded with int64 max."""
    h = hot.shape[-1]
    if h == 0:
        return torch.zeros_like(key)
    if hot.dim() == 1:
        key = key.contiguous()
        pos = torch.searchsorted(hot, key)
        found = hot[pos.clamp(max=h - 1)] == key
        return torch.where(found, pos, h)
    flat = key.reshape(-1, hot.shape[0]).T.contiguous()  # (G, N)
    pos = torch.searchsorted(hot, flat)
    found = hot.gather(1, pos.clamp(max=h - 1)) == flat
    return torch.where(found, pos, h).T.reshape(key.shape)


class PartitionFamily(ABC):
    """A way to build complementary partitions for a feature from the spec's ``collisions``
    (categories per bucket of the largest table) or ``k`` (number of partitions).

    Registered in :data:`FAMILIES` under ``name``, a family is at once an operation-based scheme
    of :class:`~compemb.spec.EmbeddingSpec` (``scheme=name``) and a choice of partitions for
    path-based composition and feature generation (``partitions=name``).
    """

    name: ClassVar[str]
    takes: ClassVar[tuple[str, ...]] = ("collisions", "k")

    @abstractmethod
    def build(self, num_categories: int, collisions: int | None, k: int | None) -> PartitionSet:
        """The partitions for n categories; exactly one of ``collisions`` and ``k`` is set."""


class QuotientRemainderFamily(PartitionFamily):
    """``quotient_remainder(n, collisions)``; with k, the balanced k-digit mixed radix."""

    name = "qr"
    takes = ("collisions",)

    def build(self, num_categories, collisions, k):
        if k is not None:
            return balanced_mixed_radix(num_categories, k)
        return quotient_remainder(num_categories, collisions)


class MixedRadixFamily(PartitionFamily):
    """``balanced_mixed_radix(n, k)``; with collisions, quotient-remainder (two digits)."""

    name = "mixed_radix"

    def build(self, num_categories, collisions, k):
        if k is not None:
            return balanced_mixed_radix(num_categories, k)
        return quotient_remainder(num_categories, collisions)


class ChineseRemainderFamily(PartitionFamily):
    """``balanced_chinese_remainder(n, k)``; with collisions, ``for_collisions(n, c, "crt")``."""

    name = "crt"

    def build(self, num_categories, collisions, k):
        if k is not None:
            return balanced_chinese_remainder(num_categories, k)
        return for_collisions(num_categories, collisions, "crt")


FAMILIES: Registry[PartitionFamily] = Registry("partition family")


def register_family(family: PartitionFamily) -> PartitionFamily:
    """Add a family to :data:`FAMILIES` under its ``name`` (a name is taken once)."""
    if not isinstance(family, PartitionFamily):
        raise TypeError(f"register a PartitionFamily instance, got {type(family).__name__}")
    return FAMILIES.register(family.name, family)


def get_family(name: str) -> PartitionFamily:
    """The registered family called ``name``; raises with the valid names otherwise."""
    return FAMILIES.lookup(name)


for _family in (QuotientRemainderFamily(), MixedRadixFamily(), ChineseRemainderFamily()):
    register_family(_family)
