"""The training loop behind ``compemb train``: set up, fit, record, checkpoint, finish.

The run folder (:class:`~compemb.training.run_folder.RunFolder`) gets the resolved config, one
metrics record per validation (step, train loss, val log loss), the last atomic checkpoint and,
when done, the final metrics. Under ``torchrun`` every rank trains its share of each global batch;
a replicated run evaluates and writes files on rank 0 while the others wait, a sharded one
(``train.sharding: torchrec``) evaluates and checkpoints on every rank, each its own shards.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from compemb.config import Config, dump_config, load_run_config
from compemb.data import Batch, Dataset, open_dataset
from compemb.embeddings.torchrec import require_torchrec
from compemb.models import RankingModel
from compemb.optim import make_optimizer, optimizer_kind
from compemb.training import distributed as D
from compemb.training.build import forward, model_for, resolve_config
from compemb.training.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    restore,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from compemb.training.evaluate import evaluate
from compemb.training.params import parameter_report
from compemb.training.recluster import feature_seed, recluster_local, recluster_steps
from compemb.training.run_folder import RunFolder
from compemb.training.sharding import ShardedTraining, end_process_group, ensure_process_group
from compemb.training.state import TrainState


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


@dataclass
class Trainer:
    """Everything a run needs; ``net`` is ``model`` or its DDP wrapper.

    With ``train.sharding: torchrec``, ``sharded`` holds the TorchRec-sharded model: ``net``
    is its DMP wrapper and ``model`` the model inside (each rank holding its own shards).
    """

    config: Config
    folder: RunFolder
    dataset: Dataset
    model: RankingModel
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    dist: D.DistInfo
    state: TrainState
    tables_outside_ddp: bool = False  # sparse table gradients, all-reduced by the loop
    sharded: ShardedTraining | None = None

    @property
    def total_steps(self) -> int:
        t = self.config.train
        steps = t.epochs * self.dataset.num_batches("train", t.batch_size)
        return steps if t.max_steps is None else min(steps, t.max_steps)


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` into the run folder ``out_dir`` and return the final metrics.

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint (or from the
    start if it has none yet). ``dataset`` overrides ``config.data.dataset`` (for in-process
    experiments); ``progress`` forces the progress bar on or off (default: on a terminal).

    >>> # final = train(load_config("configs/movielens-dlrm-qr.yaml"), "runs/ml-qr")
    """
    device = D.pick_device(config.train.device, D.local_rank_from_env())
    info = D.init_distributed(device)
    if config.train.sharding == "torchrec":
        require_torchrec()  # before anything is written: the error names the extra
    # TorchRec's DMP needs a process group even for one process.
    own_group = config.train.sharding == "torchrec" and ensure_process_group()
    folder = RunFolder(out_dir)
    try:
        dataset = dataset if dataset is not None else open_dataset(config.data.dataset)
        # a budget chooses its knob for the data's cardinalities (config.yaml keeps both),
        # before the folder exists: a budget out of reach leaves nothing behind
        config = resolve_config(config, dataset.cardinalities)
        if info.is_main and not resume:
            folder.path.mkdir(parents=True, exist_ok=True)
        # rank 0 holds the folder while the run writes it: a second writer is refused
        with folder.writing() if info.is_main else contextlib.nullcontext():
            trainer = _setup(config, folder, resume, dataset, device, info)
            if not trainer.folder.is_done():
                _fit(trainer, progress)
                _finish(trainer)
            D.barrier(info)
            return trainer.folder.read_final()
    finally:
        D.shutdown(info)
        end_process_group(own_group)


