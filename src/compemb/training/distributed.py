"""torchrun scale-out: process group setup, device choice, DDP wrapping, rank-0-only work.

Under ``torchrun --nproc_per_node=N`` every process reads its share of each global batch; the
model is replicated and wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (this process's local GPU) or, with None, cuda when available."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no GPU is available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested != "cpu":
        raise ValueError(f"device {requested!r}: use cpu or cuda")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op without it).

    Under torchrun the process also ends when its launcher dies (:func:`stop_with_launcher`).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for its workers
        stop_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives run on the current device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@functools.cache  # one watcher per process
def stop_with_launcher(poll_s: float = 0.5) -> None:
    """End this process (as SIGKILL would: nothing more is written) once its parent, the
    torchrun launcher, is gone; checked every ``poll_s`` seconds by a daemon thread.

    torchrun starts each rank in a session of its own, so a SIGKILL of torchrun alone (``kill
    -9`` of the command one started) would leave the ranks training on and writing the run
    folder while a resume of it starts (which deleted the resumed run's checkpoint under it).
    A launcher that dies before this is called goes unnoticed.
    """
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        print(f"compemb: rank {os.environ.get('RANK', '?')} stops: its launcher (pid "
              f"{launcher}) is gone", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(1)

    threading.Thread(target=watch, name="compemb-stop-with-launcher", daemon=True).start()


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def sparse_allowed(device: torch.device, info: DistInfo) -> bool:
    """Whether embedding tables may keep sparse gradients here: yes except under nccl.

    Under DDP on gloo the tables are left out of DDP and their sparse gradients all-reduced
    by :func:`reduce_table_grads`; nccl has no sparse all-reduce, so on CUDA the tables use
    dense gradients (all-reduced in full by DDP each step).
    """
    return not (info.enabled and device.type == "cuda")


def wrap_model(
    model: nn.Module, device: torch.device, info: DistInfo, *, sparse_tables: bool = False
) -> nn.Module:
    """The model DDP-wrapped when running distributed (it averages gradients over ranks).

    With ``sparse_tables`` the parameters of ``model.sparse_arch`` stay outside DDP: its reducer
    rejects sparse gradients of parameters that are not ``nn.Embedding`` weights ("Cannot access
    storage of SparseTensorImpl"). Call :func:`reduce_table_grads` after every backward.

    DDP broadcasts none of the embedding layer's buffers and none of the model's non-persistent
    ones, neither when it wraps the model nor before each forward (which it would do for every
    buffer it manages). The embedding layer's are id maps (relabel, hot ids, CCE's assignment
    and hashes, DHE's hash coefficients) that every rank builds from the same config, counts
    and checkpoint, and that change only where every rank changes them alike (CCE's
    reclustering, after merging the seen ids), or rank-local (CCE's seen ids: each rank marks
    its own share of the batches, and rank 0's must not overwrite them); non-persistent
    buffers are constants every rank computes (index tensors). A 1 M-category feature's int32
    relabel map alone was 4 MB a step (``benchmarks/ddp_buffers.py``). Any other buffer (a
    running statistic) is still DDP's.
    """
    if not info.enabled:
        return model
    names = [f"sparse_arch.{n}" for n, _ in model.sparse_arch.named_buffers()]
    names += [f"{m}.{b}" if m else b for m, module in model.named_modules()
              for b in module._non_persistent_buffers_set
              if module._buffers.get(b) is not None and not m.startswith("sparse_arch")]
    if sparse_tables:
        names += [f"sparse_arch.{n}" for n, _ in model.sparse_arch.named_parameters()]
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def reduce_table_grads(model: nn.Module, info: DistInfo) -> None:
    """Average the embedding layer's gradients over ranks, sparse ones kept sparse (gloo).

    Every rank runs the same forward, so every table has a gradient on every rank (a sparse
    one with no rows when a rank's share of the batch is empty) and the collectives match.
    """
    if not info.enabled:
        return
    for p in model.sparse_arch.parameters():
        grad = p.grad.coalesce() if p.grad.is_sparse else p.grad
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        p.grad = grad / info.world_size


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def warn_dense_under_nccl() -> None:
    warnings.warn(
        "nccl has no sparse all-reduce: embedding tables use dense gradients under "
        "DistributedDataParallel on CUDA; model.sparse is ignored",
        stacklevel=2,
    )
