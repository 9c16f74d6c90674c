"""Evaluating a model on a split, and a finished run folder on its saved weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from compemb.config import load_config
from compemb.data import Dataset, open_dataset
from compemb.training.build import forward, model_for
from compemb.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from compemb.training.distributed import pick_device
from compemb.training.metrics import binary_metrics

CONFIG_FILE = "config.yaml"


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    split: str,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, float | None]:
    """Log loss, accuracy and AUC of ``model`` over a whole split.

    >>> # evaluate(model, open_dataset("movielens"), "val", 16384)["logloss"]
    """
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in dataset.batches(split, batch_size):
        batch = batch.to(device)
        logits.append(forward(model, batch).float().cpu())
        labels.append(batch.labels.cpu())
    model.train(was_training)
    return binary_metrics(torch.cat(logits), torch.cat(labels))


def evaluate_run(
    run_dir: str | Path, split: str = "test", *, device: str | None = None
) -> dict[str, Any]:
    """Metrics of a run folder's last checkpoint on ``split`` (``test`` or ``val``)."""
    run_dir = Path(run_dir)
    if split not in ("test", "val"):
        raise ValueError(f"split {split!r}: use test or val")
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT_FILE}: train it first")
    config = load_config(run_dir / CONFIG_FILE)
    dataset = open_dataset(config.data.dataset)
    dev = pick_device(device)
    model = model_for(config, dataset, dev)
    model.load_state_dict(load_checkpoint(checkpoint, dev)["model"])
    metrics = evaluate(model, dataset, split, config.train.eval_batch_size, dev)
    return {"run": str(run_dir), "split": split, **{f"{split}_{k}": v for k, v in metrics.items()}}


def read_final(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "final.json").read_text())
