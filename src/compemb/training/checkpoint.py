"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and RNG state capture."""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason on one line."""


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
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain values only.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a file torch refuses (one carrying code, say) or cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused it: {_reason(err)} (a compemb "
            f"checkpoint holds only tensors and plain values)"
        ) from err
    except Exception as err:  # a truncated or foreign file fails in many ways inside torch
        raise CheckpointError(f"{path}: not a readable checkpoint: {_reason(err)}") from err
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a compemb checkpoint (a {type(saved).__name__})")
    return saved


def restore(target: Any, saved: dict[str, Any], key: str, path: Path) -> None:
    """``target.load_state_dict(saved[key])`` (a model or an optimizer), failing in one line."""
    if key not in saved:
        raise CheckpointError(f"{path}: not a compemb checkpoint (no {key!r} entry)")
    try:
        target.load_state_dict(saved[key])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path}: its {key} does not fit the configured one: {_reason(err)}"
        ) from err


def _reason(err: BaseException) -> str:
    """The informative part of an exception's message, on one line.

    torch wraps the cause of a refused load in paragraphs of general advice; keep the cause.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch bolds part of its advice
    marker = "WeightsUnpickler error:"
    cause = marker in text
    if cause:
        text = text.split(marker, 1)[1]
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    kept = [p for p in paragraphs if p and not p.startswith(advice)]
    text = kept[0] if kept else " ".join(text.split())
    if cause:  # its first sentence names the refused global; the rest is how to allow it
        text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    text = text if len(text) <= 300 else text[:297] + "..."
    if isinstance(err, KeyError) or not text:  # a KeyError's message is the bare key
        return f"{type(err).__name__}: {text}".rstrip(": ")
    return text


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
