"""Alternative initializations of the compositional tables, for the ``init`` experiment.

The embedding layer has one rule (``compemb.embeddings.operation.init_bounds``: composed vectors
start on the full table's scale). To measure whether it is the right default without forking the
modules, :func:`init_rule` swaps that function for the duration of a run; the modules and the
batched collection both draw their U(lo, hi) bounds from it. Rules, for k tables of a feature of n
categories and a = sqrt(1/n):

- the library's rule (None): concat U(-a, a); add U(-a/sqrt(k), a/sqrt(k)); mult U(-a, a) for
  every table (settled by this experiment; until then mult used ``gates``);
- ``gates``: the former mult rule, a first table U(-b, b) times U(1/2, 3/2) gates, with
  b = a / (13/12)^((k-1)/2) so the product has the full table's variance (add and concat as the
  library);
- ``reference``: the reference implementation's U(sqrt(1/n), 1) for every table (all positive);
- ``zero_mean``: U(-a, a) for every table, whatever the operation (the naive choice).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

from compemb.embeddings import batched, operation

Bounds = list[tuple[float, float]]


def _reference(op: str, k: int, n: int) -> Bounds:
    return [(math.sqrt(1.0 / n), 1.0)] * k


# The library's rule, kept before any rule is swapped in (a rule may fall back on it).
_LIBRARY = operation.init_bounds


def _gates(op: str, k: int, n: int) -> Bounds:
    if op != "mult":
        return _LIBRARY(op, k, n)
    b = math.sqrt(1.0 / n) / (13.0 / 12.0) ** ((k - 1) / 2)
    return [(-b, b)] + [(0.5, 1.5)] * (k - 1)


def _zero_mean(op: str, k: int, n: int) -> Bounds:
    a = math.sqrt(1.0 / n)
    return [(-a, a)] * k


INIT_RULES: dict[str, Callable[[str, int, int], Bounds] | None] = {
    "library": None,  # the library's own
    "gates": _gates,
    "reference": _reference,
    "zero_mean": _zero_mean,
}


@contextlib.contextmanager
def init_rule(name: str | None) -> Iterator[None]:
    """Build compositional tables with rule ``name`` inside the block (None: the library's)."""
    if name is not None and name not in INIT_RULES:
        raise ValueError(f"unknown init rule {name!r}; valid: {', '.join(INIT_RULES)}")
    rule = INIT_RULES.get(name) if name else None
    if rule is None:
        yield
        return
    saved = operation.init_bounds, batched.init_bounds
    operation.init_bounds = batched.init_bounds = rule
    try:
        yield
    finally:
        operation.init_bounds, batched.init_bounds = saved
