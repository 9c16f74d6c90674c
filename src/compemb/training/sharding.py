"""TorchRec sharding of a model's :class:`~compemb.embeddings.torchrec.TorchRecEmbeddingCollection`:
the plan compemb chooses, DistributedModelParallel with fused optimizers, and full (unsharded)
state for checkpoints.

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

import copy
import sys
from collections.abc import Iterable
from dataclasses import dataclass
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
    """Replace ``model.sparse_arch`` (the local collection) by a :class:`TorchRecSparseArch`
    holding the same weights; the rest of the model is untouched. Returns the model."""
    local = model.sparse_arch
    arch = TorchRecSparseArch(local.cardinalities, local.embedding_dim, local.spec,
                              plans=local.plans, validate=getattr(local, "validate", True))
    arch.load_local_state_dict(local.state_dict())
    model.sparse_arch = arch
    return model


def local_model_state(state: dict[str, torch.Tensor], arch: TorchRecSparseArch,
                      prefix: str = "sparse_arch.") -> dict[str, torch.Tensor]:
    """A full state dict of a model whose ``sparse_arch`` is ``arch`` (e.g. from
    :func:`full_state_dict`) renamed to the same model with the local collection: the form
    checkpoints keep, so a replicated model loads them."""
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

    Raises:
        ValueError: for an unpooled table whose width is not a multiple of 4.
    """
    pooled = {t for r in collection.routes if r.pooled for t in r.tables}
    types = {}
    for t, nbytes in collection.table_bytes().items():
        width = collection.table_shapes[t][1]
        # FBGEMM's kernels take widths of a multiple of 4 only.
        if t in pooled and (nbytes <= small_bytes or width % 4):
            types[t] = ["data_parallel"]
            continue
        if width % 4:
            raise ValueError(
                f"table {t} is {width} wide: FBGEMM's kernels need a multiple of 4, and an "
                f"unpooled table cannot be data-parallel; choose embedding_dim so that every "
                f"table width is a multiple of 4 (concat splits D among its tables)"
            )
        types[t] = ["table_wise"]
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

    The model keeps its current weights: they are copied into the shards. The process group
    must be initialized (world size 1 is fine).
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
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fused = fused_optimizer_params(optimizer, lr)
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused),
                EmbeddingCollectionSharder(fused_params=fused)]  # fmt: skip
    constraints = {t: ParameterConstraints(sharding_types=types, min_partition=4)
                   for t, types in sharding_types(collection, device, small_bytes).items()}
    topology = Topology(world_size=world_size, compute_device=device.type)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
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


def _sum_over_ranks(full: torch.Tensor, dst: int | None) -> torch.Tensor:
    """Each rank's part (zeros elsewhere) summed on every rank (``dst=None``) or on ``dst``."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dst is None:
            dist.all_reduce(full)
        else:
            dist.reduce(full, dst)
    return full


def _gather(value: Any, dst: int | None = None) -> torch.Tensor:
    """A ShardedTensor as one full tensor on every rank, or whole on rank ``dst`` only."""
    full = torch.zeros(value.size(), dtype=value.dtype)
    for tensor, where in _shard_slices(value):
        full[where] = tensor.detach().cpu()
    return _sum_over_ranks(full, dst)


def full_state_dict(dmp: nn.Module, dst: int | None = None) -> dict[str, torch.Tensor]:
    """The sharded model's state dict with every table whole, on CPU: the keys and shapes of
    the unsharded model, so it loads into one (collective: call on every rank). With ``dst``
    the sharded tables are whole on that rank only (the others get partial sums)."""
    return {k: _gather(v, dst) if _is_sharded(v) else v.detach().cpu()
            for k, v in dmp.state_dict().items()}  # fmt: skip


def load_full_state_dict(dmp: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (as :func:`full_state_dict` gives) into the sharded model."""
    with torch.no_grad():
        for k, v in dmp.state_dict().items():
            if _is_sharded(v):
                for tensor, where in _shard_slices(v):
                    tensor.copy_(state[k][where])
            else:
                v.copy_(state[k])


def full_optimizer_state(dmp: nn.Module, dst: int | None = None) -> dict[str, torch.Tensor]:
    """The fused optimizers' state (e.g. Adagrad's sums), whole tensors keyed
    ``<parameter>/<state>`` (collective: call on every rank; whole on ``dst`` only if given)."""
    state = dmp.fused_optimizer.state_dict()["state"]
    out = {}
    for key in sorted(set(_all_keys(state))):
        p, s = key.split("/", 1)
        value = state.get(p, {}).get(s)
        out[key] = _gather_maybe_absent(value, dst)
    return out


