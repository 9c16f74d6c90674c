"""Shared helpers of the training tests: tiny datasets and configs, subprocess launching."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from compemb.config import Config, apply_overrides
from compemb.data import ArrayDataset, SplitArrays
from compemb.data.synthetic import SynthOptions, generate_synthetic

# Timing and placement differ between runs; everything else in final.json must not.
TIMING_KEYS = ("train_seconds", "samples_per_s", "world_size")


def synth_folder(path: Path, rows: int = 2009, big: int = 1000,
                 numbering: str = "first-seen") -> Path:
    """A planted synthetic dataset folder: 5 features (the last has ``big`` categories), 3 dense,
    about 6/7 of the rows for train (``numbering="population"`` keeps the cardinalities)."""
    generate_synthetic(path, SynthOptions(rows=rows, cardinalities=(50, 7, 300, 3, big),
                                          seed=1, num_dense=3, numbering=numbering),
                       progress=False)  # fmt: skip
    return path


def bag_dataset(rows: int = 300, seed: int = 0) -> ArrayDataset:
    """In memory: 2 single features, 1 multi-hot bag feature, no dense features."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split in ("train", "val", "test"):
        cat = np.stack([rng.integers(0, 40, rows), rng.integers(0, 9, rows)], 1)
        lengths = rng.integers(0, 4, rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = rng.integers(0, 60, int(offsets[-1]))
        labels = ((cat[:, 0] % 3 == 0) ^ (rng.random(rows) < 0.2)).astype(np.float32)
        splits[split] = SplitArrays(cat, np.zeros((rows, 0), np.float32), labels,
                                    ((values, offsets),))  # fmt: skip
    return ArrayDataset("bags", ("a", "b", "c"), (40, 9, 60), 0, splits, num_bag_features=1)


def tiny_config(dataset: str | Path, *overrides: str) -> Config:
    base = [f"data.dataset={dataset}", "model.embedding_dim=4", "model.embedding.scheme=qr",
            "model.embedding.collisions=4", "train.batch_size=32", "train.eval_every=10",
            "train.checkpoint_every=7", "train.eval_batch_size=256"]  # fmt: skip
    return apply_overrides(Config(), [*base, *overrides])


def env() -> dict[str, str]:
    """One thread per process: the same float reductions in every run, and no oversubscription."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run in process with the float reductions of a subprocess under :func:`env`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compemb(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compemb.cli", *args], env=env(),
                          capture_output=True, text=True, timeout=120, **kwargs)  # fmt: skip


def compemb_in_process(*args: str) -> subprocess.CompletedProcess:
    """:func:`compemb` without the process: the CLI's own code, its exit status and output,
    for checks where a launch (seconds of imports) would test nothing more."""
    from compemb import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(args))
    return subprocess.CompletedProcess(["compemb", *args], status, out.getvalue(),
                                       err.getvalue())  # fmt: skip


def final(run_dir: Path) -> dict:
    data = json.loads((run_dir / "final.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


class Killed(Exception):
    """The crash :func:`crash_then_resume` injects."""


def crash_then_resume(config: Config, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                      at_step: int, **kwargs) -> dict:
    """Train ``config`` into ``run_dir``, killed right after its checkpoint at ``at_step``, then
    resume it; the resumed run's final metrics. ``kwargs`` (``dataset=``) go to both calls."""
    from compemb.training import loop, resume, train

    real_checkpoint = loop._checkpoint

    def checkpoint_then_crash(trainer: loop.Trainer) -> None:
        real_checkpoint(trainer)
        if trainer.state.step == at_step:
            raise Killed

    monkeypatch.setattr(loop, "_checkpoint", checkpoint_then_crash)
    with pytest.raises(Killed):
        train(config, run_dir, progress=False, **kwargs)
    monkeypatch.setattr(loop, "_checkpoint", real_checkpoint)
    return resume(run_dir, progress=False, **kwargs)
