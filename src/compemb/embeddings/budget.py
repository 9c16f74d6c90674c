"""Choosing a scheme's size (its knob: collisions, k, ...) and hot rows for a memory budget,
counted from plans: nothing is built.

A budget is a number of embedding parameters (an int), or a
:class:`~compemb.memory.MemoryBudget` (``"16x"``, ``2e6`` parameters, ``"200MB"``): a ratio
divides the full tables' parameters (the frontier's compression), and bytes count what the
built layer holds, id maps included (:func:`embedding_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from compemb.memory import MemoryBudget
from compemb.spec import EmbeddingSpec, collection_parameters, plan_collection, shared_plans

__all__ = ["TOLERANCE", "embedding_bytes", "embedding_parameters", "fit_budget",
           "resolve_budget"]

# A size counts for a budget (and a frontier target) within this factor of it.
TOLERANCE = 1.5


def embedding_parameters(cardinalities: Sequence[int], embedding_dim: int,
                         spec: EmbeddingSpec) -> int:
    """Parameters of the embedding layer ``spec`` gives these features (tables, hot rows and
    path functions), counted from the features' plans: nothing is built. The frequency order
    does not change the count, so no counts are needed."""
    return collection_parameters(plan_collection(cardinalities, embedding_dim, spec,
                                                 sizing=True))


def embedding_bytes(cardinalities: Sequence[int], embedding_dim: int,
                    spec: EmbeddingSpec) -> int:
    """Bytes the embedding layer holds: its parameters (float32) and its id maps (frequency
    order, hot ids, learned assignments), from the same plans the collection is built from
    (its ``num_bytes`` plus ``index_bytes``, the frontier's embedding memory).

    >>> embedding_bytes([10_000], 16, EmbeddingSpec("qr", collisions=4, order="frequency"))
    200256
    """
    plans = plan_collection(cardinalities, embedding_dim, spec, sizing=True)
    return sum(p.num_bytes + p.index_bytes for p in (*plans, *shared_plans(plans)))


def _counter(unit: str) -> Callable[[Sequence[int], int, EmbeddingSpec], int]:
    """What counts a budget of ``unit`` (``MemoryBudget.unit``)."""
    return embedding_bytes if unit == "bytes" else embedding_parameters


class _Knob:
    """The sizes of a spec over its scheme's knob, in the budget's unit (cached)."""

    def __init__(self, cardinalities: Sequence[int], embedding_dim: int, spec: EmbeddingSpec,
                 budget: MemoryBudget):
        owner = spec.owner
        if owner.knob is None:
            raise ValueError(f"scheme {spec.scheme!r} has no size setting to choose")
        self.cardinalities, self.embedding_dim, self.spec = cardinalities, embedding_dim, spec
        self.budget, self.unit = budget, budget.unit
        self.target = budget.target(sum(cardinalities) * embedding_dim)
        self.name, self.grows = owner.knob, owner.knob_grows
        # The knob's other ways of sizing the tables (k, when collisions is searched) are cleared.
        self.others = {name: None for name in owner.sizes
                       if name != owner.knob and name in owner.setting_names()}
        self.count = _counter(self.unit)
        self.sizes: dict[int, int] = {}

    def spec_at(self, value: int) -> EmbeddingSpec:
        return self.spec.with_(**{self.name: value, **self.others})

    def size(self, value: int) -> int:
        if value not in self.sizes:
            self.sizes[value] = self.count(self.cardinalities, self.embedding_dim,
                                           self.spec_at(value))
        return self.sizes[value]

    def ends(self) -> tuple[int, int | None]:
        """The knob values of the smallest and the largest embedding (None: no largest)."""
        if self.grows:
            unit = self.spec.owner.knob_unit(self.spec)
            limit = self.spec.owner.knob_limit(self.cardinalities, self.embedding_dim)
            return unit, None if limit is None else limit // unit * unit
        # Size falls as the knob grows until the tables are as small as they get (QR: about
        # sqrt(n)), then rises (and a feature with no more categories than collisions keeps its
        # full table): find that point on a geometric grid; the largest is at 2.
        grid = np.unique(np.geomspace(2, max(max(self.cardinalities), 2), 64).astype(int))
        return int(min(grid, key=lambda c: (self.size(int(c)), c))), 2

    def fit(self) -> int:
        """The knob value whose size comes closest to the budget from below."""
        target = self.target
        smallest, largest = self.ends()
        if self.size(smallest) > target:
            raise ValueError(self.out_of_reach(
                f"is below the smallest {self.spec.scheme} embedding of these features",
                "raise the budget"))
        if self.grows:
            unit = smallest
            top = None if largest is None else largest // unit
            return _largest_fitting(lambda c: self.size(c * unit), target, top) * unit
        lo, hi = 2, smallest
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.size(mid) <= target else (mid + 1, hi)
        return lo

    def describe(self, value: int) -> str:
        size = self.size(value)
        text = f"{size:,} {self.unit} at {self.name}={value}"
        if self.unit == "parameters":
            full = sum(self.cardinalities) * self.embedding_dim
            text += f", {full / size:.1f}x"
        return text

    def out_of_reach(self, problem: str, advice: str) -> str:
        """What is wrong with the budget, and the smallest and largest reachable."""
        smallest, largest = self.ends()
        top = "upward" if largest is None else f"to {self.describe(largest)}"
        return (f"budget {self.budget} ({self.target:,} {self.unit}) {problem}: they reach "
                f"from {self.describe(smallest)} {top}; {advice}")


def fit_budget(cardinalities: Sequence[int], embedding_dim: int, spec: EmbeddingSpec,
               budget: int | str | MemoryBudget, *, hot_share: float | None = None
               ) -> EmbeddingSpec:
    """The spec, with its scheme's knob (``Scheme.knob``: collisions for the built-in ones) and
    ``hot`` chosen, whose embedding size comes closest to ``budget`` from below.

    Args:
        spec: the scheme, operation and everything else; its knob is replaced.
        budget: the target number of embedding parameters, or a
            :class:`~compemb.memory.MemoryBudget` (or its text: ``"16x"``, ``"200MB"``).
        hot_share: if given, the share of the budget spent on hot rows: ``hot`` is set so the
            features that are compressed hold about ``hot_share * budget`` in private rows
            (D parameters, or 4 D bytes, each), and collisions fill the rest.

    Raises:
        ValueError: when even the smallest embedding the knob gives exceeds the budget (the
            message names the smallest and largest reachable and their knob values).

    >>> fit_budget([10_000, 500], 16, EmbeddingSpec("qr", collisions=2), 50_000).collisions
    4
    >>> fit_budget([10_000, 500], 16, EmbeddingSpec("qr", collisions=2), "16x").collisions
    17
    """
    budget = MemoryBudget.parse(budget)
    if spec.owner.knob is None:
        raise ValueError(f"scheme {spec.scheme!r} has no size setting to choose")
    if hot_share is not None:
        if not 0 <= hot_share < 1:
            raise ValueError(f"hot_share must be in [0, 1), got {hot_share}")
        big = [n for n in cardinalities if n > spec.threshold] or list(cardinalities)
        per_row = embedding_dim * (4 if budget.unit == "bytes" else 1)
        target = budget.target(sum(cardinalities) * embedding_dim)
        spec = spec.with_(hot=int(hot_share * target / (per_row * len(big))))
    knob = _Knob(cardinalities, embedding_dim, spec, budget)
    return knob.spec_at(knob.fit())


def resolve_budget(spec: EmbeddingSpec, cardinalities: Sequence[int], embedding_dim: int
                   ) -> EmbeddingSpec:
    """The spec a run builds: its knob chosen by its budget (``spec.budget``) for these
    features, or, where the spec gives the knob too (a run's saved ``config.yaml``), the spec
    as it is once its size is checked against the budget. A spec without a budget is returned.

    Raises:
        ValueError: a budget no knob value reaches within :data:`TOLERANCE` from below (the
            message names the smallest and largest reachable and their knob values), or a
            given knob whose size exceeds the budget.

    >>> spec = resolve_budget(EmbeddingSpec("qr", budget="16x"), [10_000, 500], 16)
    >>> spec.collisions, str(spec.budget)
    (17, '16x')
    >>> resolve_budget(EmbeddingSpec("hash", budget="1.1x"), [10_000, 500], 16)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: budget 1.1x (152,727 parameters) is out of reach of scheme 'hash' ... from 400 ...
    """
    budget = spec.budget
    if budget is None:
        return spec
    target = budget.target(sum(cardinalities) * embedding_dim)
    if not spec.budget_pending:
        knob, value = spec.owner.knob, getattr(spec.settings, spec.owner.knob)
        size = _counter(budget.unit)(cardinalities, embedding_dim, spec)
        if size > target:
            raise ValueError(f"budget {budget}: {knob}={value} gives {size:,} {budget.unit}, "
                             f"over the budget's {target:,}; leave {knob} out and the budget "
                             f"chooses it")
        return spec
    knob = _Knob(cardinalities, embedding_dim, spec, budget)
    best = knob.fit()
    if knob.size(best) * TOLERANCE < target:
        raise ValueError(knob.out_of_reach(
            f"is out of reach of scheme {spec.scheme!r} on these features",
            f"the largest that fits ({knob.describe(best)}) is more than {TOLERANCE}x under "
            f"the budget"))
    return knob.spec_at(best)


def _largest_fitting(size: Callable[[int], int], budget: int, limit: int | None) -> int:
    """The largest knob >= 1 (and <= ``limit`` when given) whose size fits ``budget``, for a
    size that grows with the knob (size(1) fits): doubling, then bisection (a feature that
    falls back to its full table may bend the size slightly)."""
    lo, hi = 1, 2  # size(lo) fits; hi is past the limit or does not fit
    while (limit is None or hi <= limit) and size(hi) <= budget:
        lo, hi = hi, 2 * hi
    if limit is not None:
        hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    return lo