def resume(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Continue the run in ``run_dir`` with the config it was started with."""
    return train(RunFolder(run_dir).read_config(), run_dir, resume=True, **kwargs)


def _setup(
    config: Config,
    folder: RunFolder,
    resume: bool,
    dataset: Dataset,
    device: torch.device,
    info: D.DistInfo,
) -> Trainer:
    seed_everything(config.train.seed)
    _prepare_folder(config, folder, resume, info)
    if config.train.sharding == "torchrec":
        return _setup_sharded(config, folder, resume, dataset, device, info)
    sparse = bool(config.model.sparse) and D.sparse_allowed(device, info)
    if config.model.sparse and not sparse:
        D.warn_dense_under_nccl()
    model = model_for(config, dataset, device, sparse=sparse)
    # One process: the tables' row gradients go straight into the optimizer's update (same
    # result, no sparse gradient tensors). Under DDP the loop all-reduces table gradients, so
    # they must exist.
    optimizer = make_optimizer(config.train.optimizer, model.parameters(), config.train.lr,
                               tables=model.sparse_arch.table_parameters(),
                               fused=not info.enabled)  # fmt: skip
    state = TrainState()
    if resume and folder.checkpoint.is_file():
        state = _restore(folder.checkpoint, model, optimizer, device)
    if info.is_main:
        lines = "".join(json.dumps(r) + "\n" for r in state.history)
        atomic_write(folder.metrics, lambda tmp: tmp.write_text(lines))
    D.barrier(info)
    net = D.wrap_model(model, device, info, sparse_tables=sparse)
    return Trainer(config, folder, dataset, model, net, optimizer, device, info, state,
                   tables_outside_ddp=info.enabled and sparse)  # fmt: skip


def _setup_sharded(
    config: Config,
    folder: RunFolder,
    resume: bool,
    dataset: Dataset,
    device: torch.device,
    info: D.DistInfo,
) -> Trainer:
    """``train.sharding: torchrec``: the tables built on the meta device, DMP allocating and
    initializing each rank's shards; sharded tables train with FBGEMM's fused optimizers.
    A resumed run reads its newest checkpoint folder at any world size (or a single-file
    checkpoint of an earlier sharded run)."""
    t = config.train
    lr = t.lr if t.lr is not None else optimizer_kind(t.optimizer).default_lr
    model = model_for(config, dataset, device, torchrec=True)
    sharded = ShardedTraining.prepare(model, t.optimizer, lr, device, verbose=info.is_main)
    state = TrainState()
    latest = folder.latest_sharded() if resume else None
    if latest is not None:
        state = _progress(sharded.load(latest, device), latest)
    elif resume and folder.checkpoint.is_file():
        saved = load_checkpoint(folder.checkpoint, device)
        sharded.load_single_file(saved, folder.checkpoint)
        state = _progress(saved, folder.checkpoint)
    if info.is_main:
        lines = "".join(json.dumps(r) + "\n" for r in state.history)
        atomic_write(folder.metrics, lambda tmp: tmp.write_text(lines))
    D.barrier(info)
    return Trainer(config, folder, dataset, sharded.net.module, sharded.net, sharded.optimizer,
                   device, info, state, sharded=sharded)  # fmt: skip


def _progress(saved: dict[str, Any], path: Path) -> TrainState:
    """The progress a checkpoint saved; sets the RNGs it saved."""
    try:
        state = TrainState.from_dict(saved["state"])
        set_rng_state(saved["rng"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its progress or RNG state is unreadable ({err!r})") from err
    return state


def _restore(
    path: Path, model: RankingModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> TrainState:
    """Load a checkpoint into ``model``, ``optimizer`` and the RNGs; the progress it saved."""
    saved = load_checkpoint(path, device)
    restore(model, saved, "model", path)
    restore(optimizer, saved, "optimizer", path)
    return _progress(saved, path)


def _prepare_folder(config: Config, folder: RunFolder, resume: bool, info: D.DistInfo) -> None:
    if resume:
        saved = folder.require(folder.config, f"cannot resume {folder.path}")
        if load_run_config(saved) != config:  # both resolved: the saved one keeps the knob
            raise ValueError(f"cannot resume {folder.path} with a config that differs from {saved}")
        return
    if folder.holds_run():
        raise FileExistsError(
            f"{folder.path} already holds a run; continue it with --resume {folder.path} or "
            f"choose another --out"
        )
    D.barrier(info)  # every rank has looked before rank 0 writes
    if info.is_main:
        text = dump_config(config)
        atomic_write(folder.config, lambda tmp: tmp.write_text(text))


def _fit(trainer: Trainer, progress: bool | None) -> None:
    t, state = trainer.config.train, trainer.state
    total = trainer.total_steps
    rows = trainer.dataset.num_rows("train")
    reclusters = set(recluster_steps(
        total, trainer.dataset.num_batches("train", t.batch_size), every=t.recluster_every,
        until=t.recluster_until, times=t.recluster_times,
    )) if trainer.config.model.embedding.owner.reclusters else set()  # fmt: skip
    bar = tqdm(
        total=min(total * t.batch_size, t.epochs * rows), initial=state.samples, unit="sample",
        unit_scale=True, dynamic_ncols=True, mininterval=1.0,
        disable=True if not trainer.dist.is_main else (None if progress is None else not progress),
    )  # fmt: skip
    with bar:
        while state.step < total and state.epoch < t.epochs:
            batches = trainer.dataset.batches(
                "train", t.batch_size, shuffle=t.shuffle, seed=t.order_seed + state.epoch,
                start=state.step_in_epoch, rank=trainer.dist.rank,
                world_size=trainer.dist.world_size,
            )  # fmt: skip
            for batch in batches:
                global_rows = _train_step(trainer, batch)
                bar.update(global_rows)
                if state.step % 20 == 0 and state.loss_rows:
                    bar.set_postfix(loss=f"{state.loss_sum / state.loss_rows:.4f}")
                if t.eval_every and state.step % t.eval_every == 0:
                    _record(trainer)
                if state.step in reclusters:  # after validating the trained model, as theirs
                    _recluster(trainer)
                if state.step % t.checkpoint_every == 0:
                    _checkpoint(trainer)
                if state.step >= total:
                    break
            if state.step_in_epoch >= trainer.dataset.num_batches("train", t.batch_size):
                state.epoch, state.step_in_epoch = state.epoch + 1, 0


def _train_step(trainer: Trainer, batch: Batch) -> int:
    """One optimizer step on this rank's share of a global batch; returns the global rows.

    The loss is this rank's sum over its rows times world_size / global rows: DDP averages
    gradients over ranks, so the step equals a single process's mean-loss step on the whole
    global batch, whatever the shares' sizes.
    """
    t, state = trainer.config.train, trainer.state
    started = time.perf_counter()
    global_rows = min(t.batch_size, trainer.dataset.num_rows("train")
                      - state.step_in_epoch * t.batch_size)  # fmt: skip
    batch = batch.to(trainer.device, non_blocking=True)
    logits = forward(trainer.net, batch)
    loss_sum = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum")
    if t.schedules_lr:  # before backward, where FBGEMM's fused tables update
        lr = (t.lr if t.lr is not None else optimizer_kind(t.optimizer).default_lr) \
            * t.lr_factor(state.step, trainer.total_steps)
        if trainer.sharded is not None:
            trainer.sharded.set_learning_rate(lr)
        else:
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
    trainer.optimizer.zero_grad(set_to_none=True)
    (loss_sum * (trainer.dist.world_size / global_rows)).backward()
    if trainer.tables_outside_ddp:
        D.reduce_table_grads(trainer.model, trainer.dist)
    total_loss = D.all_reduce_sum(loss_sum.detach().double(), trainer.dist).item()
    if not math.isfinite(total_loss):
        raise TrainingDiverged(
            f"the training loss is {total_loss} at iteration {state.step + 1} (epoch "
            f"{state.epoch}); the run stopped and its last good checkpoint stays in "
            f"{trainer.folder.checkpoint} (try a smaller train.lr)"
        )
    trainer.optimizer.step()
    state.step += 1
    state.step_in_epoch += 1
    state.samples += global_rows
    state.loss_sum += total_loss
    state.loss_rows += global_rows
    state.train_seconds += time.perf_counter() - started
    return global_rows


def _recluster(trainer: Trainer) -> None:
    """Recluster every feature whose scheme ``reclusters`` (CCE), after the optimizer step,
    each seeded by (train seed, feature, step): a resumed run reclusters as the uninterrupted
    one. The optimizer's state is left as it is."""
    seed, step = trainer.config.train.seed, trainer.state.step
    if trainer.sharded is not None:  # each table's owner reclusters it and broadcasts
        trainer.sharded.recluster(lambda f: feature_seed(seed, f, step))
        return
    reduce = (lambda x: D.all_reduce_sum(x, trainer.dist)) if trainer.dist.enabled else None
    recluster_local(trainer.model.sparse_arch, seed, step, all_reduce=reduce)


def _record(trainer: Trainer) -> None:
    """Validate (rank 0), append a record to metrics.jsonl; the other ranks wait."""
    state = trainer.state
    record: dict[str, Any] = {"step": state.step, "epoch": state.epoch, "samples": state.samples,
                              "train_loss": state.take_train_loss()}  # fmt: skip
    val = _evaluate(trainer, "val")
    if trainer.dist.is_main:
        record.update({f"val_{k}": v for k, v in val.items()})
        with open(trainer.folder.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
    state.history.append(record)
    D.barrier(trainer.dist)


def _evaluate(trainer: Trainer, split: str) -> dict[str, Any]:
    """Metrics of ``split``: through the sharded model on every rank, or on rank 0 alone
    (the others get an empty dict)."""
    t = trainer.config.train
    if trainer.sharded is not None:
        return evaluate(trainer.net, trainer.dataset, split, t.eval_batch_size, trainer.device,
                        dist_info=trainer.dist)  # fmt: skip
    if not trainer.dist.is_main:
        return {}
    return evaluate(trainer.model, trainer.dataset, split, t.eval_batch_size, trainer.device)


def _merge_rank_local(trainer: Trainer) -> None:
    """Under torchrun, merge what each rank's modules keep for themselves (``merge_seen``:
    CCE's seen ids) so the checkpoint, written once, holds every rank's."""
    if not trainer.dist.enabled:
        return

    def reduce(x: torch.Tensor) -> None:
        D.all_reduce_sum(x, trainer.dist)

    arch = trainer.model.sparse_arch
    for module in arch.modules():
        if callable(getattr(module, "merge_seen", None)):
            module.merge_seen(reduce)


def _checkpoint(trainer: Trainer) -> None:
    _merge_rank_local(trainer)
    extra = {"state": trainer.state.to_dict(), "rng": rng_state(),
             "config": trainer.config.to_dict()}  # fmt: skip
    if trainer.sharded is not None:
        # every rank writes its own shards; the dense part once
        trainer.sharded.save(trainer.folder.checkpoints, extra,
                             keep=trainer.config.train.keep_checkpoints)  # fmt: skip
        return
    if trainer.dist.is_main:
        save_checkpoint(trainer.folder.checkpoint, {
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            **extra,
        })  # fmt: skip
    D.barrier(trainer.dist)


def _finish(trainer: Trainer) -> None:
    """Last validation record, last checkpoint, test metrics, ``final.json`` (rank 0)."""
    state = trainer.state
    if not state.history or state.history[-1]["step"] != state.step:
        _record(trainer)
    _checkpoint(trainer)
    test = _evaluate(trainer, "test")
    if not trainer.dist.is_main:
        return
    t = trainer.config.train
    last = state.history[-1]
    # A sharded model's tables are ShardedTensors: count the same model built on meta.
    counted = trainer.model if trainer.sharded is None \
        else model_for(trainer.config, trainer.dataset, "meta")
    report = parameter_report(counted, t.optimizer)
    final = {
        **{f"test_{k}": v for k, v in test.items()},
        **{k: last[k] for k in ("val_logloss", "val_accuracy", "val_auc", "train_loss")},
        "steps": state.step,
        "epochs_completed": state.epoch,
        "samples": state.samples,
        "train_seconds": state.train_seconds,
        "samples_per_s": state.samples / state.train_seconds if state.train_seconds else None,
        "num_parameters": report["total"],
        "embedding_parameters": report["embedding"],
        "dense_parameters": report["dense"],
        "parameter_bytes": report["total_bytes"],
        "world_size": trainer.dist.world_size,
        "device": str(trainer.device),
    }
    text = json.dumps(final, indent=2) + "\n"
    atomic_write(trainer.folder.final, lambda tmp: tmp.write_text(text))
