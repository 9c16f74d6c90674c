"""What embedding a feature gets: the spec a user writes, and the per-feature plan made from it.

:class:`EmbeddingSpec` is the user's request (one for a feature or for every feature of a
model). :func:`plan_feature` turns it into a :class:`FeaturePlan` for one feature of n
categories: which scheme it really gets (small features keep their full table), its partitions,
its composition operation, and each table's rows, width and init bounds. The per-feature modules,
the stacked collection and the TorchRec collection are all built from plans, so a rule lives in
one place.

Schemes: ``full``, ``hash`` (the hashing trick), ``path`` (path-based composition), ``feature``
(feature generation), and one operation-based scheme per registered partition family
(:data:`compemb.partitions.FAMILIES`: ``qr``, ``mixed_radix``, ``crt``).

>>> plan = plan_feature(10_000, 16, EmbeddingSpec("qr", "mult", collisions=4))
>>> plan.kind, [(t.name, t.rows, t.width) for t in plan.tables]
('compose', [('weights.0', 2500, 16), ('weights.1', 4, 16)])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from compemb import partitions as P
from compemb.operations import (
    INIT_RULES,
    OPERATIONS,
    Operation,
    full_table_bound,
    get_operation,
    table_bounds,
)

__all__ = [
    "KINDS",
    "TRANSFORMS",
    "EmbeddingSpec",
    "FeaturePlan",
    "TablePlan",
    "compose_bounds",
    "plan_feature",
    "resolve_spec",
    "schemes",
    "spec_partitions",
]

# Schemes that are not a partition family; every family name is an operation-based scheme.
KINDS = ("full", "hash", "path", "feature")
TRANSFORMS = ("linear", "mlp")


def schemes() -> tuple[str, ...]:
    """Every valid ``scheme``: the fixed kinds and the registered partition families."""
    return (*KINDS, *P.FAMILIES)


@dataclass(frozen=True)
class EmbeddingSpec:
    """How to embed one categorical feature (or every feature of a model).

    Attributes:
        scheme: full, hash, path, feature, or a partition family (qr, mixed_radix, crt) whose
            tables an ``operation`` composes.
        operation: a registered composition operation (concat, add, mult).
        collisions: categories per bucket of the largest table (hash, families, path, feature).
        k: number of partitions (mixed_radix, crt, feature) instead of collisions.
        threshold: a feature with at most this many categories keeps its full table (0: none).
        family: the partitions of ``path`` and ``feature`` (default qr).
        path_transform: linear or mlp, for scheme path.
        path_hidden: hidden units of each path MLP.
        mode: sum, mean or max pooling over a bag.
        sparse: sparse gradients for the tables (for Adagrad and SGD).
        init: the init rule of operation-based tables (:data:`compemb.operations.INIT_RULES`;
            ``default`` is each operation's own rule); other schemes start at the full table's
            U(-sqrt(1/n), sqrt(1/n)).
        order: how ids are renumbered before partitioning (:data:`compemb.partitions.ORDERS`):
            natural (as they come), frequency (by rank), interleaved (by rank, the most
            frequent in different rows of the largest table) or random (seeded by
            ``order_seed``). frequency and interleaved need the training split's counts.
        order_seed: the seed of ``order="random"``.
        hot: the number of most frequent categories of each feature that get a private row
            (a partition of singletons plus one shared tail bucket, composed with the others:
            :class:`~compemb.partitions.HeadPartitions`); needs the training split's counts.
            Operation-based schemes, hash (composed by add) and feature generation.
    """

    scheme: str = "full"
    operation: str = "mult"
    collisions: int | None = None
    k: int | None = None
    threshold: int = 0
    family: str | None = None
    path_transform: str = "mlp"
    path_hidden: int = 64
    mode: str = "sum"
    sparse: bool = False
    init: str = "default"
    order: str = "natural"
    order_seed: int = 0
    hot: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in schemes():
            raise ValueError(f"scheme must be one of {schemes()}, got {self.scheme!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(
                f"operation must be one of {tuple(OPERATIONS)}, got {self.operation!r}"
            )
        if self.init not in INIT_RULES:
            raise ValueError(f"init must be one of {tuple(INIT_RULES)}, got {self.init!r}")
        if self.path_transform not in TRANSFORMS:
            raise ValueError(
                f"path_transform must be one of {TRANSFORMS}, got {self.path_transform!r}"
            )
        for name in ("collisions", "k"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ValueError(f"{name} must be an int >= 2 or None, got {v!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) \
                or self.threshold < 0:
            raise ValueError(f"threshold must be an int >= 0, got {self.threshold!r}")
        if self.order not in P.ORDERS:
            raise ValueError(f"order must be one of {P.ORDERS}, got {self.order!r}")
        for name in ("hot", "order_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.hot and self.scheme in ("full", "path"):
            raise ValueError(
                f"hot applies to operation-based schemes, hash and feature, not {self.scheme!r} "
                f"(hot={self.hot})"
            )
        if self.order != "natural" and self.scheme == "full":
            raise ValueError(
                f"order={self.order!r} renumbers partitioned ids; scheme full has none"
            )
        if self.family is not None:
            if self.scheme not in ("path", "feature"):
                raise ValueError(
                    f"family applies to schemes path and feature; scheme {self.scheme!r} is "
                    f"itself the partition family (family={self.family!r})"
                )
            P.get_family(self.family)
        if self.scheme == "full":
            return
        if self.collisions is None and self.k is None:
            raise ValueError(f"scheme {self.scheme!r} needs collisions or k")
        if self.collisions is not None and self.k is not None:
            raise ValueError(
                f"give collisions or k, not both (collisions={self.collisions}, k={self.k})"
            )
        takes = {"hash": ("collisions",), "path": ("collisions",), "feature": ("collisions", "k")}
        allowed = takes.get(self.scheme) or P.FAMILIES[self.scheme].takes
        if self.k is not None and "k" not in allowed:
            raise ValueError(f"scheme {self.scheme!r} takes collisions, not k (k={self.k})")
        if self.collisions is not None and "collisions" not in allowed:
            raise ValueError(f"scheme {self.scheme!r} takes k, not collisions")

    @property
    def kind(self) -> str:
        """full, hash, path, feature, or compose (partitions composed by an operation: the
        families, and hash with hot categories, whose private rows are added)."""
        if self.scheme == "hash" and self.hot:
            return "compose"
        return self.scheme if self.scheme in KINDS else "compose"

    @property
    def needs_counts(self) -> bool:
        """Whether the plan reads the training split's category counts."""
        return self.hot > 0 or self.order in ("frequency", "interleaved")

    def keeps_full(self, num_categories: int) -> bool:
        """Whether a feature of ``num_categories`` stays a full table under the threshold."""
        return self.scheme == "full" or num_categories <= self.threshold

    def with_(self, **changes: object) -> EmbeddingSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _base_partitions(spec: EmbeddingSpec, n: int) -> P.PartitionSet:
    if spec.scheme == "hash":
        return P.remainder(n, -(-n // spec.collisions))
    if spec.scheme == "full":
        return P.remainder(n, n)
    family = spec.family or ("qr" if spec.scheme in KINDS else spec.scheme)
    return P.get_family(family).build(n, spec.collisions, spec.k)


def spec_partitions(spec: EmbeddingSpec, num_categories: int,
                    counts: np.ndarray | None = None) -> P.PartitionSet:
    """The partitions a spec uses for a feature of ``num_categories`` (hash: one remainder),
    renumbered by ``spec.order`` and with ``spec.hot`` private rows.

    Args:
        counts: (n,) the training split's count of each category (``spec.needs_counts``).
    """
    n = num_categories
    parts = _base_partitions(spec, n)
    if spec.needs_counts:
        if counts is None:
            raise ValueError(
                f"order={spec.order!r}, hot={spec.hot}: this spec needs the training split's "
                f"category counts of each feature (a dataset's counts, e.g. "
                f"compemb.data.storage.read_category_counts)"
            )
        counts = np.asarray(counts)
        if counts.shape != (n,):
            raise ValueError(f"counts of a feature of {n} categories must have shape ({n},), "
                             f"got {counts.shape}")
    relabel = P.frequency_relabeling(parts, spec.order, counts, spec.order_seed)
    if relabel is not None:
        parts = P.RelabeledPartitions(parts, relabel)
    if spec.hot:
        parts = P.HeadPartitions(parts, _most_frequent(counts, min(spec.hot, n)))
    return parts


def _most_frequent(counts: np.ndarray, h: int) -> np.ndarray:
    """The h most frequent ids, ties to the smaller id, in O(n): (h,) int64."""
    counts = counts.astype(np.int64, copy=False)
    if h == 0:
        return np.zeros(0, dtype=np.int64)
    cut = np.partition(counts, len(counts) - h)[len(counts) - h]  # the h-th largest count
    above = np.flatnonzero(counts > cut)
    tied = np.flatnonzero(counts == cut)[: h - len(above)]
    return np.concatenate([above, tied])


def _cannot_shrink(spec: EmbeddingSpec, n: int) -> str | None:
    """Why a spec cannot make a feature of n categories smaller than its full table, or None."""
    if spec.collisions is not None and spec.collisions >= n:
        return (f"collisions={spec.collisions} >= num_categories={n}: the compressed tables would "
                f"hold at least as many rows as the full table")
    if spec.scheme != "hash":
        parts = _base_partitions(spec, n)
        if parts.num_buckets + spec.hot >= n:
            hot = f" and {spec.hot} hot rows" if spec.hot else ""
            return (f"{spec.scheme} partitions of sizes {parts.sizes}{hot} for num_categories={n}"
                    f" hold {parts.num_buckets + spec.hot} rows, no fewer than the full table's "
                    f"{n}")
    return None


def resolve_spec(spec: EmbeddingSpec, num_categories: int) -> EmbeddingSpec:
    """The spec a feature of ``num_categories`` actually gets inside a multi-feature model.

    A feature that the spec cannot shrink (at most ``threshold`` categories, no more categories
    than ``collisions``, or partitions with as many rows as the full table) keeps its full table,
    as the paper's thresholding does; :func:`plan_feature` with ``strict=True`` refuses instead.
    """
    if spec.scheme == "full":
        return spec
    if spec.keeps_full(num_categories) or _cannot_shrink(spec, num_categories):
        return spec.with_(scheme="full", collisions=None, k=None, family=None, init="default",
                          order="natural", hot=0)
    return spec


@dataclass(frozen=True)
class TablePlan:
    """One embedding table of a feature.

    Attributes:
        name: its key in the per-feature module's state dict (``weight``, ``weights.j``): the
            name checkpoints use whatever stores it.
        rows: R, the number of rows (buckets of its partition).
        width: D_j.
        bounds: the U(lo, hi) its rows are drawn from.
    """

    name: str
    rows: int
    width: int
    bounds: tuple[float, float]


@dataclass(frozen=True)
class FeaturePlan:
    """Everything needed to build one feature's embedding, by any backend.

    Attributes:
        num_categories: n.
        embedding_dim: D, the width of each output vector.
        spec: the resolved spec (full when the feature keeps its full table).
        partitions: the partitions (full: ``i mod n``; hash: one remainder).
        operation: the composition operation (``kind == "compose"`` only, else None).
        tables: the tables in partition order (path: the first partition's table only; its
            per-bucket functions are built by the path module).
    """

    num_categories: int
    embedding_dim: int
    spec: EmbeddingSpec
    partitions: P.PartitionSet
    operation: Operation | None
    tables: tuple[TablePlan, ...]

    @property
    def kind(self) -> str:
        """full, hash, compose, path or feature."""
        return self.spec.kind

    @property
    def num_outputs(self) -> int:
        """Vectors per sample: k for feature generation, else 1."""
        return self.partitions.k if self.kind == "feature" else 1


def compose_bounds(operation: Operation, partitions: P.PartitionSet, num_categories: int,
                   init: str = "default", embedding_dim: int | None = None
                   ) -> list[tuple[float, float]]:
    """U(lo, hi) of each table composed by ``operation`` over ``partitions``: rule ``init`` for
    the partitions, and for a :class:`~compemb.partitions.HeadPartitions`' hot table the
    operation's identity (every vector starts as its tail composition; the private rows learn
    the difference), or the full table's U(-a, a) where there is no identity."""
    head = isinstance(partitions, P.HeadPartitions)
    bounds = table_bounds(operation, partitions.k - head, num_categories, init, embedding_dim)
    if head:
        e = operation.identity
        a = full_table_bound(num_categories)
        bounds.append((e, e) if e is not None else (-a, a))
    return bounds


def plan_feature(
    num_categories: int, embedding_dim: int, spec: EmbeddingSpec, *, strict: bool = False,
    counts: np.ndarray | None = None,
) -> FeaturePlan:
    """The plan for a feature of ``num_categories``: the one place where a spec becomes tables.

    Args:
        strict: refuse (ValueError) a compression that cannot shrink the table instead of
            keeping the full table (what a single module asked for explicitly should do).
        counts: (n,) the training split's count of each category, for specs that renumber by
            frequency or keep hot rows (``spec.needs_counts``).
    """
    n, d = num_categories, embedding_dim
    for name, value in (("num_categories", n), ("embedding_dim", d)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if strict and not spec.keeps_full(n):
        why = _cannot_shrink(spec, n)
        if why is not None:
            fewer = "collisions" if spec.collisions is not None else "partitions"
            raise ValueError(f"{why}; use fewer {fewer} or threshold >= {n} to keep this "
                             f"feature full")
    spec = resolve_spec(spec, n)
    parts = spec_partitions(spec, n, counts)
    a = full_table_bound(n)
    kind = spec.kind
    operation = None
    if kind in ("full", "hash"):
        tables = (TablePlan("weight", parts.sizes[0], d, (-a, a)),)
    elif kind == "path":
        tables = (TablePlan("weight", parts.sizes[0], d, (-a, a)),)
    elif kind == "feature":
        tables = tuple(TablePlan(f"weights.{j}", r, d, (-a, a))
                       for j, r in enumerate(parts.sizes))
    else:
        # hash with hot rows: the private rows are added to the hashed one
        operation = get_operation("add" if spec.scheme == "hash" else spec.operation)
        where = f"{spec.scheme} {operation.name} (num_categories={n})"
        widths = operation.table_widths(d, parts.k, where)
        bounds = compose_bounds(operation, parts, n, spec.init, d)
        tables = tuple(TablePlan(f"weights.{j}", r, w, tuple(b)) for j, (r, w, b)
                       in enumerate(zip(parts.sizes, widths, bounds, strict=True)))
    return FeaturePlan(n, d, spec, parts, operation, tables)
