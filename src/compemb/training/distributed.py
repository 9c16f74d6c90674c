"""torchrun scale-out: process group setup, device choice, DDP wrapping, rank-0-only work.

Under ``torchrun --nproc_per_node=N`` every process reads its share of each global batch; the
model is replicated and wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
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
    """Join the process group torchrun describes in the environment (no-op without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives run on the current device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def sparse_allowed(info: DistInfo) -> bool:
    """Whether embedding tables may produce sparse gradients: not under DDP.

    DDP all-reduces a parameter's gradient as sparse only when the parameter belongs to an
    ``nn.Embedding``/``nn.EmbeddingBag`` built with ``sparse=True``; the compositional tables
    are plain parameters read with ``F.embedding(sparse=True)``, which DDP's reducer rejects
    ("Cannot access storage of SparseTensorImpl"), and nccl has no sparse all-reduce at all.
    So under DDP every table uses dense gradients (all-reduced in full each step).
    """
    return not info.enabled


def wrap_model(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """The model DDP-wrapped when running distributed (it averages gradients over ranks)."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


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


def warn_dense_under_ddp() -> None:
    warnings.warn(
        "embedding tables use dense gradients under DistributedDataParallel (DDP cannot "
        "all-reduce the compositional tables' sparse gradients); model.sparse is ignored",
        stacklevel=2,
    )
