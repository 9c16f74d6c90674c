"""TorchRec sharding of a model's :class:`~compemb.embeddings.torchrec.TorchRecEmbeddingCollection`:
the plan compemb chooses, DistributedModelParallel with fused optimizers, and the sharded run
that training, evaluation and checkpoints use.

No rank holds a whole model: training builds the tables on the meta device and DMP allocates
and initializes each rank's shards only (:class:`ShardedTraining`); checkpoints are written
shard by shard (:mod:`compemb.training.sharded_checkpoint`) and evaluation runs through the
sharded model on every rank.

Plan: partition tables above ``small_bytes`` are sharded (table-wise or column-wise; row-wise
too on CUDA, where FBGEMM offers it); smaller ones (remainder tables, tables of small
features) are data-parallel, as are the path functions and the dense model. Sharded tables
train with FBGEMM's fused optimizers, applied in the backward pass; everything else with
compemb's optimizer of the same name.

Gradients: DDP averages over ranks, and so does TorchRec (its all-to-all backward divides by
the world size), so with each rank's loss scaled as the training loop does for DDP, a step on
R ranks equals a single process's step on the whole batch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from compemb.embeddings.torchrec import (
    TorchRecEmbeddingCollection,
    TorchRecSparseArch,
    require_torchrec,
)

# Tables of at most this many bytes are replicated (data-parallel) rather than sharded: sharding
# a few kilobytes buys nothing and costs an all-to-all.
SMALL_BYTES = 1 << 20


def to_torchrec(model: nn.Module) -> nn.Module:
    """Replace ``model.sparse_arch`` (the local collection) by a
    :class:`~compemb.embeddings.torchrec.TorchRecSparseArch`
    holding the same weights; the rest of the model is untouched. Returns the model."""
    local = model.sparse_arch
    arch = TorchRecSparseArch(local.cardinalities, local.embedding_dim, local.spec,
                              plans=local.plans, validate=getattr(local, "validate", True))
    arch.load_local_state_dict(local.state_dict())
    model.sparse_arch = arch
    return model


def local_model_state(state: dict[str, torch.Tensor], arch: TorchRecSparseArch,
                      prefix: str = "sparse_arch.") -> dict[str, torch.Tensor]:
    """A full state dict of a model whose ``sparse_arch`` is ``arch`` (unsharded, e.g. after
    :func:`to_torchrec`) renamed to the same model with the local collection, which loads it."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in arch.local_state_dict(own).items()})
    return out


def sharded_model_state(local: dict[str, torch.Tensor], arch: TorchRecSparseArch,
                        prefix: str = "sparse_arch.") -> dict[str, torch.Tensor]:
    """The inverse of :func:`local_model_state`: a checkpoint's model state for the sharded
    model (load with :func:`load_full_state_dict`)."""
    out = {k: v for k, v in local.items() if not k.startswith(prefix)}
    for own, key in arch.collection.state_key_map().items():
        out[f"{prefix}collection.{own}"] = local[prefix + key]
    return out


def fused_optimizer_params(optimizer: str, lr: float, *, eps: float = 1e-10) -> dict[str, Any]:
    """FBGEMM fused-optimizer settings for the sharded tables, matching compemb's optimizer.

    exact Adagrad (``adagrad``), exact row-wise Adagrad (``rowwise_adagrad``) and SGD (``sgd``)
    train on CPU and CUDA; eps is torch's Adagrad default, so the sharded and local updates agree.

    Raises:
        ValueError: for other optimizers: FBGEMM's Adam, LAMB and row-wise Adam kernels are
            CUDA-only, and there is no AMSGrad kernel.
    """
    require_torchrec()
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    kinds = {"adagrad": EmbOptimType.EXACT_ADAGRAD,
             "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
             "sgd": EmbOptimType.EXACT_SGD}  # fmt: skip
    if optimizer not in kinds:
        raise ValueError(
            f"train.sharding=torchrec trains the sharded tables with FBGEMM's fused optimizers: "
            f"{', '.join(kinds)}; {optimizer!r} has no fused kernel on CPU (FBGEMM's Adam and "
            f"LAMB are CUDA-only, AMSGrad has none). Use train.sharding=replicate for it"
        )
    params: dict[str, Any] = {"optimizer": kinds[optimizer], "learning_rate": lr}
    if optimizer != "sgd":
        params["eps"] = eps
    return params


