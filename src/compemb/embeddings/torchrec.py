"""Compositional embeddings on TorchRec: every partition table is a stock TorchRec table, so
``DistributedModelParallel``'s default sharders shard it; the id remapping and the composition
run data-parallel around the tables.

TorchRec is optional (the ``torchrec`` extra); this module imports it only when used.

Letters: B samples, F features, F_out output vectors (k per feature-generation feature), N ids
of one feature in the batch, D output width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.factory import EmbeddingSpec, make_embedding_bag, resolve_spec
from compemb.partitions import PartitionSet

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
        spec: the resolved spec (small features fall back to full).
        tables: TorchRec table names, in partition order (path: the first table only).
        widths: each table's width.
        pooled: tables in the pooled EmbeddingBagCollection and combined after pooling (the
            operation commutes with the pooling); otherwise looked up unpooled, composed per
            id, then pooled here.
        outputs: output keys: the feature's name, or k of them under scheme ``feature``.
    """

    name: str
    spec: EmbeddingSpec
    tables: tuple[str, ...]
    widths: tuple[int, ...]
    pooled: bool
    outputs: tuple[str, ...]


def _tables_of(module: nn.Module) -> list[torch.Tensor]:
    """A per-feature module's embedding tables in partition order (path: the first table)."""
    own = getattr(module, "weights", None)
    return list(own) if own is not None else [module.weight]


def _combine(operation: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """omega over k (N, D_j) parts -> (N, D)."""
    if operation == "concat":
        return torch.cat(list(parts), dim=-1)
    out = parts[0]
    for p in parts[1:]:
        out = out + p if operation == "add" else out * p
    return out


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def _pool(values: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None,
          mode: str) -> torch.Tensor:
    """Pool per-id vectors (N, D) into per-sample vectors (B, D) with ``nn.EmbeddingBag``'s
    semantics (an empty bag gives zeros); a weight scales its id's vector once."""
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=values.device)
    torch.cumsum(lengths.long(), 0, out=offsets[1:])
    positions = torch.arange(values.shape[0], device=values.device)
    return F.embedding_bag(positions, values, offsets, mode=mode, per_sample_weights=weights,
                           include_last_offset=True)


