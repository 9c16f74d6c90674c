"""What embedding a feature gets: the spec a user writes, and the per-feature plan made from it.

:class:`EmbeddingSpec` is the user's request (one for a feature or for every feature of a
model): a scheme, that scheme's own settings, and the settings every scheme shares (threshold,
pooling, id order, hot rows). :func:`plan_feature` turns it into a :class:`FeaturePlan` for one
feature of n categories, asking the scheme (:mod:`compemb.scheme`): which scheme it really gets
(small features keep their full table), its partitions, its composition operation, and every
tensor it keeps with shape, init and role. The per-feature modules, the stacked collection, the
TorchRec collection and the parameter counts are all made from plans, so a rule lives in one
place.

>>> plan = plan_feature(10_000, 16, EmbeddingSpec("qr", "mult", collisions=4))
>>> plan.scheme, [(t.name, t.rows, t.width) for t in plan.tables]
(ComposeScheme('qr'), [('weights.0', 2500, 16), ('weights.1', 4, 16)])
>>> plan.num_parameters
40064
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compemb import partitions as P
from compemb.memory import MemoryBudget
from compemb.operations import Operation, full_table_bound, table_bounds
from compemb.partitions import PartitionSet
from compemb.scheme import SCHEMES, ParamPlan, Scheme

__all__ = [
    "SHARED",
    "EmbeddingSpec",
    "FeaturePlan",
    "SharedPlan",
    "collection_parameters",
    "compose_bounds",
    "plan_collection",
    "plan_feature",
    "resolve_spec",
    "shared_plans",
    "schemes",
    "setting_types",
    "spec_partitions",
]

# The settings every scheme shares; the rest belong to the scheme (its settings dataclass).
SHARED = ("threshold", "mode", "sparse", "order", "order_seed", "hot", "cap_at_full")
# Before schemes owned their settings, the spec held all of them, and configs written then
# carry every one: a key another scheme owns, at that old default, is what such a config says
# for a scheme without the knob, so it is ignored.
_OLD_DEFAULTS: dict[str, Any] = {"operation": "mult", "collisions": None, "k": None,
                                 "family": None, "path_transform": "mlp", "path_hidden": 64,
                                 "init": "default"}


def schemes() -> tuple[str, ...]:
    """Every valid ``scheme``: the registered schemes and the partition families."""
    return SCHEMES.names()


def setting_types() -> dict[str, Any]:
    """Every key a flat spec (a config's ``model.embedding`` section) may hold and its type: the
    scheme, every registered scheme's settings, the shared settings."""
    hints = typing.get_type_hints(EmbeddingSpec)
    out: dict[str, Any] = {"scheme": hints["scheme"]}
    for name in schemes():
        out.update(typing.get_type_hints(SCHEMES.lookup(name).settings_type))
    # a budget is written as text ("16x", "200MB") or a count (2000000, 2e6): MemoryBudget.parse
    return {**out, **{k: hints[k] for k in SHARED}, "budget": str | int | float | None}


@dataclass(frozen=True, init=False)
class EmbeddingSpec:
    """How to embed one categorical feature (or every feature of a model).

    ``EmbeddingSpec(scheme, operation=None, *, threshold=0, ..., **settings)``: the scheme's own
    settings are given flat (``EmbeddingSpec("qr", "mult", collisions=4)``), or as its settings
    object (``settings=``); they are read back as attributes (``spec.collisions``). A setting the
    scheme has no knob for raises, listing the scheme's own.

    Attributes:
        scheme: a registered scheme (:data:`compemb.scheme.SCHEMES`): full, hash, path, feature,
            or a partition family (qr, mixed_radix, crt) whose tables an operation composes.
        settings: the scheme's own settings (a frozen dataclass the scheme validates).
        threshold: a feature with at most this many categories keeps its full table (0: none).
        mode: sum, mean or max pooling over a bag.
        sparse: sparse gradients for the tables (for Adagrad and SGD).
        order: how ids are renumbered before partitioning (:data:`compemb.partitions.ORDERS`):
            natural (as they come), frequency (by rank), interleaved (by rank, the most
            frequent in different rows of the largest table) or random (seeded by
            ``order_seed``). frequency and interleaved need the training split's counts.
        order_seed: the seed of ``order="random"``.
        hot: the number of most frequent categories of each feature that get a private row
            (a partition of singletons plus one shared tail bucket, composed with the others:
            :class:`~compemb.partitions.HeadPartitions`); needs the training split's counts.
            For the schemes that take it (``Scheme.takes_hot``).
        budget: a memory budget (:class:`~compemb.memory.MemoryBudget`: ``"16x"``, ``2e6``
            parameters, ``"200MB"``) that chooses the scheme's knob (``Scheme.knob``) when the
            cardinalities are known (:func:`~compemb.embeddings.budget.resolve_budget`: at the
            start of a run, in ``compemb params``); a spec that gives the knob too keeps it,
            and the budget checks that it fits.
        budget_pending: True while the budget has not chosen the knob: the knob is not set
            (reading it raises) and nothing can be planned.
        cap_at_full: a feature whose plan would hold more bytes (parameters and id maps) than
            its full table keeps the full table (:func:`plan_collection`). False plans it as
            the scheme asks, as every version before this setting did: what loads a
            checkpoint written then in which a feature was planned larger than its full table.
    """

    scheme: str = "full"
    settings: Any = None
    threshold: int = 0
    mode: str = "sum"
    sparse: bool = False
    order: str = "natural"
    order_seed: int = 0
    hot: int = 0
    budget: MemoryBudget | None = None
    budget_pending: bool = False
    cap_at_full: bool = True

    def __init__(self, scheme: str = "full", operation: str | None = None, *,
                 settings: Any = None, threshold: int = 0, mode: str = "sum",
                 sparse: bool = False, order: str = "natural", order_seed: int = 0,
                 hot: int = 0, budget: MemoryBudget | str | int | float | None = None,
                 cap_at_full: bool = True, **flat: Any):
        owner = SCHEMES.lookup(scheme)
        if operation is not None:
            flat["operation"] = operation
        flat = owner.upgrade_settings({**flat, "budget": budget})
        budget = flat.pop("budget")
        if budget is not None:
            budget = MemoryBudget.parse(budget)
            if owner.knob is None:
                raise ValueError(f"scheme {scheme!r} has no size setting for budget={budget} "
                                 f"to choose; leave budget out")
        pending = False
        if settings is None:
            own = set(owner.setting_names())
            given = {k: v for k, v in flat.items()
                     if k in own or k not in _OLD_DEFAULTS or _OLD_DEFAULTS[k] != v}
            if budget is not None and given.get(owner.knob) is None:
                pending = True
                _check_budget_chooses(owner, budget, given)
                given[owner.knob] = owner.knob_placeholder(given)
            settings = owner.make_settings(given)
        elif flat:
            raise ValueError(f"give settings or its fields, not both: {sorted(flat)}")
        elif not isinstance(settings, owner.settings_type):
            raise TypeError(f"scheme {scheme!r} takes settings of type "
                            f"{owner.settings_type.__name__}, got {type(settings).__name__}")
        values = {"scheme": scheme, "settings": settings, "threshold": threshold, "mode": mode,
                  "sparse": sparse, "order": order, "order_seed": order_seed, "hot": hot,
                  "budget": budget, "budget_pending": pending,
                  "cap_at_full": cap_at_full}
        for name, value in values.items():
            object.__setattr__(self, name, value)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be an int >= 0, got {threshold!r}")
        if order not in P.ORDERS:
            raise ValueError(f"order must be one of {P.ORDERS}, got {order!r}")
        if not isinstance(cap_at_full, bool):
            raise ValueError(f"cap_at_full must be true or false, got {cap_at_full!r}")
        for name in ("hot", "order_seed"):
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        owner.check(self)

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings")
        if name.startswith("__") or settings is None:
            raise AttributeError(name)
        if name == self.owner.knob and self.__dict__.get("budget_pending"):
            raise AttributeError(f"{name} is not chosen yet: budget {self.budget} chooses it "
                                 f"for the features' cardinalities (resolve_budget)")
        if name in self.owner.setting_names():
            return getattr(settings, name)
        raise AttributeError(f"scheme {self.scheme!r} has no setting {name!r}; its settings: "
                             f"{', '.join(self.owner.setting_names()) or 'none'}")

    @property
    def owner(self) -> Scheme:
        """The registered scheme object."""
        return SCHEMES.lookup(self.scheme)

    @property
    def needs_counts(self) -> bool:
        """Whether the plan reads the training split's category counts."""
        return self.hot > 0 or self.order in ("frequency", "interleaved")

    def keeps_full(self, num_categories: int) -> bool:
        """Whether a feature of ``num_categories`` stays a full table under the threshold."""
        return not self.owner.compresses or num_categories <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """The flat form config files take: scheme, its settings, the shared settings, and the
        budget when there is one (without the knob while the budget has not chosen it)."""
        own = dataclasses.asdict(self.settings)
        if self.budget_pending:
            del own[self.owner.knob]
        shared = {name: getattr(self, name) for name in SHARED}
        budget = {} if self.budget is None else {"budget": self.budget.to_config()}
        return {"scheme": self.scheme, **own, **shared, **budget}

    def with_(self, **changes: Any) -> EmbeddingSpec:
        """A copy with some fields changed (validated again); a new scheme drops the old
        scheme's settings."""
        flat = self.to_dict()
        if changes.get("scheme", self.scheme) != self.scheme:
            for name in self.owner.setting_names():
                flat.pop(name, None)
        return EmbeddingSpec(**{**flat, **changes})


def _check_budget_chooses(owner: Scheme, budget: MemoryBudget, given: dict[str, Any]) -> None:
    """A budget chooses the knob: the other settings that size the tables must be left out."""
    others = [k for k in owner.sizes if k != owner.knob and given.get(k) is not None]
    if others:
        shown = ", ".join(f"{k}={given[k]!r}" for k in others)
        raise ValueError(f"budget={budget} chooses {owner.knob} of scheme {owner.name!r}; "
                         f"leave out {shown} (or the budget)")


def spec_partitions(spec: EmbeddingSpec, num_categories: int,
                    counts: np.ndarray | None = None, *, sizing: bool = False
                    ) -> PartitionSet:
    """The partitions a spec uses for a feature of ``num_categories`` (hash: one remainder),
    renumbered by ``spec.order`` and with ``spec.hot`` private rows.

    Args:
        counts: (n,) the training split's count of each category (``spec.needs_counts``).
        sizing: only the sizes matter (counting parameters): no counts needed, no renumbering,
            the first ``hot`` ids stand for the most frequent.
    """
    n = num_categories
    parts = spec.owner.base_partitions(spec, n)
    if sizing:
        return P.HeadPartitions(parts, np.arange(min(spec.hot, n))) if spec.hot else parts
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


def resolve_spec(spec: EmbeddingSpec, num_categories: int) -> EmbeddingSpec:
    """The spec a feature of ``num_categories`` gets before its plan's bytes are weighed: full
    when the spec cannot shrink it (at most ``threshold`` categories, no more categories than
    ``collisions``, or partitions with as many rows as the full table), as the paper's
    thresholding does. :func:`plan_collection` then keeps the full table of any feature whose
    plan would hold more bytes than it; :func:`plan_feature` with ``strict=True`` refuses
    instead."""
    return spec if _why_full(spec, num_categories) is None else _full_spec(spec)


def _full_spec(spec: EmbeddingSpec) -> EmbeddingSpec:
    return spec.with_(scheme="full", order="natural", hot=0, budget=None)


def _why_full(spec: EmbeddingSpec, num_categories: int) -> str | None:
    """Why a compressing spec keeps this feature's full table before planning it, or None."""
    if not spec.owner.compresses:
        return None
    if num_categories <= spec.threshold:
        return f"num_categories={num_categories} <= threshold={spec.threshold}"
    return spec.owner.cannot_shrink(spec, num_categories)


class _Counts:
    """What a plan's ``params`` hold: trained parameters, their bytes, the id maps' bytes."""

    params: tuple[ParamPlan, ...]

    @property
    def num_parameters(self) -> int:
        """Trained parameters: tables and dense parts (a feature's: not its ``shared``'s)."""
        return sum(p.numel for p in self.params if p.role != "map")

    @property
    def num_bytes(self) -> int:
        return sum(p.numel * p.itemsize for p in self.params if p.role != "map")

    @property
    def index_bytes(self) -> int:
        """Bytes of the id maps."""
        return sum(p.numel * p.itemsize for p in self.params if p.role == "map")


@dataclass(frozen=True)
class SharedPlan(_Counts):
    """Tensors that several features of one scheme read together, planned once for the
    collection (ROBE-Z's one array for every feature it embeds).

    Attributes:
        key: its name in the collection: checkpoints save its tensors once, as
            ``shared.<key>.<name>``; TorchRec's table is named ``<key>``.
        params: the tensors (tables), as :class:`~compemb.scheme.ParamPlan`.
        members: how many features read it (each plan's ``member`` is its place among them).
    """

    key: str
    params: tuple[ParamPlan, ...]
    members: int

    @property
    def tables(self) -> tuple[ParamPlan, ...]:
        return tuple(p for p in self.params if p.role == "table")


@dataclass(frozen=True)
class FeaturePlan(_Counts):
    """Everything needed to build one feature's embedding, by any backend, and to count it.

    Attributes:
        num_categories: n.
        embedding_dim: D, the width of each output vector.
        spec: the resolved spec (full when the feature keeps its full table).
        partitions: the partitions (full: ``i mod n``; hash: one remainder).
        operation: the composition operation, or None.
        params: every tensor the feature keeps (:class:`~compemb.scheme.ParamPlan`): its tables
            in partition order, dense parts (path functions), id maps.
        shared: what it reads together with other features (counted once, by the collection:
            :func:`shared_plans`), or None.
        member: its place among the features that read ``shared``.
        kept_full: why a feature whose requested spec compresses keeps its full table (its
            threshold, the scheme's own limit, or a plan holding more bytes than the full
            table); None otherwise.
    """

    num_categories: int
    embedding_dim: int
    spec: EmbeddingSpec
    partitions: PartitionSet
    operation: Operation | None
    params: tuple[ParamPlan, ...]
    shared: SharedPlan | None = None
    member: int = 0
    kept_full: str | None = None

    @property
    def scheme(self) -> Scheme:
        """The scheme object that made this plan."""
        return self.spec.owner

    def _role(self, role: str) -> tuple[ParamPlan, ...]:
        return tuple(p for p in self.params if p.role == role)

    @property
    def tables(self) -> tuple[ParamPlan, ...]:
        """The row-indexed tables, in partition order."""
        return self._role("table")

    @property
    def dense(self) -> tuple[ParamPlan, ...]:
        """Parameters applied to every looked-up row (path functions)."""
        return self._role("dense")

    @property
    def maps(self) -> tuple[ParamPlan, ...]:
        """Id maps kept beside the tables (buffers, not trained)."""
        return self._role("map")


    @property
    def held_bytes(self) -> int:
        """Bytes the feature's embedding holds: parameters and id maps."""
        return self.num_bytes + self.index_bytes

    @property
    def full_bytes(self) -> int:
        """Bytes of the feature's full table: n x D float32."""
        return self.num_categories * self.embedding_dim * 4

    @property
    def num_outputs(self) -> int:
        """Vectors per sample: k for feature generation, else 1."""
        return self.scheme.num_outputs(self)


def compose_bounds(operation: Operation, partitions: PartitionSet, num_categories: int,
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


def _map_plans(partitions: PartitionSet) -> list[ParamPlan]:
    """The id maps of renumbered ids and hot rows, as the modules keep them: 4 bytes per
    renumbered category (:func:`~compemb.partitions.relabel_dtype`), 8 per hot id."""
    maps = []
    if partitions.relabeling() is not None:
        maps.append(_relabel_plan(partitions.num_categories))
    if isinstance(partitions, P.HeadPartitions):
        maps.append(ParamPlan("hot_ids", (partitions.sizes[-1] - 1,), "map", "hot", 8))
    return maps


def _relabel_plan(num_categories: int) -> ParamPlan:
    size = P.relabel_dtype(num_categories).itemsize
    return ParamPlan("relabel", (num_categories,), "map", "order", size)


def plan_feature(
    num_categories: int, embedding_dim: int, spec: EmbeddingSpec, *, strict: bool = False,
    counts: np.ndarray | None = None, sizing: bool = False,
) -> FeaturePlan:
    """The plan for a feature of ``num_categories``: the one place where a spec becomes tables.

    A plan that would hold more bytes (parameters and id maps) than the feature's full table
    gives way to the full table (:attr:`FeaturePlan.kept_full` says why), as in
    :func:`plan_collection`, unless ``strict``.

    Args:
        strict: refuse (ValueError) a compression that cannot shrink the table instead of
            keeping the full table (what a single module asked for explicitly should do); a
            plan larger than the full table is then built as asked.
        counts: (n,) the training split's count of each category, for specs that renumber by
            frequency or keep hot rows (``spec.needs_counts``).
        sizing: a plan to count with, not to build from: no counts needed, id maps planned by
            size only (see :func:`spec_partitions`).
    """
    plan = _plan(num_categories, embedding_dim, spec, strict, counts, sizing)
    return plan if strict else _no_larger_than_full(plan)


def _plan(num_categories: int, embedding_dim: int, spec: EmbeddingSpec, strict: bool,
          counts: np.ndarray | None, sizing: bool) -> FeaturePlan:
    """The feature's plan by its spec alone, its bytes not yet weighed."""
    n, d = num_categories, embedding_dim
    if spec.budget_pending:
        raise ValueError(f"budget {spec.budget} has not chosen {spec.owner.knob} yet: "
                         f"resolve_budget(spec, cardinalities, embedding_dim) chooses it")
    for name, value in (("num_categories", n), ("embedding_dim", d)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if strict and not spec.keeps_full(n):
        why = spec.owner.cannot_shrink(spec, n)
        if why is not None:
            fewer = spec.owner.knob or "partitions"
            raise ValueError(f"{why}; use fewer {fewer} or threshold >= {n} to keep this "
                             f"feature full")
    why = _why_full(spec, n)
    if why is not None:
        spec = _full_spec(spec)
    parts = spec_partitions(spec, n, counts, sizing=sizing)
    operation, params = spec.owner.plan_params(spec, n, d, parts)
    maps = _map_plans(parts)
    if sizing and spec.order != "natural":
        maps.insert(0, _relabel_plan(n))
    return FeaturePlan(n, d, spec, parts, operation, (*params, *maps), kept_full=why)


def _no_larger_than_full(plan: FeaturePlan) -> FeaturePlan:
    """``plan``, or the full table's when it would hold more bytes than that."""
    # a member of a shared plan holds little of its own; the shared plan counted its members
    if (not plan.scheme.compresses or not plan.spec.cap_at_full or plan.shared is not None
            or plan.held_bytes <= plan.full_bytes):
        return plan
    n, d = plan.num_categories, plan.embedding_dim
    label = plan.scheme.describe(plan.spec)[0]
    why = (f"{label} would hold {plan.held_bytes:,} bytes ({plan.num_parameters:,} parameters, "
           f"{plan.index_bytes:,} bytes of id maps), more than the full table's "
           f"{plan.full_bytes:,} (num_categories={n} x D={d} float32)")
    spec = _full_spec(plan.spec)
    parts = spec_partitions(spec, n)
    operation, params = spec.owner.plan_params(spec, n, d, parts)
    return FeaturePlan(n, d, spec, parts, operation, tuple(params), kept_full=why)


def plan_collection(
    cardinalities: Sequence[int], embedding_dim: int, spec: EmbeddingSpec, *,
    counts: Sequence[np.ndarray] | None = None, sizing: bool = False,
) -> tuple[FeaturePlan, ...]:
    """The plans of every feature of a model, each scheme then seeing all of its features at
    once (:meth:`~compemb.scheme.Scheme.plan_collection`; a scheme that
    ``plans_every_feature`` sees the features kept full too); last, any feature whose plan would
    hold more bytes (parameters and id maps) than its full table keeps the full table
    (:attr:`FeaturePlan.kept_full` says why), decided once, on the plans as the schemes left
    them."""
    if counts is not None and len(counts) != len(cardinalities):
        raise ValueError(f"counts for {len(counts)} features, cardinalities for "
                         f"{len(cardinalities)}")
    plans = [_plan(int(n), embedding_dim, spec, False,
                   None if counts is None else counts[f], sizing)
             for f, n in enumerate(cardinalities)]  # fmt: skip
    by_scheme: dict[str, list[int]] = {}
    every = spec.owner.plans_every_feature
    for f, plan in enumerate(plans):
        by_scheme.setdefault(spec.scheme if every else plan.spec.scheme, []).append(f)
    for name, features in by_scheme.items():
        owner = SCHEMES.lookup(name)
        for f, plan in zip(features, owner.plan_collection([plans[f] for f in features]),
                           strict=True):
            plans[f] = plan
    return tuple(_no_larger_than_full(plan) for plan in plans)


def shared_plans(plans: Sequence[FeaturePlan]) -> tuple[SharedPlan, ...]:
    """The collection-level plans the features read, each once, in order of first reader."""
    seen: dict[str, SharedPlan] = {}
    for plan in plans:
        if plan.shared is not None:
            seen.setdefault(plan.shared.key, plan.shared)
    return tuple(seen.values())


def collection_parameters(plans: Sequence[FeaturePlan]) -> int:
    """Trained parameters of a collection of these plans: every feature's own, and each shared
    plan's once."""
    return (sum(plan.num_parameters for plan in plans)
            + sum(s.num_parameters for s in shared_plans(plans)))