def find_collection(model: nn.Module) -> TorchRecEmbeddingCollection:
    """The model's one TorchRec collection."""
    found = [m for m in model.modules() if isinstance(m, TorchRecEmbeddingCollection)]
    if len(found) != 1:
        raise ValueError(f"expected one TorchRecEmbeddingCollection in the model, found "
                         f"{len(found)}")  # fmt: skip
    return found[0]


def sharding_types(
    collection: TorchRecEmbeddingCollection, device: torch.device, small_bytes: int = SMALL_BYTES
) -> dict[str, list[str]]:
    """Allowed sharding types of every table: the planner picks among them.

    Unpooled tables (EmbeddingCollection) are never data-parallel: TorchRec 1.8's
    data-parallel EmbeddingCollection returns wrong rows on CPU (or fails in split_with_sizes).
    Tables of a scheme that ``reclusters`` (CCE: its route's module rewrites them through
    ``recluster_table``) are table-wise only, so one rank holds each whole.

    Raises:
        ValueError: for an unpooled table whose width is not a multiple of 4.
    """
    pooled = {t for r in collection.routes if r.pooled for t in r.tables}
    reclustered = {t for r in collection.routes if r.plan.scheme.reclusters for t in r.tables}
    types = {}
    for t, nbytes in collection.table_bytes().items():
        width = collection.table_shapes[t][1]
        # FBGEMM's kernels take widths of a multiple of 4 only.
        if t in pooled and (nbytes <= small_bytes or width % 4) and t not in reclustered:
            types[t] = ["data_parallel"]
            continue
        if width % 4:
            route = next(r for r in collection.routes if t in r.tables)
            scheme, _ = route.plan.scheme.describe(route.plan.spec)
            raise ValueError(
                f"table {t} ({scheme}) is {width} wide: FBGEMM's kernels need a multiple of 4, "
                f"and an unpooled table cannot be data-parallel; choose embedding_dim and the "
                f"scheme's settings so that every table width is a multiple of 4 (concat splits "
                f"D among its tables; TT cores are r_(k-1) d_k r_k wide: an even rank when D "
                f"has even factors)"
            )
        types[t] = ["table_wise"]
        if t in reclustered:  # its owner reclusters it whole (ShardedTraining.recluster)
            continue
        # FBGEMM needs column shards of a multiple of 4 columns.
        if t in pooled and width % 8 == 0:
            types[t].append("column_wise")
        if device.type == "cuda":
            types[t] += ["row_wise", "table_row_wise"]
    return types


