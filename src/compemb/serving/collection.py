"""Every scheme served from quantized tables: the TorchRec route's tables stored row-wise in
fp16, int8 or int4 and looked up by FBGEMM's inference kernel, then the same composition.

A scheme's TorchRec route (:meth:`~compemb.scheme.Scheme.torchrec`) already turns its feature
into plain tables plus a composition on looked-up rows (operation, projection, TT product, path
functions, ROBE blocks); here those tables are quantized, and the composition, the dense parts
and the pooling run in float32 on the dequantized rows, exactly as in
:class:`~compemb.embeddings.torchrec.TorchRecEmbeddingCollection`.

Letters: B samples, F features (F1 of them single-valued, one id each), F_out output vectors,
N ids of one feature in the batch, D output width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compemb.scheme import ParamPlan
from compemb.serving.precision import PRECISIONS, Precision, table_precision
from compemb.serving.tables import QuantizedTables
from compemb.spec import FeaturePlan

__all__ = ["QuantizedEmbeddingCollection", "feature_precisions"]


def feature_precisions(precision: str, names: Sequence[str],
                       per_feature: Mapping[str, str] | None = None) -> list[Precision]:
    """Each feature's precision: ``precision``, or the one ``per_feature`` names for it.

    Raises:
        ValueError: an unknown precision, or a ``per_feature`` key that is no feature.
    """
    per_feature = dict(per_feature or {})
    unknown = sorted(set(per_feature) - set(names))
    if unknown:
        raise ValueError(f"per-feature precision for {', '.join(map(repr, unknown))}: no such "
                         f"feature; the features: {', '.join(names)}")
    return [PRECISIONS.lookup(per_feature.get(name, precision)) for name in names]


def _pool(values: torch.Tensor, offsets: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-id vectors (N, D) pooled per sample (B, D) as ``nn.EmbeddingBag`` pools, bag b
    from ``offsets[b]`` (an empty bag gives zeros)."""
    positions = torch.arange(values.shape[0], device=values.device)
    return F.embedding_bag(positions, values, offsets, mode=mode)


def _total(n: int | torch.SymInt, like: torch.Tensor) -> torch.Tensor:
    """(1,) holding n; ``torch.full`` keeps a symbolic n symbolic in an exported program,
    where slicing offsets would fix the batch size."""
    return torch.full((1,), n, dtype=like.dtype, device=like.device)


def _reads(name: str, f: int, plan: FeaturePlan) -> list[tuple[str, str, ParamPlan]]:
    """``(table name, key in the local state, table)`` of each table feature f looks up, in its
    route's order: its own (``<feature>__<j>``) or its shared plan's (named as TorchRec names
    them: the key, ``<key>__<j>`` for several)."""
    if plan.shared is None:
        return [(f"{name}__{j}", f"features.{f}.{t.name}", t) for j, t in enumerate(plan.tables)]
    key, tables = plan.shared.key, plan.shared.tables
    return [(key if len(tables) == 1 else f"{key}__{j}", f"shared.{key}.{t.name}", t)
            for j, t in enumerate(tables)]


class _Group:
    """The tables of one :class:`QuantizedTables` being gathered: each table once, and the
    table each lookup (a feature's read of it) reads."""

    def __init__(self) -> None:
        self.tables: dict[str, tuple[torch.Tensor, Precision, str]] = {}  # with first reader
        self.lookups: list[int] = []

    def read(self, key: str, weight: torch.Tensor, precision: Precision, feature: str) -> None:
        if key in self.tables:
            _, first, reader = self.tables[key]
            if first != precision:
                raise ValueError(f"table {key} is read by features {reader!r} ({first.name}) and "
                                 f"{feature!r} ({precision.name}): it is stored once, so give "
                                 f"them one precision")  # fmt: skip
        else:
            self.tables[key] = (weight, precision, feature)
        self.lookups.append(list(self.tables).index(key))

    def build(self, pooling: str) -> QuantizedTables:
        return QuantizedTables([(k, w, p) for k, (w, p, _) in self.tables.items()], pooling,
                               self.lookups)


