"""Checkpoints of sharded runs: ``torch.distributed.checkpoint`` (DCP) folders that every rank
writes its own shards into, committed atomically, and read without running any code.

A run folder's ``checkpoints/`` holds ``checkpoint-<N>`` folders (N counts the saves), each
complete: DCP's files (every rank's shards of the tables and fused optimizer state, the dense
model once) and ``extra.pt`` (rank 0: the dense optimizer, progress, RNG, config). A save goes
to ``.partial-<N>`` and is renamed once every rank has written and DCP's ``.metadata`` is down,
so a process killed mid-save leaves the previous checkpoint as the newest complete one. The
folder must be on a filesystem every rank (every node) shares.

Loading stays weights-only. torch's DCP reads ``.metadata`` with plain ``pickle.load`` and
non-tensor items with ``torch.load(weights_only=False)``: a crafted checkpoint would run its
code. Here ``.metadata`` goes through an unpickler that admits DCP's own metadata types only,
items are loaded weights-only, and compemb never saves a non-tensor item through DCP.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from compemb.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

EXTRA = "extra.pt"
CHUNK_BYTES = 64 << 20  # the most a save copies at once
_NAME = re.compile(r"checkpoint-(\d+)")

# Everything a DCP .metadata file of torch 2.13 references, and nothing that runs code: data
# classes, torch.Size, dtypes, and two lookups (a layout and a memory format by name).
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("collections", "OrderedDict"),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}, which is not DCP metadata")


def read_metadata(path: Path) -> Metadata:
    """A checkpoint folder's ``.metadata``, read without running code.

    Raises:
        CheckpointError: a file that references anything but DCP's metadata types (one that
            carries code, say), or that is not DCP metadata.
    """
    file = Path(path) / ".metadata"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (not a complete checkpoint)")
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as err:  # a crafted or truncated file fails in many ways
        raise CheckpointError(f"{file}: refused: {err}") from err
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{file}: refused: not DCP metadata (a {type(metadata).__name__})")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file reader with :func:`read_metadata` in place of plain ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"{self.path}: per-rank metadata is not read by compemb")
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner with non-tensor items loaded weights-only (compemb saves none)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        self.state_dict[read_item.dest_index.fqn] = torch.load(value, weights_only=True)


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _number(path: Path) -> int | None:
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(n, p) for p in root.iterdir() if (n := _number(p)) is not None
             and (p / EXTRA).is_file() and (p / ".metadata").is_file()]  # fmt: skip
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = complete(root)
    return found[-1] if found else None


def save(root: Path, state: dict[str, Any], extra: dict[str, Any], *, keep: int = 1) -> Path:
    """Write a checkpoint of ``state`` (tensors and ShardedTensors, nested in dicts; every rank
    passes its own) and ``extra`` (rank 0's, for ``torch.save``: tensors and plain values)
    under ``root``; keep the newest ``keep`` (collective). Returns the new folder.

    DCP writes each rank's shards and a replicated tensor once; shards are written in row
    blocks of at most ``CHUNK_BYTES``, each to a file of its own, so a save costs about
    that much memory whatever the tables' size. (Loading reshards blocks like any shards.)
    """
    root = Path(root)
    number = [None]
    if _rank0():
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".partial-*"):  # a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        done = [_number(p) for p in complete(root)]
        number = [max(done, default=0) + 1]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(number, src=0)
    partial = root / f".partial-{number[0]:06d}"
    _barrier()
    # torch 2.13's writer copies every view it writes (FBGEMM's shards are views of one flat
    # buffer) and keeps the copies of a file alive until the file is done: one file per item,
    # items of at most CHUNK_BYTES, and a save holds one such copy at a time.
    writer = FileSystemWriter(partial, single_file_per_rank=False, sync_files=True)
    dcp.save(_chunked(state), storage_writer=writer)
    final = root / f"checkpoint-{number[0]:06d}"
    if _rank0():
        save_checkpoint(partial / EXTRA, extra)
        os.replace(partial, final)
        _fsync_dir(root)
        for old in complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _chunked(state: Any) -> Any:
    """``state`` with every ShardedTensor split into row blocks of at most CHUNK_BYTES: views
    of the same shards, described by a metadata every rank computes alike (no collective)."""
    if isinstance(state, dict):
        return {k: _chunked(v) for k, v in state.items()}
    if not isinstance(state, ShardedTensor):
        return state
    md = state.metadata()
    element = md.tensor_properties.dtype.itemsize

    def blocks(shard: ShardMetadata) -> list[ShardMetadata]:
        rows, *rest = shard.shard_sizes
        per = max(1, CHUNK_BYTES // max(1, element * math.prod(rest)))
        return [ShardMetadata([shard.shard_offsets[0] + r, *shard.shard_offsets[1:]],
                              [min(per, rows - r), *rest], shard.placement)
                for r in range(0, rows, per)]  # fmt: skip

    local = []
    for shard in state.local_shards():
        first = shard.metadata.shard_offsets[0]
        local += [Shard(shard.tensor.narrow(0, b.shard_offsets[0] - first, b.shard_sizes[0]), b)
                  for b in blocks(shard.metadata)]  # fmt: skip
    every = [b for shard in md.shards_metadata for b in blocks(shard)]
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        local, ShardedTensorMetadata(every, md.size, md.tensor_properties))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path, state: dict[str, Any], aliases: Mapping[str, str] | None = None) -> None:
    """Fill ``state`` (tensors and ShardedTensors of this process's model, nested in dicts)
    from the checkpoint at ``path`` in place, resharding as needed: saved on any number of
    ranks, loaded on any number (collective when a process group exists).

    ``aliases`` maps the end of an entry's key (in a dict of ``state``) to the end it had in
    checkpoints of an earlier layout, read from where the checkpoint lacks the key itself.

    Raises:
        CheckpointError: a refused ``.metadata`` (:func:`read_metadata`) or a checkpoint that
            lacks an entry of ``state``.
    """
    path = Path(path)
    saved = set(read_metadata(path).state_dict_metadata)  # one clear error before collectives
    if aliases:
        state = _as_saved(state, saved, aliases)
    try:
        dcp.load(state, storage_reader=SafeReader(path), planner=SafeLoadPlanner())
    except CheckpointError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())
        raise CheckpointError(f"{path}: its state does not fit this model: "
                              f"{reason[:400]}") from err  # fmt: skip


def _as_saved(state: dict[str, Any], saved: set[str], aliases: Mapping[str, str]
              ) -> dict[str, Any]:
    """``state`` (the same tensors) with each entry the checkpoint lacks under its key and
    holds under an alias renamed to that (``saved``: DCP's flattened keys)."""

    def held(key: str, value: Any) -> bool:
        if isinstance(value, dict):
            return all(held(f"{key}.{k}", v) for k, v in value.items())
        return key in saved

    out: dict[str, Any] = {}
    for group, entries in state.items():
        if not isinstance(entries, dict):
            out[group] = entries
            continue
        out[group] = {}
        for key, value in entries.items():
            if not held(f"{group}.{key}", value):
                key = next((key[: -len(end)] + old for end, old in aliases.items()
                            if key.endswith(end)
                            and held(f"{group}.{key[: -len(end)]}{old}", value)), key)
            out[group][key] = value
    return out


def load_extra(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's ``extra.pt`` (weights-only)."""
    return load_checkpoint(Path(path) / EXTRA, device)


__all__ = [
    "SafeLoadPlanner",
    "SafeReader",
    "complete",
    "latest",
    "load",
    "load_extra",
    "read_metadata",
    "save",
]