@dataclass
class Sharded:
    """A model under DistributedModelParallel.

    Attributes:
        model: the DMP-wrapped model (call it as the model; ``.module`` is the model).
        plan: TorchRec's ShardingPlan.
        collection: the TorchRec collection inside.
        summary: the plan as text, with memory per rank.
    """

    model: nn.Module
    plan: Any
    collection: TorchRecEmbeddingCollection
    summary: str

    def dense_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters not trained by a fused optimizer (dense model, data-parallel tables,
        path functions), by name."""
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        return list(in_backward_optimizer_filter(self.model.named_parameters()))

    def replicated_tables(self) -> list[nn.Parameter]:
        """The data-parallel tables among :meth:`dense_parameters` (row-indexed)."""
        names = set(self.collection.table_shapes)
        return [p for n, p in self.dense_parameters()
                if n.endswith(".weight") and n.rsplit(".", 2)[-2] in names]  # fmt: skip


def shard(
    model: nn.Module,
    device: torch.device,
    *,
    optimizer: str,
    lr: float,
    small_bytes: int = SMALL_BYTES,
) -> Sharded:
    """Shard ``model``'s TorchRec collection over the default process group with DMP.

    Tables built on the meta device are allocated and initialized by DMP, each rank its own
    shards (their ``init_fn``); otherwise the model keeps its current weights, copied into the
    shards (which needs them whole on every rank first). The process group must be
    initialized (world size 1 is fine).
    """
    require_torchrec()
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )

    world_size = dist.get_world_size()
    collection = find_collection(model)
    on_meta = any(p.is_meta for p in collection.parameters())
    initial = None if on_meta else {k: v.detach().clone() for k, v in model.state_dict().items()}
    fused = fused_optimizer_params(optimizer, lr)
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused),
                EmbeddingCollectionSharder(fused_params=fused)]  # fmt: skip
    constraints = {t: ParameterConstraints(sharding_types=types, min_partition=4)
                   for t, types in sharding_types(collection, device, small_bytes).items()}
    topology = Topology(world_size=world_size, compute_device=device.type)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    # FBGEMM's kernels draw a first init from the global RNG (by shard size, so differently
    # on each rank) before the tables' init_fn replaces it: keep the global RNG out of it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    if initial is not None:
        load_full_state_dict(dmp, initial)
    summary = describe_plan(plan, collection, world_size, optimizer)
    return Sharded(dmp, plan, collection, summary)


def _is_sharded(value: Any) -> bool:
    return hasattr(value, "local_shards")


def _shard_slices(value: Any) -> Iterable[tuple[torch.Tensor, tuple[slice, ...]]]:
    """A ShardedTensor's local shards with the slices of the full tensor they hold."""
    for s in value.local_shards():
        md = s.metadata
        yield s.tensor, tuple(slice(o, o + n) for o, n in
                              zip(md.shard_offsets, md.shard_sizes, strict=True))


def _whole_table(state: dict[str, Any], table: str, shape: tuple[int, int]
                 ) -> tuple[int, torch.Tensor | None]:
    """The rank that holds TorchRec table ``table`` whole, and the table if it is this rank.

    Raises:
        ValueError: when no rank holds it whole (split by rows or columns).
    """
    keys = [k for k in state if k.endswith((f".embeddings.{table}.weight",
                                            f".embedding_bags.{table}.weight"))]
    if len(keys) != 1:
        raise ValueError(f"table {table}: expected one state-dict entry, found {keys}")
    value = state[keys[0]]
    if not _is_sharded(value):  # data-parallel: every rank holds it
        return 0, value
    whole = [m for m in value.metadata().shards_metadata if tuple(m.shard_sizes) == shape]
    if not whole:
        raise ValueError(f"table {table} {shape} is split over ranks; reclustering needs it "
                         f"whole on one rank (table-wise sharding)")
    owner = whole[0].placement.rank()
    local = [s.tensor for s in value.local_shards() if tuple(s.metadata.shard_sizes) == shape]
    return owner, local[0] if local else None


def per_id_names(collection: TorchRecEmbeddingCollection) -> dict[str, str]:
    """The state-key ending of each table that one-hot features look up pooled, L rows per
    id as L one-id bags (ROBE, CCE, block MD, MD+QR), -> its name in checkpoints written
    when they were looked up per id (TorchRec's unpooled collection of its width)."""
    return {f".pooled.embedding_bags.{t}.weight":
            f".unpooled.d{collection.table_shapes[t][1]}.embeddings.{t}.weight"
            for r in collection.routes if r.split for t in r.tables}  # fmt: skip