def _all_keys(state: dict[str, dict[str, Any]]) -> list[str]:
    """Every rank's ``<parameter>/<state>`` keys (ranks hold different tables)."""
    mine = sorted(f"{p}/{s}" for p, states in state.items() for s in states)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return mine
    every: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, mine)
    return [k for keys in every for k in keys]


def _gather_maybe_absent(value: Any, dst: int | None) -> torch.Tensor:
    """Like :func:`_gather`, for a state this rank may not hold: shapes agreed by all-reduce."""
    shape = torch.zeros(4, dtype=torch.long)
    if value is not None:
        size = list(value.size())
        shape[: len(size)] = torch.tensor(size)
        shape[3] = len(size)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    full = torch.zeros([int(n) for n in shape[: int(shape[3])]])
    if value is not None:
        for tensor, where in _shard_slices(value):
            full[where] = tensor.detach().cpu()
    return _sum_over_ranks(full, dst)


def load_full_optimizer_state(dmp: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy :func:`full_optimizer_state`'s tensors into the fused optimizers' shards."""
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


class FusedOptimizerState:
    """The fused optimizers of a DMP model as one ``state_dict`` / ``load_state_dict`` pair of
    whole tensors, as a checkpoint keeps them (collective: every rank calls them;
    ``state_dict`` is whole on rank 0, which writes checkpoints)."""

    def __init__(self, dmp: nn.Module):
        self._dmp = dmp

    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_optimizer_state(self._dmp, dst=0)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_full_optimizer_state(self._dmp, state)


@dataclass
class ShardedTraining:
    """A training run's model sharded by TorchRec, beside a replicated copy of it.

    The replica (the model as ``train.sharding: replicate`` builds it) is what evaluation,
    checkpoints and parameter counts see on rank 0: :meth:`sync` gathers the sharded weights
    into it (collective: every rank calls it), so evaluation and ``compemb evaluate`` are
    unchanged and a checkpoint of a sharded run loads into a replicated model. The other ranks
    drop their replica's tensors (moved to the meta device) once the model is sharded.

    Attributes:
        sharded: the DMP-wrapped model and its plan.
        replica: the replicated model, in step with the sharded one after :meth:`sync`.
        optimizer: compemb's optimizer for everything the fused optimizers do not train.
        arch: the sharded model's :class:`TorchRecSparseArch`.
    """

    sharded: Sharded
    replica: nn.Module
    optimizer: torch.optim.Optimizer
    arch: TorchRecSparseArch

    @classmethod
    def prepare(cls, replica: nn.Module, optimizer: str, lr: float, device: torch.device, *,
                verbose: bool = True) -> ShardedTraining:
        """Shard a copy of ``replica`` (a model with the local collection, weights as they
        are) and build the optimizer of its unfused parameters; print the plan if
        ``verbose``. The process group must exist (:func:`ensure_process_group`)."""
        from compemb.optim import make_optimizer

        moved = to_torchrec(copy.deepcopy(replica))
        sharded = shard(moved, device, optimizer=optimizer, lr=lr)
        dense = [p for _, p in sharded.dense_parameters()]
        opt = make_optimizer(optimizer, dense, lr, tables=sharded.replicated_tables())
        if dist.get_rank() != 0:
            replica.to("meta")  # only rank 0 evaluates and writes checkpoints
        if verbose:
            print(f"TorchRec sharding plan ({dist.get_world_size()} ranks):\n{sharded.summary}",
                  file=sys.stderr, flush=True)
        return cls(sharded, replica, opt, moved.sparse_arch)

    @property
    def net(self) -> nn.Module:
        """The model to train (DMP)."""
        return self.sharded.model

    @property
    def fused(self) -> FusedOptimizerState:
        """The fused optimizers' state, whole (``state_dict`` / ``load_state_dict``)."""
        return FusedOptimizerState(self.sharded.model)

    def sync(self) -> None:
        """Copy the sharded weights into the replica (collective)."""
        state = full_state_dict(self.sharded.model, dst=0)
        if dist.get_rank() == 0:
            # the replica's own buffers (frequency maps) stay: they never change in training
            current = self.replica.state_dict()
            current.update(local_model_state(state, self.arch))
            self.replica.load_state_dict(current)
