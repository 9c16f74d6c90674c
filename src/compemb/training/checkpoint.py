"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and RNG state capture."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it over ``path``.

    A reader (or a resumed run) sees either the old file or the new one, never half of one,
    whenever the writer is killed.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, dicts, lists, numbers, strings only) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's generators, in weights_only-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": _python_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    # compemb draws from explicit generators; the global ones are seeded for user code.
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)
