"""Choosing a scheme's size (its knob: collisions, k, ...) and hot rows for a target number of
embedding parameters, counted from plans: nothing is built."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from compemb.spec import EmbeddingSpec, collection_parameters, plan_collection

__all__ = ["embedding_parameters", "fit_budget"]


def embedding_parameters(cardinalities: Sequence[int], embedding_dim: int,
                         spec: EmbeddingSpec) -> int:
    """Parameters of the embedding layer ``spec`` gives these features (tables, hot rows and
    path functions), counted from the features' plans: nothing is built. The frequency order
    does not change the count, so no counts are needed."""
    return collection_parameters(plan_collection(cardinalities, embedding_dim, spec,
                                                 sizing=True))


def fit_budget(cardinalities: Sequence[int], embedding_dim: int, spec: EmbeddingSpec,
               budget: int, *, hot_share: float | None = None) -> EmbeddingSpec:
    """The spec, with its scheme's knob (``Scheme.knob``: collisions for the built-in ones) and
    ``hot`` chosen, whose embedding parameters come closest to ``budget`` from below.

    Args:
        spec: the scheme, operation and everything else; its knob is replaced.
        budget: the target number of embedding parameters.
        hot_share: if given, the share of the budget spent on hot rows: ``hot`` is set so the
            features that are compressed hold about ``hot_share * budget`` parameters in
            private rows (D each), and collisions fill the rest.

    Raises:
        ValueError: when even the largest useful number of collisions exceeds the budget.

    >>> fit_budget([10_000, 500], 16, EmbeddingSpec("qr", collisions=2), 50_000).collisions
    4
    """
    knob = spec.owner.knob
    if knob is None:
        raise ValueError(f"scheme {spec.scheme!r} has no size setting to choose")
    if hot_share is not None:
        if not 0 <= hot_share < 1:
            raise ValueError(f"hot_share must be in [0, 1), got {hot_share}")
        big = [n for n in cardinalities if n > spec.threshold] or list(cardinalities)
        spec = spec.with_(hot=int(hot_share * budget / (embedding_dim * len(big))))
    # The knob's other ways of sizing the tables (k, when collisions is searched) are cleared.
    others = {name: None for name in spec.owner.sizes
              if name != knob and name in spec.owner.setting_names()}

    def size(c: int) -> int:
        return embedding_parameters(cardinalities, embedding_dim,
                                    spec.with_(**{knob: c, **others}))

    if spec.owner.knob_grows:
        unit = spec.owner.knob_unit(spec)
        limit = spec.owner.knob_limit(cardinalities, embedding_dim)
        best = _largest_fitting(lambda c: size(c * unit), budget,
                                None if limit is None else limit // unit,
                                f"{spec.scheme} {knob}" + (f"/{unit}" if unit > 1 else ""))
        return spec.with_(**{knob: best * unit, **others})
    # Size falls as the knob grows until the tables are as small as they get (QR: about
    # sqrt(n)), then rises (and a feature with no more categories than collisions keeps its
    # full table): find that point on a geometric grid, then bisect below it.
    grid = np.unique(np.geomspace(2, max(max(cardinalities), 2), 64).astype(int))
    hi = int(min(grid, key=lambda c: (size(int(c)), c)))
    lo = 2
    if size(hi) > budget:
        raise ValueError(
            f"budget {budget:,} is below the smallest {spec.scheme} embedding of these features "
            f"({size(hi):,} parameters at {knob}={hi}); lower hot or raise the budget"
        )
    while lo < hi:
        mid = (lo + hi) // 2
        if size(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return spec.with_(**{knob: lo, **others})


def _largest_fitting(size: Callable[[int], int], budget: int, limit: int | None,
                     what: str) -> int:
    """The largest knob >= 1 (and <= ``limit`` when given) whose size fits ``budget``, for a
    size that grows with the knob: doubling, then bisection (a feature that falls back to its
    full table may bend the size slightly)."""
    if size(1) > budget:
        raise ValueError(f"budget {budget:,} is below the smallest embedding of these features "
                         f"({size(1):,} parameters at {what}=1); raise the budget")
    lo, hi = 1, 2  # size(lo) fits; hi is past the limit or does not fit
    while (limit is None or hi <= limit) and size(hi) <= budget:
        lo, hi = hi, 2 * hi
    if limit is not None:
        hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    return lo