class QuantizedEmbeddingCollection(nn.Module):
    """F categorical features served from row-wise quantized tables; a model's ``sparse_arch``.

    Forward: ``(ids (B, F1), bags) -> (B, F_out, D)``, the call of
    :class:`~compemb.embeddings.collection.EmbeddingBagCollection`: ids of the single-valued
    features, the others as ``(values (N,), offsets (B,))`` bags.

    Each feature's tables (its plan's, as its TorchRec route looks them up) are stored in the
    feature's precision; a table that precision would not shrink (width 1 in int8 or int4)
    stays float32. A table several features read (ROBE-Z's one array, a
    :class:`~compemb.spec.SharedPlan`) is stored once, in the precision its features share,
    and every one of them looks it up. Tables whose composition commutes with the pooling
    (and those of the first ``one_hot`` features, whose bags hold one id) are looked up pooled
    in one call; the others one row per id (one call per width), composed per id, then
    pooled. Dense parts (path functions, projections) and id maps stay as trained.

    Every id is checked against its feature's n before any lookup (FBGEMM would read row 0
    for it): an IndexError naming the feature, or in an exported program a
    ``torch._assert_async`` whose message names it.

    Args:
        plans: each feature's plan (a local collection's ``plans``).
        state: the local collection's state dict (``features.<f>.<name>`` and
            ``shared.<key>.<name>`` keys).
        precisions: each feature's :class:`~compemb.serving.precision.Precision`.
        mode: pooling of multi-hot bags: ``sum``, ``mean`` or ``max``.
        feature_names: names in error messages and per-feature precisions; ``f0, f1, ...``.
        one_hot: the first ``one_hot`` features come as ids, one per sample.

    >>> from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec
    >>> ebc = EmbeddingBagCollection([1000, 50], 16, EmbeddingSpec("qr", collisions=4))
    >>> qc = QuantizedEmbeddingCollection.from_collection(ebc, "int8", one_hot=2)
    >>> qc(torch.tensor([[3, 7], [999, 49]])).shape, qc.table_bytes()["f0__0"]
    (torch.Size([2, 2, 16]), 5000)
    """

    def __init__(self, plans: Sequence[FeaturePlan], state: Mapping[str, torch.Tensor],
                 precisions: Sequence[Precision], *, mode: str = "sum",
                 feature_names: Sequence[str] | None = None, one_hot: int = 0):
        super().__init__()
        names = [f"f{i}" for i in range(len(plans))] if feature_names is None \
            else [str(n) for n in feature_names]
        if not len(names) == len(plans) == len(precisions) or len(set(names)) != len(names):
            raise ValueError(f"need {len(plans)} distinct feature names and precisions, got "
                             f"{names} and {len(precisions)} precisions")
        if not 0 <= one_hot <= len(plans):
            raise ValueError(f"one_hot must be in [0, {len(plans)}], got {one_hot}")
        self.feature_names, self.mode, self.one_hot = tuple(names), mode, one_hot
        self.cardinalities = tuple(p.num_categories for p in plans)
        self.embedding_dim = plans[0].embedding_dim
        self.plans, self.routes = tuple(plans), []
        self.paths = nn.ModuleDict()
        groups: dict[str, _Group] = {}  # "pooled", or "d<W>" for unpooled tables of width W
        self._pooled_of: list[bool] = []
        self._groups_of: list[tuple[str, ...]] = []  # each feature's group of each table it reads
        self._state_keys: dict[str, str] = {}  # table name -> its key in the local state
        placed: dict[str, str] = {}  # table name -> its group
        for f, (name, plan, precision) in enumerate(zip(names, plans, precisions, strict=True)):
            route = plan.scheme.torchrec(plan, "cpu")
            is_pooled = (f < one_hot and route.lookup is None) or (mode != "max" and route.pooled)
            self.routes.append(route)
            self._pooled_of.append(is_pooled)
            if route.module is not None:
                own = {p.name: state[f"features.{f}.{p.name}"] for p in (*plan.dense, *plan.maps)}
                route.module.load_state_dict(own)
                self.paths[name] = route.module
            own_groups = []
            for key, local, table in _reads(name, f, plan):
                group = "pooled" if is_pooled else f"d{table.width}"
                if placed.setdefault(key, group) != group:
                    raise ValueError(f"table {key} is read pooled by some features and unpooled "
                                     f"by others (feature {name!r}): it is stored once")
                p = table_precision(precision, table.width, f"{key} ({table.name} of feature "
                                                            f"{name!r})")  # fmt: skip
                groups.setdefault(group, _Group()).read(key, state[local], p, name)
                self._state_keys[key] = local
                own_groups.append(group)
            self._groups_of.append(tuple(own_groups))
        # one-hot features' rows alone are pooled under max: a one-id bag's sum is its row
        self.pooled = groups["pooled"].build("sum" if mode == "max" else mode) \
            if "pooled" in groups else None
        self.unpooled = nn.ModuleDict({k: g.build("none") for k, g in groups.items()
                                       if k != "pooled"})  # fmt: skip
        self.num_outputs = sum(p.num_outputs for p in plans)

    @classmethod
    def from_collection(cls, collection: nn.Module, precision: str, *,
                        per_feature: Mapping[str, str] | None = None,
                        feature_names: Sequence[str] | None = None, one_hot: int = 0
                        ) -> QuantizedEmbeddingCollection:
        """Quantize a local :class:`~compemb.embeddings.collection.EmbeddingBagCollection`
        (``precision`` for every feature but those ``per_feature`` names)."""
        names = feature_names or [f"f{i}" for i in range(len(collection.plans))]
        state = {k: v.detach() for k, v in collection.state_dict().items()}
        return cls(collection.plans, state, feature_precisions(precision, names, per_feature),
                   mode=collection.spec.mode, feature_names=names, one_hot=one_hot)

    def _tables(self) -> list[QuantizedTables]:
        return [t for t in (self.pooled, *self.unpooled.values()) if t is not None]

    def table_bytes(self) -> dict[str, int]:
        """Bytes of each table (codes, scales and biases), by table name: ``<feature>__<j>``,
        or a shared plan's key (``robe``), counted once however many features read it."""
        return {k: v for t in self._tables() for k, v in t.table_bytes().items()}

    def dequantized(self) -> dict[str, torch.Tensor]:
        """Every table in float32 as the kernel reads it, under the local collection's keys
        (``features.<f>.<name>``, ``shared.<key>.<name>``): what a float model loads to
        compute on the same rows."""
        return {self._state_keys[name]: qt.dequantized(j)
                for qt in self._tables() for j, name in enumerate(qt.names)}

    @property
    def map_bytes(self) -> int:
        """Bytes of the id maps the route modules hold (frequency renumbering, hot ids)."""
        return sum(m.get_buffer(p.name).numel() * m.get_buffer(p.name).element_size()
                   for name, m in self.paths.items()
                   for p in self.plans[self.feature_names.index(name)].maps)

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense parts applied to looked-up rows (path functions, projections)."""
        return sum(p.numel() * p.element_size() for p in self.paths.parameters())

    @property
    def num_parameters(self) -> int:
        """Values in the tables and dense parts (as the float model counts them)."""
        return sum(p.num_parameters for p in self.plans)

    def forward(self, ids: torch.Tensor,
                bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
        """Embed a batch: ids (B, F1) and F - F1 bags -> (B, F_out, D)."""
        batch, single = (ids.shape[0], ids.shape[1]) if ids.dim() == 2 else (0, -1)
        if single + len(bags) != len(self.plans) or single < self.one_hot:
            raise ValueError(
                f"QuantizedEmbeddingCollection: ids of shape {tuple(ids.shape)} and {len(bags)} "
                f"bags do not make the {len(self.plans)} features it embeds (ids (B, F1) with "
                f"F1 >= {self.one_hot}, plus F - F1 bags)")  # fmt: skip
        jagged = []  # every feature's (values (N,), offsets (B,))
        for f in range(len(self.plans)):
            if f < single:
                values = ids[:, f].long()
                offsets = torch.arange(batch, device=ids.device)
            else:
                values, offsets = bags[f - single][0].long(), bags[f - single][1].long()
            self._check(f, values)
            jagged.append((values, offsets))
        inputs: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        rest = []
        for f, (plan, route) in enumerate(zip(self.plans, self.routes, strict=True)):
            values, offsets = jagged[f]
            looked = plan.partitions.buckets(values) if route.lookup is None \
                else tuple(route.lookup(values))
            k = len(self._groups_of[f])
            rest.append(tuple(looked[k:]))
            for key, b in zip(self._groups_of[f], looked[:k], strict=True):
                per_id = 1 if b.dim() == 1 else b.shape[1]
                got = inputs.setdefault(key, ([], []))
                got[0].append(b.reshape(-1))
                got[1].append(offsets * per_id)
        rows = self._lookup(inputs)
        outs = []
        for f, route in enumerate(self.routes):
            parts = [rows[key].pop(0) for key in self._groups_of[f]]
            name = self.feature_names[f]
            module = self.paths[name] if name in self.paths else None
            composed = route.combine(parts, rest[f], module)
            if not self._pooled_of[f]:
                composed = [_pool(c, jagged[f][1], self.mode) for c in composed]
            outs.extend(composed)
        return torch.stack(outs, dim=1)

    def _lookup(self, inputs: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]]
                ) -> dict[str, list[torch.Tensor]]:
        """Each group's tables looked up in one call, split back into one tensor per table:
        (B, W) pooled, (N L, W) per id."""
        out = {}
        for key, (indices, offsets) in inputs.items():
            tables = self.pooled if key == "pooled" else self.unpooled[key]
            starts, base = [], 0
            for i, o in zip(indices, offsets, strict=True):  # lookup after lookup
                starts.append(o + base)
                base = base + i.shape[0]
            looked = tables(torch.cat(indices), torch.cat([*starts, _total(base, offsets[0])]))
            if key == "pooled":
                out[key] = list(looked.split(tables.lookup_widths, dim=1))
            else:
                out[key] = list(looked.split([i.shape[0] for i in indices]))
        return out

    def _check(self, f: int, values: torch.Tensor) -> None:
        """Every id of feature f in 0..n-1 (FBGEMM would read row 0 for any other)."""
        n, name = self.cardinalities[f], self.feature_names[f]
        if torch.compiler.is_exporting():
            torch._assert_async(((values >= 0) & (values < n)).all(),
                                f"feature {name!r}: an id is out of range 0..{n - 1}")
            return
        bad = (values < 0) | (values >= n)
        if values.numel() and bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise IndexError(f"QuantizedEmbeddingCollection: feature {name!r} id "
                             f"{int(values[i])} (position {i} of its values) is out of range "
                             f"0..{n - 1}")