class TorchRecEmbeddingCollection(nn.Module):
    """F categorical features embedded with partition tables that are stock TorchRec tables.

    Takes a ``KeyedJaggedTensor`` keyed by feature name and returns a ``KeyedTensor`` with one
    D-wide pooled vector per feature (k, keyed ``name_j``, under scheme ``feature``). Each
    feature gets what :func:`~compemb.embeddings.factory.resolve_spec` gives it, as in the
    local :class:`~compemb.embeddings.collection.EmbeddingBagCollection`, and starts from the
    same values: its tables are copied from the per-feature module of
    :func:`~compemb.embeddings.factory.make_embedding_bag`.

    Each batch, the ids of every feature are mapped to their partitions' buckets (exact int64)
    and sent as one KeyedJaggedTensor keyed by table name. Tables whose operation commutes
    with the pooling (full, hashing, concat, add with sum or mean; feature generation) are
    pooled by ``self.pooled`` (an ``EmbeddingBagCollection``) and combined afterwards; the
    others (mult, path-based, and any max pooling) are looked up unpooled by ``self.unpooled``
    (one ``EmbeddingCollection`` per width), composed per id, then pooled, so a per-sample
    weight scales the composed vector once. Path functions stay ordinary modules
    (data-parallel under DMP).

    Table names are ``<feature>__<j>``: feature name and partition index.

    Args:
        cardinalities: n of each feature.
        embedding_dim: D.
        spec: how to embed every feature.
        feature_names: the input keys; default ``f0, f1, ...``.
        weighted: inputs carry per-sample weights (KJT ``weights``); sum pooling only.

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
        # Set to 1/world_size by the sharding code: TorchRec sums table gradients over ranks,
        # DDP averages the rest, and a step must equal a single process's mean-loss step.
        self.grad_scale = 1.0
        routes, pooled_cfgs, unpooled_cfgs, initial = [], [], {}, {}
        self.paths = nn.ModuleDict()
        self._partitions: dict[str, PartitionSet | None] = {}
        pooling = trec.PoolingType.MEAN if spec.mode == "mean" else trec.PoolingType.SUM
        for name, n in zip(names, self.cardinalities, strict=True):
            s = resolve_spec(spec, n)
            module = make_embedding_bag(n, embedding_dim, s, validate=False)
            tables = _tables_of(module)
            pooled = spec.mode != "max" and (
                s.scheme in ("full", "hash", "feature")
                or (s.scheme in ("qr", "mixed_radix", "crt") and s.operation in ("concat", "add"))
            )
            table_names = tuple(f"{name}__{j}" for j in range(len(tables)))
            widths = tuple(int(t.shape[1]) for t in tables)
            outputs = tuple(f"{name}_{j}" for j in range(len(tables))) \
                if s.scheme == "feature" else (name,)
            routes.append(FeatureRoute(name, s, table_names, widths, pooled, outputs))
            self._partitions[name] = getattr(module, "partitions", None)
            if s.scheme == "path":
                self.paths[name] = module.paths
            for t, w in zip(table_names, tables, strict=True):
                initial[t] = w.detach()
                if pooled:
                    pooled_cfgs.append(trec.EmbeddingBagConfig(
                        num_embeddings=w.shape[0], embedding_dim=w.shape[1], name=t,
                        feature_names=[t], pooling=pooling))  # fmt: skip
                else:
                    unpooled_cfgs.setdefault(int(w.shape[1]), []).append(trec.EmbeddingConfig(
                        num_embeddings=w.shape[0], embedding_dim=w.shape[1], name=t,
                        feature_names=[t]))  # fmt: skip
        self.routes = tuple(routes)
        # Kept apart from the modules, which DMP replaces by sharded ones.
        self.table_shapes = {t: (int(w.shape[0]), int(w.shape[1])) for t, w in initial.items()}
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.pooled = trec.EmbeddingBagCollection(pooled_cfgs, is_weighted=weighted, device=dev) \
            if pooled_cfgs else None
        self.unpooled = nn.ModuleDict({
            f"d{d}": trec.EmbeddingCollection(cfgs, device=dev) for d, cfgs in unpooled_cfgs.items()
        })  # fmt: skip
        self.paths.to(dev)
        if dev.type != "meta":
            with torch.no_grad():
                for t, w in self.named_tables().items():
                    w.copy_(initial[t])

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

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Embed a batch: a KJT keyed by feature name (B samples) -> KeyedTensor (B, F_out * D)."""
        trec = require_torchrec()
        jts = features.to_dict()
        pooled_in: dict[str, list] = {"keys": [], "values": [], "lengths": [], "weights": []}
        unpooled_in: dict[int, dict[str, list]] = {}
        extra: dict[str, tuple[torch.Tensor, ...]] = {}
        for r in self.routes:
            jt = jts[r.name]
            ids, lengths = jt.values().long(), jt.lengths()
            parts = self._partitions[r.name]
            buckets = parts.buckets(ids) if parts is not None else (ids,)
            if r.spec.scheme == "path":
                buckets, extra[r.name] = buckets[:1], buckets[1:]
            for t, width, b in zip(r.tables, r.widths, buckets, strict=True):
                dest = pooled_in if r.pooled else unpooled_in.setdefault(
                    width, {"keys": [], "values": [], "lengths": []})
                dest["keys"].append(t)
                dest["values"].append(b)
                dest["lengths"].append(lengths)
                if r.pooled and self.weighted:
                    pooled_in["weights"].append(jt.weights())
        pooled: dict[str, torch.Tensor] = {}
        if pooled_in["keys"]:
            kjt = trec.KeyedJaggedTensor(
                keys=pooled_in["keys"], values=torch.cat(pooled_in["values"]),
                lengths=torch.cat(pooled_in["lengths"]),
                weights=torch.cat(pooled_in["weights"]) if self.weighted else None,
            )  # fmt: skip
            kt = self.pooled(kjt)
            values = _GradScale.apply(kt.values(), self.grad_scale)
            pooled = dict(zip(kt.keys(), values.split(kt.length_per_key(), dim=1), strict=True))
        rows: dict[str, torch.Tensor] = {}
        for width, spec_in in unpooled_in.items():
            kjt = trec.KeyedJaggedTensor(
                keys=spec_in["keys"], values=torch.cat(spec_in["values"]),
                lengths=torch.cat(spec_in["lengths"]),
            )  # fmt: skip
            for t, jt in self.unpooled[f"d{width}"](kjt).items():
                rows[t] = _GradScale.apply(jt.values(), self.grad_scale)
        outs = []
        for r in self.routes:
            if r.pooled:
                parts = [pooled[t] for t in r.tables]
                outs.extend(parts if r.spec.scheme == "feature"
                            else [_combine(r.spec.operation, parts)])
                continue
            jt = jts[r.name]
            parts = [rows[t] for t in r.tables]
            if r.spec.scheme == "feature":
                outs.extend(_pool(p, jt.lengths(), jt.weights_or_none(), r.spec.mode)
                            for p in parts)
                continue
            if r.spec.scheme == "path":
                composed = self._path(r.name, parts[0], extra[r.name])
            else:
                composed = _combine(r.spec.operation, parts)
            outs.append(_pool(composed, jt.lengths(), jt.weights_or_none(), r.spec.mode))
        return trec.KeyedTensor.from_tensor_list(list(self.output_names), outs)

    def _path(self, name: str, z: torch.Tensor, buckets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Apply a path feature's per-bucket functions to its first-table rows (N, D)."""
        for bucket, layers in zip(buckets, self.paths[name], strict=True):
            if len(layers) == 1:
                z = layers[0](z, bucket)
            else:
                z = layers[1](torch.relu(layers[0](z, bucket)), bucket)
        return z


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
                                  lengths=torch.cat(lengths), weights=w)


def keyed_to_batch(kt: KeyedTensor, embedding_dim: int) -> torch.Tensor:
    """A KeyedTensor of D-wide vectors as the local collection's output: (B, F_out, D)."""
    values = kt.values()
    return values.view(values.shape[0], -1, embedding_dim)
