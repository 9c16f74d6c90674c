"""Schemes as registered objects: how one feature is embedded (full table, hashing trick,
partitions composed by an operation, path-based composition, feature generation, and whatever
is registered later).

A :class:`Scheme` owns everything that depends on which scheme a feature gets: its settings (a
small frozen dataclass, validated by the scheme), its plan (every parameter it needs, with shape,
init and role), its per-feature module, how it stacks in the multi-feature collection (or why
not), its TorchRec route (or a refusal), the setting ``fit_budget`` turns, and how it describes
itself in reports. Everything else asks the scheme object and never tests its name.

:data:`SCHEMES` holds them; every registered partition family is also a scheme under its own
name (one compose scheme driven by :data:`compemb.partitions.FAMILIES`). The built-in schemes
are registered by :mod:`compemb.schemes`, which importing ``compemb`` loads.

>>> SCHEMES.lookup("nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: unknown scheme 'nope'; registered: full, hash, path, feature, ...
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from compemb import partitions as P
from compemb.partitions import PartitionSet
from compemb.registry import Registry

if TYPE_CHECKING:
    from compemb.operations import Operation
    from compemb.spec import EmbeddingSpec, FeaturePlan

__all__ = ["SCHEMES", "NormalInit", "ParamPlan", "Scheme", "TorchRecPlan", "check_sizes",
           "register_scheme", "too_many_collisions"]

ROLES = ("table", "dense", "map")


@dataclass(frozen=True)
class NormalInit:
    """A table drawn from N(0, std^2) rather than U(lo, hi) (TT cores): what
    :attr:`ParamPlan.init` holds for it, and what backends turn into their own draw (TorchRec's
    seeded ``init_fn``)."""

    std: float

    def __post_init__(self) -> None:
        if not self.std >= 0:
            raise ValueError(f"std must be >= 0, got {self.std!r}")


@dataclass(frozen=True)
class ParamPlan:
    """One tensor a feature's embedding keeps.

    Attributes:
        name: its key in the per-feature module's state dict (``weight``, ``weights.1``,
            ``paths.0.1.bias``, ``relabel``): the name checkpoints use whatever stores it
            (``features.<f>.<name>`` in the collections).
        shape: its shape; (rows, width) for a table.
        role: ``table`` (rows looked up by bucket: what a row-wise optimizer and TorchRec
            shard), ``dense`` (applied to every looked-up row: path functions) or ``map``
            (an id map buffer: frequency renumbering, hot ids; not trained).
        init: U(lo, hi) bounds for tables (or :class:`NormalInit` for a Gaussian table); for
            dense parts and maps, the rule that fills them (``seed``: a map drawn from the
            scheme's seed, such as hash coefficients, which a checkpoint written before it
            was saved may lack: the seed's then stands).
        itemsize: bytes per entry (parameters float32; maps as the stacked collection keeps them).
    """

    name: str
    shape: tuple[int, ...]
    role: str = "table"
    init: tuple[float, float] | NormalInit | str = (0.0, 0.0)
    itemsize: int = 4

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def bounds(self) -> tuple[float, float]:
        if not isinstance(self.init, tuple):
            raise ValueError(f"{self.name} ({self.role}) has init rule {self.init!r}, no bounds")
        return self.init


@dataclass(frozen=True, eq=False)
class TorchRecPlan:
    """How a feature runs on the TorchRec collection.

    The plan's tables are stock TorchRec tables (sharded by DMP); the partitions past them
    (path functions' buckets) go to ``combine`` as they are.

    Attributes:
        pooled: looked up pooled and combined after pooling (the combination commutes with
            the pooling); otherwise looked up per id, combined, then pooled.
        outputs: vectors per sample.
        combine: (the looked-up parts, the buckets of the further partitions, ``module``) ->
            ``outputs`` tensors: (B, D) each when pooled, (N, D) per id otherwise.
        module: the data-parallel part applied after the lookups (path functions), or None.
        lookup: ids (N,) -> one (N, L) tensor per table: the L rows each id reads from it,
            instead of the plan's partitions' one bucket each (ROBE's hashed blocks), then any
            further tensors (N, ...), which go to ``combine`` as the further partitions'
            buckets do (which block MD table an id's row comes from). Such tables are looked
            up unpooled and come to ``combine`` as (N L, W); None: the partitions' buckets.
    """

    pooled: bool
    outputs: int
    combine: Callable[[list[torch.Tensor], Sequence[torch.Tensor], nn.Module | None],
                      list[torch.Tensor]]
    module: nn.Module | None = None
    lookup: Callable[[torch.Tensor], list[torch.Tensor]] | None = None


class Scheme(ABC):
    """How one feature is embedded: one registered object per scheme.

    Subclasses set ``name``, ``settings_type`` (a frozen dataclass whose fields are the
    scheme's own settings, checked in its ``__post_init__``) and implement
    :meth:`base_partitions`, :meth:`plan_params` and :meth:`module`.

    Attributes:
        compresses: False for the full table, the scheme every feature can fall back to.
        knob: the setting that sets the size, which ``fit_budget`` searches (None: none).
        knob_grows: whether a larger knob makes larger tables (a width, a rank, an array
            size), searched from 1 up to :meth:`knob_limit` in steps of :meth:`knob_unit`;
            otherwise it shrinks them (collisions).
        sizes: the settings that size the tables, one at a time (``fit_budget`` clears those
            other than the knob).
        takes_hot: whether ``hot`` private rows apply (composed with the scheme's tables).
        takes_order: whether ids may be renumbered (``order``) before partitioning.
        reclusters: whether its modules have a ``recluster(seed, all_reduce=None)`` that the
            trainer calls on the run's reclustering schedule (CCE's k-means;
            :func:`compemb.training.recluster.recluster_steps`).
        plans_every_feature: whether :meth:`plan_collection` is given the plans of every
            feature of the collection, those kept full (by ``threshold`` or
            :meth:`cannot_shrink`) included, which it returns as they are: for a scheme that
            plans its features relative to all of them (MD's widths, as the reference's
            ``md_solver`` runs over every feature before its threshold).
    """

    name: str
    settings_type: ClassVar[type]
    compresses: ClassVar[bool] = True
    knob: ClassVar[str | None] = "collisions"
    knob_grows: ClassVar[bool] = False
    sizes: ClassVar[tuple[str, ...]] = ("collisions", "k")
    takes_hot: ClassVar[bool] = False
    takes_order: ClassVar[bool] = True
    reclusters: ClassVar[bool] = False
    plans_every_feature: ClassVar[bool] = False

    def setting_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.settings_type))

    def make_settings(self, given: dict[str, Any]) -> Any:
        """The scheme's settings from ``given`` (only its own names), validated."""
        unknown = sorted(set(given) - set(self.setting_names()))
        if unknown:
            own = ", ".join(self.setting_names()) or "none"
            raise ValueError(f"scheme {self.name!r} has no setting {', '.join(map(repr, unknown))}"
                             f"; its settings: {own}")
        return self.settings_type(**given)

    def check(self, spec: EmbeddingSpec) -> None:
        """Reject settings shared by every scheme that this one cannot take."""
        if spec.hot and not self.takes_hot:
            able = [n for n in SCHEMES.names() if SCHEMES.lookup(n).takes_hot]
            raise ValueError(f"scheme {self.name!r} takes no hot rows (hot={spec.hot}); the "
                             f"schemes that do: {', '.join(able)}")
        if spec.order != "natural" and not self.takes_order:
            raise ValueError(f"order={spec.order!r} renumbers partitioned ids; scheme "
                             f"{self.name!r} has none")

    @abstractmethod
    def base_partitions(self, spec: EmbeddingSpec, num_categories: int) -> PartitionSet:
        """The partitions of a feature of n categories, before renumbering and hot rows."""

    def cannot_shrink(self, spec: EmbeddingSpec, num_categories: int) -> str | None:
        """Why this scheme cannot make a feature of n categories smaller than its full table,
        or None."""
        n = num_categories
        too_many = too_many_collisions(spec, n)
        if too_many is not None:
            return too_many
        parts = self.base_partitions(spec, n)
        if parts.num_buckets + spec.hot >= n:
            hot = f" and {spec.hot} hot rows" if spec.hot else ""
            return (f"{self.name} partitions of sizes {parts.sizes}{hot} for num_categories={n}"
                    f" hold {parts.num_buckets + spec.hot} rows, no fewer than the full table's "
                    f"{n}")
        return None

    @abstractmethod
    def plan_params(self, spec: EmbeddingSpec, num_categories: int, embedding_dim: int,
                    partitions: PartitionSet) -> tuple[Operation | None, list[ParamPlan]]:
        """The composition operation (or None) and the trained parameters (tables, then dense
        parts) of a feature with these partitions."""

    def knob_unit(self, spec: EmbeddingSpec) -> int:
        """The knob's values are multiples of this (a ROBE array holds whole blocks)."""
        return 1

    def knob_placeholder(self, given: dict[str, Any]) -> int:
        """A knob value these settings (``given``: the others) accept, held by a spec whose
        budget will choose the knob (``fit_budget`` replaces it; nothing is planned with it)."""
        return 16 if self.knob_grows else 2

    def upgrade_settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """The settings of a flat spec (``given``, with ``budget``) under today's names: where
        a setting was renamed, an old config's key is mapped here, with a FutureWarning."""
        return given

    def plan_collection(self, plans: list[FeaturePlan]) -> list[FeaturePlan]:
        """Adjust the plans of every feature this scheme embeds, seen together (for schemes
        whose features share or split something; with :attr:`plans_every_feature`, every
        feature of the collection); the default plans features one by one."""
        return plans

    def knob_limit(self, cardinalities: Sequence[int], embedding_dim: int) -> int | None:
        """The largest value ``fit_budget`` tries for a knob that grows the tables (None: no
        limit but the budget)."""
        return None

    def num_outputs(self, plan: FeaturePlan) -> int:
        """Vectors per sample."""
        return 1

    @abstractmethod
    def module(self, plan: FeaturePlan, **common: Any) -> nn.Module:
        """The per-feature module; ``common``: mode, sparse, validate, include_last_offset,
        device, dtype. Its state-dict keys are the plan's parameter names."""

    def stacking(self, plan: FeaturePlan) -> Any:
        """How the feature joins a stacked group of the collection: a
        ``TableStack`` (``compemb.embeddings.batched``) or
        ``PathStack`` (``compemb.embeddings.batched_path``) key (features with equal keys
        share a group), or a string saying why it is embedded by its own module."""
        return f"scheme {self.name!r} has no stacked form"

    def torchrec(self, plan: FeaturePlan, device: torch.device | str | None) -> TorchRecPlan:
        """The feature's route on the TorchRec collection, or ValueError saying why none.

        ``device`` is where the collection builds the tables; with ``"meta"`` (DMP allocates
        them) the route's data-parallel ``module`` must still be real: built on the CPU and
        drawn here."""
        raise ValueError(f"scheme {self.name!r} has no TorchRec route; use "
                         f"train.sharding=replicate")

    def describe(self, spec: EmbeddingSpec) -> tuple[str, str]:
        """(scheme and size, detail) labels for tables and reports: ``("qr c=4", "mult")``."""
        short = {"collisions": "c", "k": "k"}
        size = " ".join(f"{short[k]}={v}" for k, v in dataclasses.asdict(spec.settings).items()
                        if k in short and v is not None)
        return f"{self.name} {size}".strip(), "-"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SchemeRegistry(Registry[Scheme]):
    """:class:`~compemb.registry.Registry` of schemes, plus one compose scheme per registered
    partition family, made by the maker :meth:`for_families` sets."""

    def __init__(self, builtins: str):
        super().__init__("scheme")
        self._builtins: str | None = builtins
        self._per_family: Callable[[str], Scheme] | None = None
        self._made: dict[tuple[str, int], Scheme] = {}

    def _load_builtins(self) -> None:
        # The built-in schemes stand above the embedding modules they build, which stand above
        # this module: they register themselves when first asked for, as plugins would.
        if self._builtins is not None:
            name, self._builtins = self._builtins, None
            importlib.import_module(name)

    def for_families(self, make: Callable[[str], Scheme]) -> None:
        """Make every partition family's name a scheme: ``make(name)``."""
        self._per_family = make

    def names(self) -> tuple[str, ...]:
        """Every valid scheme name: the registered schemes, then the families."""
        self._load_builtins()
        families = tuple(P.FAMILIES) if self._per_family is not None else ()
        return (*self, *(f for f in families if f not in self))

    def lookup(self, name: str) -> Scheme:
        self._load_builtins()
        if isinstance(name, str) and name in self:
            return self[name]
        if self._per_family is not None and isinstance(name, str) and name in P.FAMILIES:
            key = (name, id(P.FAMILIES[name]))  # a family registered again is a new scheme
            if key not in self._made:
                self._made[key] = self._per_family(name)
            return self._made[key]
        raise ValueError(f"unknown scheme {name!r}; registered: {', '.join(self.names())}")


SCHEMES = SchemeRegistry("compemb.schemes")


def register_scheme(scheme: Scheme) -> Scheme:
    """Add a scheme to :data:`SCHEMES` under its ``name`` (a name is taken once)."""
    if not isinstance(scheme, Scheme):
        raise TypeError(f"register a Scheme instance, got {type(scheme).__name__}")
    SCHEMES._load_builtins()
    return SCHEMES.register(scheme.name, scheme)


def too_many_collisions(spec: EmbeddingSpec, num_categories: int) -> str | None:
    """Why ``collisions`` (when the scheme has it) is too large for n categories, or None."""
    collisions, n = getattr(spec.settings, "collisions", None), num_categories
    if collisions is not None and collisions >= n:
        return (f"collisions={collisions} >= num_categories={n}: the compressed tables would "
                f"hold at least as many rows as the full table")
    return None


def check_sizes(scheme: str, collisions: int | None, k: int | None,
                takes: tuple[str, ...] = ("collisions", "k")) -> None:
    """The size settings most schemes share: exactly one of ``collisions`` (categories per
    bucket of the largest table) and ``k`` (number of partitions), each an int >= 2, among
    those the scheme ``takes``."""
    for name, v in (("collisions", collisions), ("k", k)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
            raise ValueError(f"{name} must be an int >= 2 or None, got {v!r}")
    if collisions is None and k is None:
        raise ValueError(f"scheme {scheme!r} needs {' or '.join(takes)}")
    if collisions is not None and k is not None:
        raise ValueError(f"give collisions or k, not both (collisions={collisions}, k={k})")
    if k is not None and "k" not in takes:
        raise ValueError(f"scheme {scheme!r} takes collisions, not k (k={k})")
    if collisions is not None and "collisions" not in takes:
        raise ValueError(f"scheme {scheme!r} takes k, not collisions")
