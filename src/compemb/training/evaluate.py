"""Evaluating a model on a split (in one process, or sharded over ranks), and a finished run
folder on its saved weights; exporting a sharded run as one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from compemb.config import Config
from compemb.data import Dataset, open_dataset
from compemb.training.build import forward, model_for
from compemb.training.checkpoint import load_checkpoint, restore, save_checkpoint
from compemb.training.distributed import DistInfo, pick_device
from compemb.training.metrics import binary_metrics
from compemb.training.run_folder import RunFolder


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    split: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    dist_info: DistInfo | None = None,
) -> dict[str, float | None]:
    """Log loss, accuracy and AUC of ``model`` over a whole split.

    With ``dist_info`` of more than one rank (a sharded model: every rank must call it), each
    rank scores its share of every batch and the scores and labels are gathered in the
    split's order, so every rank gets the metrics a single process computes from the same
    weights (5 bytes a sample cross the network).

    >>> # evaluate(model, open_dataset("movielens"), "val", 16384)["logloss"]
    """
    rank, world = (0, 1) if dist_info is None else (dist_info.rank, dist_info.world_size)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in dataset.batches(split, batch_size, rank=rank, world_size=world):
        batch = batch.to(device)
        logits.append(forward(model, batch).float().cpu())
        labels.append(batch.labels.cpu())
    model.train(was_training)
    if world > 1:
        return binary_metrics(*_gather_in_order(logits, labels, world))
    return binary_metrics(torch.cat(logits), torch.cat(labels))


def _gather_in_order(logits: list[torch.Tensor], labels: list[torch.Tensor], world: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's per-batch shares, gathered on every rank and put back in the split's
    order (batch by batch, rank by rank): (N,) logits and (N,) labels."""
    sizes = torch.tensor([len(x) for x in logits], dtype=torch.long)
    every_size = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(every_size, sizes)
    longest = max(int(s.sum()) for s in every_size)
    mine = torch.zeros(2, longest)
    count = int(sizes.sum())
    mine[0, :count] = torch.cat(logits) if logits else torch.zeros(0)
    mine[1, :count] = torch.cat(labels) if labels else torch.zeros(0)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    parts = [torch.split(e[:, : int(s.sum())], s.tolist(), dim=1)
             for e, s in zip(every, every_size, strict=True)]  # fmt: skip
    ordered = torch.cat([p[b] for b in range(len(sizes)) for p in parts], dim=1)
    return ordered[0], ordered[1]


def load_local(config: Config, dataset: Dataset, run_dir: str | Path,
               device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model of a run folder's last checkpoint, whole in this process: a replicated run's
    single file, or a sharded run's checkpoint folder read table by table into the model's
    own tensors (peak about the model's size, not twice it)."""
    folder = RunFolder(run_dir)
    model = model_for(config, dataset, device)
    latest = folder.latest_sharded()
    if latest is not None:
        from compemb.training import sharded_checkpoint
        from compemb.training.sharding import per_id_names, sharded_model_state

        layout = model_for(config, dataset, "meta", torchrec=True)
        wanted = sharded_model_state(model.state_dict(), layout.sparse_arch)
        sharded_checkpoint.load(latest, {"model": wanted},
                                per_id_names(layout.sparse_arch.collection))
        return model
    checkpoint = folder.require(folder.checkpoint, "not trained yet, or an experiment run "
                                "finished without --keep-checkpoints")  # fmt: skip
    restore(model, load_checkpoint(checkpoint, device), "model", checkpoint)
    return model


def evaluate_run(
    run_dir: str | Path, split: str = "test", *, device: str | None = None
) -> dict[str, Any]:
    """Metrics of a run folder's last checkpoint on ``split`` (``test`` or ``val``).

    In one process the model is loaded whole (:func:`load_local`). Under ``torchrun`` a
    sharded run's checkpoint is loaded sharded over the ranks, at any world size, and
    evaluated there: for a model that does not fit one machine.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split {split!r}: use test or val")
    folder = RunFolder(run_dir)
    config = folder.read_config()
    dataset = open_dataset(config.data.dataset)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and folder.latest_sharded() is not None:
        metrics = _evaluate_sharded(config, dataset, folder, split, device)
    else:
        dev = pick_device(device)
        model = load_local(config, dataset, folder.path, dev)
        metrics = evaluate(model, dataset, split, config.train.eval_batch_size, dev)
    return {"run": str(folder.path), "split": split,
            **{f"{split}_{k}": v for k, v in metrics.items()}}  # fmt: skip


def _evaluate_sharded(config: Config, dataset: Dataset, folder: RunFolder, split: str,
                      device: str | None) -> dict[str, float | None]:
    from compemb.optim import optimizer_kind
    from compemb.training import distributed as D
    from compemb.training.sharding import ShardedTraining

    dev = pick_device(device, D.local_rank_from_env())
    info = D.init_distributed(dev)
    t = config.train
    lr = t.lr if t.lr is not None else optimizer_kind(t.optimizer).default_lr
    try:
        model = model_for(config, dataset, dev, torchrec=True)
        run = ShardedTraining.prepare(model, t.optimizer, lr, dev, verbose=False)
        run.load(folder.latest_sharded(), dev)
        return evaluate(run.net, dataset, split, t.eval_batch_size, dev, dist_info=info)
    finally:
        D.shutdown(info)


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write a run's last checkpoint as one weights-only file ``{"model", "config"}`` of the
    model with the local collection (``torch.load(out, weights_only=True)``), to serve or
    share a model that fits one machine. A sharded run is read table by table."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    dataset = open_dataset(config.data.dataset)
    model = load_local(config, dataset, folder.path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, {"model": model.state_dict(), "config": config.to_dict()})
    return out