def load_full_state_dict(dmp: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (the unsharded model's, or a single-file checkpoint's through
    :func:`sharded_model_state`) into the sharded model: each rank takes its shards."""
    with torch.no_grad():
        for k, v in dmp.state_dict().items():
            if _is_sharded(v):
                for tensor, where in _shard_slices(v):
                    tensor.copy_(state[k][where])
            else:
                v.copy_(state[k])


def load_full_optimizer_state(dmp: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy whole fused-optimizer tensors, keyed ``<parameter>/<state>`` (as single-file
    checkpoints of sharded runs before DCP kept them), into the fused optimizers' shards."""
    sd = dmp.fused_optimizer.state_dict()
    with torch.no_grad():
        for p, states in sd["state"].items():
            for s, value in states.items():
                if _is_sharded(value):
                    for tensor, where in _shard_slices(value):
                        tensor.copy_(state[f"{p}/{s}"][where])
                elif isinstance(value, torch.Tensor):
                    value.copy_(state[f"{p}/{s}"])
    dmp.fused_optimizer.load_state_dict(sd)


def describe_plan(plan: Any, collection: TorchRecEmbeddingCollection, world_size: int,
                  optimizer: str) -> str:
    """The plan as a table (one line per table) and the table memory on each rank, optimizer
    state included (Adagrad: one number per element; row-wise Adagrad: one per row)."""
    sizes = collection.table_shapes
    state = {"adagrad": lambda r, c: r * c, "rowwise_adagrad": lambda r, c: r,
             "sgd": lambda r, c: 0}.get(optimizer, lambda r, c: r * c)  # fmt: skip
    per_rank = [0] * world_size
    lines = [f"{'table':<24} {'rows x width':>16} {'sharding':<14} ranks"]
    for _, module_plan in sorted(plan.plan.items()):
        for t, p in sorted(module_plan.items()):
            rows, width = sizes[t]
            if p.sharding_type == "data_parallel":
                ranks = list(range(world_size))
                for r in ranks:
                    per_rank[r] += 4 * (rows * width + state(rows, width))
            else:
                ranks = []
                for shard in p.sharding_spec.shards:
                    r = shard.placement.rank()
                    n_rows, n_cols = shard.shard_sizes
                    per_rank[r] += 4 * (n_rows * n_cols + state(n_rows, n_cols))
                    ranks.append(r)
            lines.append(f"{t:<24} {f'{rows} x {width}':>16} {p.sharding_type:<14} {ranks}")
    lines.append("tables + optimizer state per rank: " + ", ".join(
        f"rank {r}: {b / 2**20:.2f} MiB" for r, b in enumerate(per_rank)))  # fmt: skip
    return "\n".join(lines)


def ensure_process_group() -> bool:
    """DMP needs a process group: start a one-rank gloo group when there is none (a run
    without torchrun). Returns whether it started one (then :func:`end_process_group` it)."""
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return True


def end_process_group(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class ShardedTraining:
    """A training run's model sharded by TorchRec and the optimizer of its unfused parameters.

    Nothing whole lives anywhere: the tables exist only as shards, evaluation runs through
    :attr:`net` on every rank, and :meth:`save` / :meth:`load` write and read each rank's
    shards (DCP), resharding to another world size on load.

    Attributes:
        sharded: the DMP-wrapped model and its plan.
        optimizer: compemb's optimizer for everything the fused optimizers do not train (the
            dense model, data-parallel tables, path functions).
    """

    sharded: Sharded
    optimizer: torch.optim.Optimizer

    @classmethod
    def prepare(cls, model: nn.Module, optimizer: str, lr: float, device: torch.device, *,
                verbose: bool = True) -> ShardedTraining:
        """Shard ``model`` (its embedding layer a TorchRecSparseArch, tables on the meta
        device for a run that must never hold them whole) and build the optimizer of its
        unfused parameters; print the plan if ``verbose``. The process group must exist
        (:func:`ensure_process_group`)."""
        from compemb.optim import make_optimizer

        sharded = shard(model, device, optimizer=optimizer, lr=lr)
        dense = [p for _, p in sharded.dense_parameters()]
        opt = make_optimizer(optimizer, dense, lr, tables=sharded.replicated_tables())
        if verbose:
            print(f"TorchRec sharding plan ({dist.get_world_size()} ranks):\n{sharded.summary}",
                  file=sys.stderr, flush=True)
        return cls(sharded, opt)

    @property
    def net(self) -> nn.Module:
        """The model to train and evaluate (DMP)."""
        return self.sharded.model

    def set_learning_rate(self, lr: float) -> None:
        """Train every parameter at ``lr`` from the next step: the dense optimizer's groups and
        FBGEMM's fused tables, which update inside backward with the rate TorchRec's fused
        optimizer hands them in its ``zero_grad`` (that is all it does there)."""
        fused = self.net.fused_optimizer
        for group in (*self.optimizer.param_groups, *fused.param_groups):
            group["lr"] = lr
        fused.zero_grad()

    def recluster(self, seed_of: Callable[[int], int]) -> None:
        """Recluster every feature whose route's data-parallel module can (CCE), collectively.

        Feature f (its index in the collection, as on the local path) gets seed
        ``seed_of(f)``. Its module merges every rank's seen ids; then for each of its tables
        the rank holding it (whole: such tables are table-wise) reclusters it in place through
        ``module.recluster_table`` and broadcasts what else that rewrote (``table_maps``: the
        assignment column and the hash) to every rank. No table leaves its rank. The fused
        optimizer's state is left as it is, as on the local path.

        Raises:
            ValueError: when such a table is not whole on one rank.
        """
        collection = self.sharded.collection
        state = self.net.state_dict()
        world = dist.get_world_size()

        def reduce(x: torch.Tensor) -> None:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)

        for r in collection.routes:
            if not r.plan.scheme.reclusters:
                continue
            module, seed = collection.paths[r.name], seed_of(r.index)
            module.merge_seen(reduce if world > 1 else None)
            for i, t in enumerate(r.tables):
                owner, local = _whole_table(state, t, collection.table_shapes[t])
                if local is not None:
                    module.recluster_table(i, local, seed)
                for view in module.table_maps(i):
                    buffer = view.contiguous()
                    if world > 1:  # as bytes: gloo has no 16-bit integers (uint16 maps)
                        dist.broadcast(buffer.view(torch.uint8), src=owner)
                    view.copy_(buffer)

    def _state(self) -> dict[str, Any]:
        """This rank's model and fused-optimizer state: ShardedTensors of its own shards,
        plain tensors for what every rank holds (DCP writes those once). A rank that holds no
        sharded table has no fused state (DCP would take an empty dict for a missing entry)."""
        fused = self.net.fused_optimizer.state_dict()["state"]
        return {"model": self.net.state_dict(), **({"fused": fused} if fused else {})}

    def save(self, root: Path, extra: dict[str, Any], *, keep: int = 1) -> Path:
        """A checkpoint under ``root`` (collective): every rank's shards, the dense optimizer
        and ``extra`` (rank 0's progress, RNG, config) once. Returns its folder."""
        from compemb.training import sharded_checkpoint

        return sharded_checkpoint.save(
            root, self._state(), {**extra, "optimizer": self.optimizer.state_dict()}, keep=keep)

    def load(self, path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
        """Restore a checkpoint folder written by :meth:`save` at any world size (collective);
        returns its ``extra``."""
        from compemb.training import sharded_checkpoint
        from compemb.training.checkpoint import restore

        state = self._state()
        sharded_checkpoint.load(path, state, per_id_names(self.sharded.collection))
        self.net.load_state_dict(state["model"])
        if "fused" in state:
            fused = self.net.fused_optimizer.state_dict()
            fused["state"] = state["fused"]
            self.net.fused_optimizer.load_state_dict(fused)
        extra = sharded_checkpoint.load_extra(path, device)
        restore(self.optimizer, extra, "optimizer", path / sharded_checkpoint.EXTRA)
        return extra

    def load_single_file(self, saved: dict[str, Any], path: Path) -> None:
        """Restore a single-file checkpoint of a sharded run written before DCP checkpoints
        (whole tables under the local collection's keys, ``fused_optimizer`` whole)."""
        from compemb.training.checkpoint import CheckpointError, restore

        arch = self.net.module.sparse_arch
        try:
            load_full_state_dict(self.net, sharded_model_state(saved["model"], arch))
            load_full_optimizer_state(self.net, saved["fused_optimizer"])
        except KeyError as err:
            raise CheckpointError(f"{path}: its model does not fit the configured one: "
                                  f"{err!r} is missing") from err  # fmt: skip
        restore(self.optimizer, saved, "optimizer", path)


__all__ = [
    "Sharded",
    "ShardedTraining",
    "describe_plan",
    "end_process_group",
    "ensure_process_group",
    "find_collection",
    "fused_optimizer_params",
    "load_full_optimizer_state",
    "load_full_state_dict",
    "local_model_state",
    "per_id_names",
    "shard",
    "sharded_model_state",
    "sharding_types",
    "to_torchrec",
]
