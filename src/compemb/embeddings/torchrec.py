"""Compositional embeddings on TorchRec: every partition table is a stock TorchRec table, so
``DistributedModelParallel``'s default sharders shard it; the id remapping and the composition
run data-parallel around the tables.

TorchRec is optional (the ``torchrec`` extra); this module imports it only when used.

Letters: B samples, F features, F_out output vectors (k per feature-generation feature), N ids
of one feature in the batch, D output width.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compemb.scheme import NormalInit, ParamPlan, TorchRecPlan
from compemb.spec import EmbeddingSpec, FeaturePlan, plan_collection

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor, KeyedTensor

INSTALL_HINT = (
    "TorchRec sharding needs the `torchrec` extra: pip install -c constraints.txt "
    "'compemb[torchrec]' && pip install --no-deps -c constraints.txt torchrec==1.8.0 "
    "(`make test` installs both)"
)


def require_torchrec() -> Any:
    """The ``torchrec`` package, or an ImportError that names the extra to install."""
    try:
        import torchrec
    except ImportError as err:  # also fbgemm's "undefined symbol" on a mismatched torch
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return torchrec


@dataclass(frozen=True)
class FeatureRoute:
    """Where one feature's tables live and how their rows become its output vectors.

    Attributes:
        name: the feature's key in the input KeyedJaggedTensor.
        index: the feature's position (f in the local collection's ``features.<f>`` keys).
        plan: the feature's :class:`~compemb.spec.FeaturePlan` (resolved spec, partitions,
            operation, tables).
        tables: TorchRec table names, in the plan's table order: ``<feature>__<j>``; for a
            plan that reads a :class:`~compemb.spec.SharedPlan`, its tables (``<key>``), which
            every feature reading them looks up.
        pooled: tables in the pooled EmbeddingBagCollection and combined after pooling (the
            combination commutes with the pooling, or the feature is one-hot: a pooled
            one-id bag is the row itself); otherwise looked up unpooled, combined per id, then
            pooled here.
        outputs: output keys: the feature's name, or k of them (``<feature>_<j>``) when the
            scheme gives k vectors per sample.
        route: the scheme's :class:`~compemb.scheme.TorchRecPlan` (how parts combine).
        one_hot: every sample holds exactly one id of this feature (checked every batch).
        split: for a pooled route whose ``lookup`` gives L rows per id of a table (a one-hot
            feature's), L per table (0 where it gives one, as (N,)): each of the L rows is a
            one-id bag of a key of its own, so the rows come back pooled, which FBGEMM's CPU
            backward does at a fraction of the unpooled one's cost; empty otherwise.
    """

    name: str
    index: int
    plan: FeaturePlan
    tables: tuple[str, ...]
    pooled: bool
    outputs: tuple[str, ...]
    route: TorchRecPlan
    one_hot: bool = False
    split: tuple[int, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Each table's name among the feature's lookups: ``<feature>__<j>``, its key
        (TorchRec's feature name) unless ``split`` gives it several (``table_keys``)."""
        return tuple(f"{self.name}__{j}" for j in range(len(self.tables)))

    @property
    def table_keys(self) -> tuple[tuple[str, ...], ...]:
        """Each table's lookup keys: ``<feature>__<j>``, or ``<feature>__<j>_<k>`` for the
        k-th of the L rows an id reads when ``split``."""
        if not self.split:
            return tuple((k,) for k in self.keys)
        return tuple((k,) if n == 0 else tuple(f"{k}_{i}" for i in range(n))
                     for k, n in zip(self.keys, self.split, strict=True))  # fmt: skip

    @property
    def table_plans(self) -> tuple[ParamPlan, ...]:
        """The tables it looks up: the plan's own, or the shared ones it reads."""
        shared = self.plan.shared
        return self.plan.tables if shared is None else shared.tables

    @property
    def local_keys(self) -> tuple[str, ...]:
        """Each table's key in the local collection's state dict."""
        shared = self.plan.shared
        where = f"features.{self.index}" if shared is None else f"shared.{shared.key}"
        return tuple(f"{where}.{t.name}" for t in self.table_plans)


def _table_names(name: str, plan: FeaturePlan) -> tuple[str, ...]:
    """TorchRec's names of the tables a feature looks up."""
    if plan.shared is None:
        return tuple(f"{name}__{j}" for j in range(len(plan.tables)))
    tables = plan.shared.tables
    return (plan.shared.key,) if len(tables) == 1 else tuple(
        f"{plan.shared.key}__{j}" for j in range(len(tables)))


def _rows_per_id(route: TorchRecPlan, tables: int, device: torch.device) -> tuple[int, ...]:
    """L of each of the ``tables`` whose (N, L) rows a route's ``lookup`` gives (0 for (N,)
    rows), read from its lookup of an empty batch (on its data-parallel module's device)."""
    where = torch.device("cpu") if device.type == "meta" else device
    looked = route.lookup(torch.zeros(0, dtype=torch.long, device=where))
    return tuple(0 if b.dim() == 1 else b.shape[1] for b in looked[:tables])


class SeededInit(ABC):
    """A table's ``init_fn``: a draw from a generator of its own, seeded by the run's seed and
    the table's name, so every rank draws the same data-parallel table and a sharded run is
    reproducible without the global RNG. Subclasses say what is drawn.

    A ShardedTensor (TorchRec's sharded weight) is drawn shard by shard, each from a generator
    seeded by its offsets too: the same at the same world size and plan; another world size
    shards (and so draws) differently.
    """

    def __init__(self, seed: int, name: str):
        self.seed, self.name = seed, name

    def __call__(self, weight: Any) -> Any:
        if hasattr(weight, "local_shards"):
            for s in weight.local_shards():
                self._fill(s.tensor, tuple(s.metadata.shard_offsets))
        else:
            self._fill(weight, ())
        return weight

    def _fill(self, tensor: torch.Tensor, offsets: tuple[int, ...]) -> None:
        if tensor.is_meta:  # nothing to draw: DMP calls again on the allocated shards
            return
        key = f"{self.seed}/{self.name}/{offsets}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        generator = torch.Generator(device=tensor.device).manual_seed(seed)
        with torch.no_grad():
            self._draw(tensor, generator)

    @abstractmethod
    def _draw(self, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Fill ``tensor`` in place from ``generator``."""


class SeededUniform(SeededInit):
    """U(lo, hi), seeded as :class:`SeededInit` says."""

    def __init__(self, low: float, high: float, seed: int, name: str):
        super().__init__(seed, name)
        self.low, self.high = low, high

    def _draw(self, tensor: torch.Tensor, generator: torch.Generator) -> None:
        tensor.uniform_(self.low, self.high, generator=generator)

    def __repr__(self) -> str:
        return f"SeededUniform({self.low}, {self.high}, seed={self.seed}, name={self.name!r})"


class SeededNormal(SeededInit):
    """N(0, std^2) (TT cores), seeded as :class:`SeededInit` says."""

    def __init__(self, std: float, seed: int, name: str):
        super().__init__(seed, name)
        self.std = std

    def _draw(self, tensor: torch.Tensor, generator: torch.Generator) -> None:
        tensor.normal_(0.0, self.std, generator=generator)

    def __repr__(self) -> str:
        return f"SeededNormal({self.std}, seed={self.seed}, name={self.name!r})"


def seeded_init(table: ParamPlan, seed: int, name: str) -> SeededInit:
    """The ``init_fn`` of a planned table: its U(lo, hi) bounds or its :class:`NormalInit`."""
    if isinstance(table.init, NormalInit):
        return SeededNormal(table.init.std, seed, name)
    return SeededUniform(*table.bounds, seed, name)


def _pool(values: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None,
          mode: str) -> torch.Tensor:
    """Pool per-id vectors (N, D) into per-sample vectors (B, D) with ``nn.EmbeddingBag``'s
    semantics (an empty bag gives zeros); a weight scales its id's vector once."""
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=values.device)
    torch.cumsum(lengths.long(), 0, out=offsets[1:])
    positions = torch.arange(values.shape[0], device=values.device)
    return F.embedding_bag(positions, values, offsets, mode=mode, per_sample_weights=weights,
                           include_last_offset=True)


def _by_table(kt: KeyedTensor, table_keys: dict[str, tuple[str, ...]]
              ) -> dict[tuple[str, ...], torch.Tensor]:
    """A pooled KeyedTensor's columns (B, L W) by the L keys of a feature's table (one split,
    whose backward is one concatenation; L keys in a row, as every table lists them)."""
    groups: list[tuple[str, ...]] = []
    widths: list[int] = []
    for key, width in zip(kt.keys(), kt.length_per_key(), strict=True):
        group = table_keys[key]
        if groups and groups[-1] == group:
            widths[-1] += width
        else:
            groups.append(group)
            widths.append(width)
    if len(set(groups)) < len(groups):
        raise ValueError(f"TorchRec returned the pooled keys of a table apart: {kt.keys()}")
    return dict(zip(groups, kt.values().split(widths, dim=1), strict=True))


def _split(features: KeyedJaggedTensor
           ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(values, lengths (B,), weights or None) of every key; unlike ``KJT.to_dict`` it takes
    an empty batch (a rank's share of a short last batch)."""
    keys, batch = features.keys(), features.stride()
    lengths = features.lengths().view(len(keys), batch)
    counts = lengths.sum(1).tolist() if batch else [0] * len(keys)
    values = features.values().split(counts)
    w = features.weights_or_none()
    weights = w.split(counts) if w is not None else [None] * len(keys)
    return {k: (v, n, x) for k, v, n, x in zip(keys, values, lengths, weights, strict=True)}


class TorchRecEmbeddingCollection(nn.Module):
    """F categorical features embedded with partition tables that are stock TorchRec tables.

    Takes a ``KeyedJaggedTensor`` keyed by feature name and returns a ``KeyedTensor`` with one
    D-wide pooled vector per feature (k, keyed ``<feature>_<j>``, under scheme ``feature``).
    Each feature is built from its :func:`~compemb.spec.plan_feature` plan, as in the local
    :class:`~compemb.embeddings.collection.EmbeddingBagCollection`: same tables, same init
    bounds (TorchRec's ``init_fn``), same path functions (the per-feature module's own).

    Each batch, the ids of every feature are mapped to their partitions' buckets (exact int64)
    and sent as one KeyedJaggedTensor keyed by table name. Tables whose operation commutes
    with the pooling (full, hashing, concat, add with sum or mean; feature generation) are
    pooled by ``self.pooled`` (an ``EmbeddingBagCollection``) and combined afterwards; the
    others (mult, path-based, and any max pooling) are looked up unpooled by ``self.unpooled``
    (one ``EmbeddingCollection`` per width), composed per id, then pooled, so a per-sample
    weight scales the composed vector once. Path functions stay ordinary modules
    (data-parallel under DMP).

    Table names are ``<feature>__<j>``: feature name and index in the plan's tables; a table
    several features read (ROBE-Z's array) is one table named by its shared plan (``robe``),
    whose ``feature_names`` list each reader's ``<feature>__<j>``.
    :meth:`local_state_dict` renames a state dict to the local collection's feature keys.

    Args:
        cardinalities: n of each feature.
        embedding_dim: D.
        spec: how to embed every feature.
        feature_names: the input keys; default ``f0, f1, ...``.
        weighted: inputs carry per-sample weights (KJT ``weights``); sum pooling only.
        counts: each feature's training-split category counts, for specs that need them
            (``spec.needs_counts``: frequency order, hot rows).
        plans: the features' plans, when already made (e.g. a local collection's ``plans``,
            frequency maps included); instead of ``counts``.
        one_hot: the first ``one_hot`` features hold exactly one id per sample (a dataset's
            single-valued features): unweighted, their mult and path tables are looked up
            pooled too (a pooled one-id bag is the row itself), which skips the unpooled
            collection. Checked on every batch.
        validate: check every id against its feature's n before any lookup (FBGEMM would
            clamp an id >= n to row 0 silently); ``False`` for inputs checked upstream.
        seed: seeds every table's init (:class:`SeededUniform`, :class:`SeededNormal`).
        device: where the tables are built; ``"meta"`` builds them without memory, for
            ``DistributedModelParallel`` to allocate and initialize only each rank's shards
            (path functions are then built on the CPU).

    >>> trc = TorchRecEmbeddingCollection([1000, 50], 16, EmbeddingSpec("qr", collisions=4))
    >>> kt = trc(ids_to_kjt(torch.tensor([[3, 7], [999, 49]]), trc.feature_names))
    >>> kt.keys(), kt.values().shape
    (['f0', 'f1'], torch.Size([2, 32]))
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        embedding_dim: int,
        spec: EmbeddingSpec,
        *,
        feature_names: Sequence[str] | None = None,
        weighted: bool = False,
        counts: Sequence[np.ndarray] | None = None,
        plans: Sequence[FeaturePlan] | None = None,
        one_hot: int = 0,
        validate: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        trec = require_torchrec()
        if len(cardinalities) == 0:
            raise ValueError("TorchRecEmbeddingCollection needs at least one feature")
        names = [f"f{i}" for i in range(len(cardinalities))] if feature_names is None \
            else [str(n) for n in feature_names]
        if len(names) != len(cardinalities) or len(set(names)) != len(names):
            raise ValueError(f"need {len(cardinalities)} distinct feature names, got {names}")
        if weighted and spec.mode != "sum":
            raise ValueError(f"per-sample weights need mode 'sum', the spec's is {spec.mode!r}")
        self.cardinalities = tuple(int(n) for n in cardinalities)
        self.embedding_dim = embedding_dim
        self.spec = spec
        self.feature_names = tuple(names)
        self.weighted = weighted
        self.validate = validate
        if not 0 <= one_hot <= len(names):
            raise ValueError(f"one_hot must be in [0, {len(names)}], got {one_hot}")
        dev = torch.device("cpu") if device is None else torch.device(device)
        routes, pooled_cfgs, unpooled_cfgs = [], [], {}
        # The data-parallel parts of features (path functions), by feature name.
        self.paths = nn.ModuleDict()
        pooling = trec.PoolingType.MEAN if spec.mode == "mean" else trec.PoolingType.SUM
        if plans is None:
            plans = plan_collection(self.cardinalities, embedding_dim, spec, counts=counts)
        if len(plans) != len(names):
            raise ValueError(f"{len(plans)} plans for {len(names)} features")
        shared_cfgs: dict[str, dict[str, Any]] = {}  # tables several features read
        # a one-hot feature's pooled rows are its rows: combined after pooling alike
        decided = [(route, (f < one_hot and not weighted)
                    or (spec.mode != "max" and route.pooled))
                   for f, route in enumerate(p.scheme.torchrec(p, dev) for p in plans)]
        # a table several features read is read one way: per id if any of them needs it
        per_id = {p.shared.key for p, (_, pooled) in zip(plans, decided, strict=True)
                  if p.shared is not None and not pooled}
        for f, (name, plan, (route, pooled)) in enumerate(zip(names, plans, decided,
                                                               strict=True)):
            pooled = pooled and (plan.shared is None or plan.shared.key not in per_id)
            tables = _table_names(name, plan)
            split = _rows_per_id(route, len(tables), dev) \
                if pooled and route.lookup is not None else ()
            outputs = tuple(f"{name}_{j}" for j in range(route.outputs)) \
                if route.outputs > 1 else (name,)
            r = FeatureRoute(name, f, plan, tables, pooled, outputs, route, f < one_hot, split)
            routes.append(r)
            if route.module is not None:
                self.paths[name] = route.module
            for t, keys, table in zip(r.tables, r.table_keys, r.table_plans, strict=True):
                common = {"num_embeddings": table.rows, "embedding_dim": table.width, "name": t,
                          "feature_names": list(keys), "init_fn": seeded_init(table, seed, t)}
                if plan.shared is not None:
                    cfg = shared_cfgs.setdefault(t, {"pooled": pooled, **common,
                                                     "feature_names": []})
                    cfg["feature_names"].extend(keys)
                    continue
                if pooled:
                    pooled_cfgs.append(trec.EmbeddingBagConfig(pooling=pooling, **common))
                else:
                    unpooled_cfgs.setdefault(table.width, []).append(
                        trec.EmbeddingConfig(**common))
        for cfg in shared_cfgs.values():
            if cfg.pop("pooled"):
                pooled_cfgs.append(trec.EmbeddingBagConfig(pooling=pooling, **cfg))
            else:
                unpooled_cfgs.setdefault(cfg["embedding_dim"], []).append(
                    trec.EmbeddingConfig(**cfg))
        self.routes = tuple(routes)
        # each pooled lookup key -> the keys of its feature's table (L when split)
        self._table_keys = {k: keys for r in routes if r.pooled for keys in r.table_keys
                            for k in keys}  # fmt: skip
        # Kept apart from the modules, which DMP replaces by sharded ones.
        self.table_shapes = {t: (table.rows, table.width) for r in routes
                             for t, table in zip(r.tables, r.table_plans, strict=True)}
        self.pooled = trec.EmbeddingBagCollection(pooled_cfgs, is_weighted=weighted, device=dev) \
            if pooled_cfgs else None
        self.unpooled = nn.ModuleDict({
            f"d{d}": trec.EmbeddingCollection(cfgs, device=dev) for d, cfgs in unpooled_cfgs.items()
        })  # fmt: skip

    @property
    def output_names(self) -> tuple[str, ...]:
        """The output keys, in order: F_out of them."""
        return tuple(o for r in self.routes for o in r.outputs)

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def named_tables(self) -> dict[str, torch.Tensor]:
        """Every table's weight by TorchRec table name (before sharding)."""
        out = {}
        if self.pooled is not None:
            out.update({t: m.weight for t, m in self.pooled.embedding_bags.items()})
        for ec in self.unpooled.values():
            out.update({t: m.weight for t, m in ec.embeddings.items()})
        return out

    def table_bytes(self) -> dict[str, int]:
        """Bytes of each table (float32), by table name."""
        return {t: 4 * rows * width for t, (rows, width) in self.table_shapes.items()}

    def state_key_map(self) -> dict[str, str]:
        """This collection's state-dict keys -> the local collection's (``features.<f>.<name>``,
        the per-feature module's keys; ``shared.<key>.<name>`` for shared tables), tables and
        path functions alike."""
        out = {}
        width = {t: w for t, (_, w) in self.table_shapes.items()}
        for r in self.routes:
            for t, local in zip(r.tables, r.local_keys, strict=True):
                where = f"pooled.embedding_bags.{t}" if r.pooled \
                    else f"unpooled.d{width[t]}.embeddings.{t}"
                out[f"{where}.weight"] = local
            if r.name in self.paths:  # the data-parallel module: dense parts and id maps
                for p in (*r.plan.dense, *r.plan.maps):
                    out[f"paths.{r.name}.{p.name}"] = f"features.{r.index}.{p.name}"
        return out

    def local_state_dict(self, state: dict[str, torch.Tensor], prefix: str = ""
                         ) -> dict[str, torch.Tensor]:
        """A state dict of this collection (keys under ``prefix``, whole tables) renamed for
        the local collection."""
        return {local: state[prefix + own] for own, local in self.state_key_map().items()}

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Embed a batch: a KJT keyed by feature name (B samples) -> KeyedTensor (B, F_out * D)."""
        trec = require_torchrec()
        batch = features.stride()
        if batch == 0:
            # TorchRec's sharded lookups fail on an empty batch (a rank's share of a short last
            # batch), and every rank must join the collectives: look up one padding sample (id
            # 0 everywhere) and drop it, so its gradient is zero.
            n = len(features.keys())
            pad = trec.KeyedJaggedTensor(
                keys=features.keys(), values=features.values().new_zeros(n),
                lengths=features.lengths().new_ones(n), stride=1,
                weights=torch.zeros(n) if self.weighted else None,
            )  # fmt: skip
            kt = self(pad)
            return trec.KeyedTensor(kt.keys(), kt.length_per_key(), kt.values()[:0])
        jts = _split(features)
        if self.validate:
            self._check(jts)
        pooled_in: dict[str, list] = {"keys": [], "values": [], "lengths": [], "weights": []}
        unpooled_in: dict[int, dict[str, list]] = {}
        rest: dict[str, tuple[torch.Tensor, ...]] = {}
        for r in self.routes:
            ids, lengths, weights = jts[r.name]
            ids = ids.long()
            if r.route.lookup is None:
                buckets = r.plan.partitions.buckets(ids)
                buckets, rest[r.name] = buckets[: len(r.tables)], buckets[len(r.tables):]
            else:  # L rows per id, each id's together: a sample's L times as many rows
                looked = r.route.lookup(ids)
                buckets, rest[r.name] = looked[: len(r.tables)], tuple(looked[len(r.tables):])
            for keys, table, b in zip(r.table_keys, r.table_plans, buckets, strict=True):
                if r.pooled:  # L keys of one-id bags when split: each key's ids in turn
                    pooled_in["keys"].extend(keys)
                    pooled_in["values"].append(b.t().reshape(-1))
                    pooled_in["lengths"].append(lengths.repeat(len(keys)))
                    if self.weighted:
                        pooled_in["weights"].append(weights.repeat(len(keys)))
                    continue
                dest = unpooled_in.setdefault(table.width,
                                              {"keys": [], "values": [], "lengths": []})
                dest["keys"].extend(keys)
                dest["values"].append(b.reshape(-1))
                dest["lengths"].append(lengths if b.dim() == 1 else lengths * b.shape[1])
        pooled: dict[tuple[str, ...], torch.Tensor] = {}  # (B, L W) by a table's L keys
        if pooled_in["keys"]:
            kjt = trec.KeyedJaggedTensor(
                keys=pooled_in["keys"], values=torch.cat(pooled_in["values"]),
                lengths=torch.cat(pooled_in["lengths"]),
                weights=torch.cat(pooled_in["weights"]) if self.weighted else None,
                stride=batch,
            )  # fmt: skip
            pooled = _by_table(self.pooled(kjt), self._table_keys)
        rows: dict[str, torch.Tensor] = {}
        for width, inputs in unpooled_in.items():
            kjt = trec.KeyedJaggedTensor(
                keys=inputs["keys"], values=torch.cat(inputs["values"]),
                lengths=torch.cat(inputs["lengths"]), stride=batch,
            )  # fmt: skip
            rows.update({t: jt.values() for t, jt in self.unpooled[f"d{width}"](kjt).items()})
        outs = []
        for r in self.routes:
            module = self.paths[r.name] if r.name in self.paths else None
            if r.pooled:  # an id's L rows together, as unpooled: (B L, W)
                looked = [pooled[k] if len(k) == 1 else pooled[k].reshape(-1, t.width)
                          for k, t in zip(r.table_keys, r.table_plans, strict=True)]
            else:
                looked = [rows[k] for k in r.keys]
            parts = r.route.combine(looked, rest[r.name], module)
            if not r.pooled:
                _, lengths, weights = jts[r.name]
                parts = [_pool(p, lengths, weights, self.spec.mode) for p in parts]
            outs.extend(parts)
        if len(outs) != self.num_outputs:
            raise ValueError(f"the schemes' TorchRec routes gave {len(outs)} vectors per sample, "
                             f"their plans promise {self.num_outputs} ({self.output_names})")
        return trec.KeyedTensor.from_tensor_list(list(self.output_names), outs)

    def _check(self, jts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
               ) -> None:
        """Every id in 0..n-1 and one id per sample of a one-hot feature, before any lookup.

        Raises:
            IndexError: naming the feature, the id and its position (sample and index in the
                feature's values).
            ValueError: a one-hot feature's sample holding another number of ids.
        """
        # One host sync for the whole batch (a GPU waits once); the culprit is looked for
        # only when something is wrong.
        flags = []
        for r in self.routes:
            ids, lengths, _ = jts[r.name]
            if r.one_hot:
                flags.append((lengths != 1).any())
            if ids.numel():
                low, high = torch.aminmax(ids)
                flags.append((low < 0) | (high >= self.cardinalities[r.index]))
        if not flags or not bool(torch.stack(flags).any()):
            return
        for r in self.routes:
            ids, lengths, _ = jts[r.name]
            n = self.cardinalities[r.index]
            if r.one_hot and bool((lengths != 1).any()):
                b = int((lengths != 1).nonzero()[0])
                raise ValueError(
                    f"TorchRecEmbeddingCollection: feature {r.name!r} is one-hot, but sample {b} "
                    f"holds {int(lengths[b])} ids"
                )
            bad = (ids < 0) | (ids >= n)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                sample = int(torch.searchsorted(lengths.cumsum(0), i, right=True))
                raise IndexError(
                    f"TorchRecEmbeddingCollection: feature {r.name!r} id {int(ids[i])} (sample "
                    f"{sample}, position {i} of its values) is out of range 0..{n - 1}"
                )


class TorchRecSparseArch(nn.Module):
    """A :class:`TorchRecEmbeddingCollection` behind the local collection's call: a model's
    ``sparse_arch`` that DMP can shard.

    Forward: ``(ids (B, F1), bags) -> (B, F_out, D)``, as
    :class:`~compemb.embeddings.collection.EmbeddingBagCollection`. Its state dict converts to
    and from the local collection's (feature keys) with :meth:`local_state_dict` and
    :meth:`load_local_state_dict`.

    The arguments are :class:`TorchRecEmbeddingCollection`'s; ``one_hot`` is typically the
    number of single-valued features (the width of ``ids``).
    """

    def __init__(self, cardinalities: Sequence[int], embedding_dim: int, spec: EmbeddingSpec, *,
                 plans: Sequence[FeaturePlan] | None = None,
                 counts: Sequence[np.ndarray] | None = None, one_hot: int = 0,
                 validate: bool = True, seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__()
        self.collection = TorchRecEmbeddingCollection(
            cardinalities, embedding_dim, spec, plans=plans, counts=counts, one_hot=one_hot,
            validate=validate, seed=seed, device=device)  # fmt: skip
        self.cardinalities = self.collection.cardinalities
        self.embedding_dim = embedding_dim
        self.spec = spec

    @property
    def num_outputs(self) -> int:
        return self.collection.num_outputs

    def local_state_dict(self, state: dict[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        """This module's state (or ``state``, with its keys) under the local collection's keys."""
        if state is None:
            state = {k: v.detach() for k, v in self.state_dict().items()}
        return self.collection.local_state_dict(state, prefix="collection.")

    def load_local_state_dict(self, local: dict[str, torch.Tensor]) -> None:
        """Load a local collection's state dict (before sharding)."""
        state = {f"collection.{own}": local[key]
                 for own, key in self.collection.state_key_map().items()}  # fmt: skip
        self.load_state_dict(state)

    def forward(self, ids: torch.Tensor,
                bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
        """Embed a batch: ids (B, F1) and F - F1 bags -> (B, F_out, D)."""
        kjt = ids_to_kjt(ids, self.collection.feature_names, bags)
        return keyed_to_batch(self.collection(kjt), self.embedding_dim)


def ids_to_kjt(
    ids: torch.Tensor,
    names: Sequence[str],
    bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    weights: Sequence[torch.Tensor] | None = None,
) -> KeyedJaggedTensor:
    """The local collection's input as a KeyedJaggedTensor.

    Args:
        ids: (B, F1) one id per single-valued feature (the first F1 names).
        bags: the other features as ``(values (N,), offsets (B,))``, ``nn.EmbeddingBag`` style.
        weights: per-sample weights of every feature, in order: (B,) for a single-valued
            feature, (N,) for a bag; None for an unweighted KJT.
    """
    trec = require_torchrec()
    batch, single = ids.shape
    values = [ids.T.reshape(-1).long()]
    lengths = [torch.ones(batch * single, dtype=torch.long, device=ids.device)]
    for v, offsets in bags:
        ends = torch.cat([offsets[1:], offsets.new_tensor([v.numel()])])
        values.append(v.long())
        lengths.append((ends - offsets).long())
    w = None if weights is None else torch.cat([x.reshape(-1) for x in weights])
    return trec.KeyedJaggedTensor(keys=list(names), values=torch.cat(values),
                                  lengths=torch.cat(lengths), weights=w, stride=batch)


def keyed_to_batch(kt: KeyedTensor, embedding_dim: int) -> torch.Tensor:
    """A KeyedTensor of D-wide vectors as the local collection's output: (B, F_out, D)."""
    values = kt.values()
    return values.view(values.shape[0], values.shape[1] // embedding_dim, embedding_dim)


__all__ = [
    "FeatureRoute",
    "SeededInit",
    "SeededNormal",
    "SeededUniform",
    "TorchRecEmbeddingCollection",
    "TorchRecSparseArch",
    "ids_to_kjt",
    "keyed_to_batch",
    "require_torchrec",
]
