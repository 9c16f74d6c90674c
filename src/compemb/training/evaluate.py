"""Evaluating a model on a split, and a finished run folder on its saved weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compemb.data import Dataset, open_dataset
from compemb.training.build import forward, model_for
from compemb.training.checkpoint import load_checkpoint, restore
from compemb.training.distributed import pick_device
from compemb.training.metrics import binary_metrics
from compemb.training.run_folder import RunFolder


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
    if split not in ("test", "val"):
        raise ValueError(f"split {split!r}: use test or val")
    folder = RunFolder(run_dir)
    config = folder.read_config()
    checkpoint = folder.require(folder.checkpoint, "not trained yet, or an experiment run "
                                "finished without --keep-checkpoints")  # fmt: skip
    dataset = open_dataset(config.data.dataset)
    dev = pick_device(device)
    model = model_for(config, dataset, dev)
    restore(model, load_checkpoint(checkpoint, dev), "model", checkpoint)
    metrics = evaluate(model, dataset, split, config.train.eval_batch_size, dev)
    return {"run": str(folder.path), "split": split,
            **{f"{split}_{k}": v for k, v in metrics.items()}}  # fmt: skip
