"""Run an experiment's grid (every variant, every trial), then aggregate over trials.

Each run trains into its own folder ``OUT/runs/<variant>-<optimizer>-s<seed>-<digest>``; a folder
holding ``final.json`` is read, not retrained, so an interrupted experiment resumes where it
stopped. The digest (:mod:`compemb.experiments.digest`) hashes the results version and every
config field but those at the neutral value recorded when they were added: a changed setting or
a change that moves results never reuses an old run, and a new field at its neutral value keeps
every finished one. Each folder records the results version that wrote it, and folders named by
the earlier digest (of the whole config dump) are renamed once when the same run is planned.

Results go to ``OUT/<experiment>/``: ``trials.csv`` (one row per run), ``summary.csv`` (mean and
std per variant) and ``results.json`` (both, the settings and, with curves, the validation
curves).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import multiprocessing
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from compemb.config import Config, TrainConfig, config_from_dict
from compemb.data import Dataset, open_dataset
from compemb.data.storage import read_metadata
from compemb.experiments.digest import adopt_earlier, check_version, run_digest, write_version
from compemb.experiments.grids import AUTO_OPTIMIZER, Experiment, Variant
from compemb.experiments.speed import table_step_ratios
from compemb.training import train
from compemb.training.build import model_for
from compemb.training.params import parameter_report
from compemb.training.run_folder import RunFolder

METRICS = ("test_logloss", "test_auc", "test_accuracy", "val_logloss")
TRIALS_FILE, SUMMARY_FILE, RESULTS_FILE = "trials.csv", "summary.csv", "results.json"
RESULT_FILES = (TRIALS_FILE, SUMMARY_FILE, RESULTS_FILE)
CURVE_POINTS = 25  # validation points per run for experiments that record curves


@dataclass(frozen=True)
class Settings:
    """What every run of an experiment shares.

    Attributes:
        dataset: "movielens" or a dataset folder (synthetic, preprocessed Criteo).
        model: dlrm or dcn.
        embedding_dim: D for every scheme (concat splits it among its tables).
        optimizer: adagrad, amsgrad, or auto (per operation, :data:`AUTO_OPTIMIZER`).
        trials: runs per variant, with seeds first_seed, first_seed + 1, ...
        batch_size, epochs, max_steps: as in ``TrainConfig`` (max_steps caps quick runs).
        threads: torch CPU threads (1 is fastest for these small models on a shared machine).
        keep_checkpoints: keep each finished run's checkpoint (they can be GBs at scale).
        workers: runs trained at once, each in its own process with ``threads`` threads.
        quantize: also serve each finished run with its tables in these precisions (fp16,
            int8, int4; :mod:`compemb.serving`), before its checkpoint is removed.
        lr_decay: ``train.lr_decay`` of every run (0: the rate held to the end, as every run
            written before the setting).
    """

    dataset: str = "movielens"
    model: str = "dlrm"
    embedding_dim: int = 16
    optimizer: str = "auto"
    trials: int = 5
    first_seed: int = 0
    batch_size: int = 128
    epochs: int = 1
    max_steps: int | None = None
    threads: int = 1
    keep_checkpoints: bool = False
    workers: int = 1
    quantize: tuple[str, ...] = ()
    lr_decay: float = TrainConfig.lr_decay


@dataclass(frozen=True)
class Run:
    """One training run: a variant, a seed, its config and folder."""

    variant: Variant
    seed: int
    config: Config
    folder: Path


def optimizer_for(variant: Variant, settings: Settings) -> str:
    """The variant's own optimizer, else the settings', with "auto" resolved per operation."""
    name = variant.optimizer or settings.optimizer
    if name != "auto":
        return name
    # An operation the study did not cover gets Adagrad, its finding for every operation.
    return AUTO_OPTIMIZER.get(str(variant.model_fields().get("operation")), "adagrad")


def plan_runs(
    experiment: Experiment, settings: Settings, dataset: Dataset, out: str | Path
) -> list[Run]:
    """Every (variant, trial) of ``experiment`` with its config and run folder."""
    runs = []
    steps = dataset.num_batches("train", settings.batch_size) * settings.epochs
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
    eval_every = max(1, steps // CURVE_POINTS) if experiment.curves else 0
    for variant in experiment.variants:
        for seed in range(settings.first_seed, settings.first_seed + settings.trials):
            raw = {
                "data": {"dataset": settings.dataset},
                "model": {"name": settings.model, "embedding_dim": settings.embedding_dim,
                          "embedding": variant.model_fields()},
                "train": {"optimizer": optimizer_for(variant, settings), "seed": seed,
                          "batch_size": settings.batch_size, "epochs": settings.epochs,
                          "max_steps": settings.max_steps, "eval_every": eval_every,
                          "checkpoint_every": 10**9, "lr_decay": settings.lr_decay,
                          **variant.train_fields()},
            }  # fmt: skip
            config = config_from_dict(raw, f"experiment {experiment.name}")
            optimizer = "" if variant.optimizer else f"-{config.train.optimizer}"  # in the slug
            name = f"{variant.slug}{optimizer}-s{seed}-{run_digest(config)}"
            runs.append(Run(variant, seed, config, Path(out) / "runs" / name))
    return runs


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute(run: Run, dataset: Dataset, keep_checkpoint: bool,
            quantize: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``run`` (or read its final metrics if it finished before); its final metrics,
    with its metrics served in each precision of ``quantize`` under ``served``."""
    folder = RunFolder(run.folder)
    resume = folder.config.is_file()
    if resume:
        check_version(run.folder)
    if folder.is_done():
        return _served(run, folder.read_final(), dataset, quantize)
    if not resume:
        write_version(run.folder)
    metrics = train(run.config, run.folder, resume=resume, dataset=dataset, progress=False)
    metrics = _served(run, metrics, dataset, quantize)
    if not keep_checkpoint:
        folder.checkpoint.unlink(missing_ok=True)
        shutil.rmtree(folder.checkpoints, ignore_errors=True)  # a sharded run's
    return metrics


def _served(run: Run, metrics: dict[str, Any], dataset: Dataset, quantize: Sequence[str]
            ) -> dict[str, Any]:
    if not quantize:
        return metrics
    from compemb.serving.runs import served_metrics  # FBGEMM's kernels, only when asked

    return {**metrics, "served": served_metrics(run.folder, quantize, dataset=dataset)}


_WORKER_DATASETS: dict[str, Dataset] = {}


def _execute_in_worker(run: Run, settings: Settings) -> dict[str, Any]:
    """``execute`` in a worker process, which opens each dataset once."""
    torch.set_num_threads(settings.threads)
    if settings.dataset not in _WORKER_DATASETS:
        _WORKER_DATASETS[settings.dataset] = open_dataset(settings.dataset)
    return execute(run, _WORKER_DATASETS[settings.dataset], settings.keep_checkpoints,
                   settings.quantize)


def _execute_all(
    runs: Sequence[Run], dataset: Dataset, settings: Settings, bar: tqdm
) -> list[dict[str, Any]]:
    """Every run's final metrics, in order; unfinished runs on ``settings.workers`` processes."""
    finals: list[dict[str, Any] | None] = [None] * len(runs)
    pending = []
    for i, run in enumerate(runs):
        if RunFolder(run.folder).is_done() or settings.workers == 1:
            bar.set_postfix_str(f"{run.variant.label} seed {run.seed}")
            finals[i] = execute(run, dataset, settings.keep_checkpoints, settings.quantize)
            bar.update()
        else:
            pending.append(i)
    if pending:
        # spawn: forking a process whose torch thread pools already run can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.workers, mp_context=context) as pool:
            futures = {pool.submit(_execute_in_worker, runs[i], settings): i for i in pending}
            for future in as_completed(futures):
                i = futures[future]
                finals[i] = future.result()
                bar.set_postfix_str(f"{runs[i].variant.label} seed {runs[i].seed}")
                bar.update()
    return [f for f in finals if f is not None]


def trial_row(run: Run, metrics: dict[str, Any], full_embedding: int,
              embedding_bytes: int) -> dict[str, Any]:
    """One row of trials.csv: the variant, its scheme's size settings, the run's metrics, and
    its embedding layer's bytes (:func:`embedding_memory`)."""
    v, t, spec = run.variant, run.config.train, run.config.model.embedding
    own = dataclasses.asdict(spec.settings)
    return {
        "series": v.series, "label": v.label, "x": v.x, "scheme": spec.scheme,
        "operation": own.get("operation", ""), "collisions": own.get("collisions"),
        "k": own.get("k"), "threshold": spec.threshold, "path_hidden": own.get("path_hidden"),
        "optimizer": t.optimizer, "init": v.init or "", "seed": run.seed,
        **{k: metrics[k] for k in METRICS},
        "num_parameters": metrics["num_parameters"],
        "embedding_parameters": metrics["embedding_parameters"],
        "compression": full_embedding / metrics["embedding_parameters"],
        "embedding_bytes": embedding_bytes,
        "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
        "run": run.folder.name, **_served_columns(metrics),
    }  # fmt: skip


def _served_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """``served_<precision>_*`` columns: test log loss, its change from float32, embedding
    bytes (None where the precision refused a table)."""
    out = {}
    for p, m in metrics.get("served", {}).items():
        loss = m.get("test_logloss")
        out[f"served_{p}_test_logloss"] = loss
        out[f"served_{p}_logloss_change"] = None if loss is None \
            else loss - metrics["test_logloss"]
        out[f"served_{p}_embedding_bytes"] = m.get("embedding_bytes")
    return out


def embedding_memory(config: Config, dataset: Dataset) -> int:
    """Bytes the configured embedding layer holds: its parameters and its id maps (frequency
    order, hot ids, learned assignments), counted on the model built on the meta device."""
    report = parameter_report(model_for(config, dataset, "meta"))
    return report["embedding_bytes"] + report["index_bytes"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(rows: Sequence[dict[str, Any]], optimum: float | None = None) -> list[dict]:
    """Mean and sample std (ddof 1; 0 for one trial) over trials, per label, in grid order.

    With ``optimum`` (the planted model's test log loss) adds the mean excess log loss. Every
    label also gets its test log loss minus the grid's first variant's (the full tables) at the
    same seed, mean, std, median, min and max over the seeds both ran (``paired_logloss_*``): a
    seed's data order and dense init move every variant alike, and the paired difference removes
    that.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    base = {r["seed"]: r["test_logloss"] for r in next(iter(groups.values()), [])}
    summary = []
    for group in groups.values():
        first = group[0]
        keep = ("series", "label", "x", "scheme", "operation", "collisions", "k", "threshold",
                "path_hidden", "optimizer", "init", "num_parameters", "embedding_parameters",
                "embedding_bytes", "compression")  # fmt: skip
        entry: dict[str, Any] = {k: first[k] for k in keep}
        entry["trials"] = len(group)
        for metric in METRICS:
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([r[metric] for r in group])
        if optimum is not None:
            entry["excess_logloss_mean"] = entry["test_logloss_mean"] - optimum
        paired = [r["test_logloss"] - base[r["seed"]] for r in group if r["seed"] in base]
        if paired:
            entry["paired_logloss_mean"], entry["paired_logloss_std"] = _mean_std(paired)
            # robust to the odd run that stalls (DLRM with Adagrad, now and then, any scheme)
            entry["paired_logloss_median"] = statistics.median(paired)
            entry["paired_logloss_min"], entry["paired_logloss_max"] = min(paired), max(paired)
        entry["train_seconds_mean"] = _mean_std([r["train_seconds"] for r in group])[0]
        for key in (k for k in first if k.startswith("served_")):
            values = [r[key] for r in group if r[key] is not None]
            if key.endswith("_bytes"):
                entry[key] = values[0] if values else None
            else:
                entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(values) if values \
                    else (None, None)
        summary.append(entry)
    return summary


def read_curve(folder: Path) -> list[tuple[int, float]]:
    """(step, val log loss) of a run's validation records."""
    return [(r["step"], r["val_logloss"]) for r in RunFolder(folder).read_metrics()]


def aggregate_curves(runs: Sequence[Run]) -> dict[str, dict[str, list[float]]]:
    """Per series: steps and the mean and std of the validation loss over trials."""
    by_series: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        by_series.setdefault(run.variant.label, []).append(dict(read_curve(run.folder)))
    curves = {}
    for label, trials in by_series.items():
        steps = sorted(set.intersection(*(set(t) for t in trials)))
        stats = [_mean_std([t[s] for t in trials]) for s in steps]
        curves[label] = {"steps": steps, "mean": [m for m, _ in stats],
                         "std": [s for _, s in stats]}  # fmt: skip
    return curves


def planted_optimum(dataset_spec: str) -> float | None:
    """The planted model's test log loss of a synthetic dataset folder, else None."""
    if dataset_spec == "movielens":
        return None
    hidden = read_metadata(dataset_spec).hidden_model or {}
    return hidden.get("optimal_test_log_loss")


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_experiment(
    experiment: Experiment,
    settings: Settings,
    out: str | Path,
    *,
    dataset: Dataset | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train every run of ``experiment`` not yet finished under ``out``; aggregate and save.

    Returns the results (what ``results.json`` holds): settings, trials, summary, curves.
    """
    out = Path(out)
    dataset = dataset if dataset is not None else open_dataset(settings.dataset)
    runs = plan_runs(experiment, settings, dataset, out)
    for run in runs:
        adopt_earlier(run.folder, run.config)
    full_embedding = sum(dataset.cardinalities) * settings.embedding_dim
    started = time.perf_counter()
    bar = tqdm(total=len(runs), desc=experiment.name, unit="run", dynamic_ncols=True,
               disable=None if progress is None else not progress)  # fmt: skip
    with _torch_threads(settings.threads), bar:
        finals = _execute_all(runs, dataset, settings, bar)
    first = {run.variant.label: run for run in reversed(runs)}  # one run per variant
    memory = {label: embedding_memory(run.config, dataset) for label, run in first.items()}
    rows = [trial_row(run, final, full_embedding, memory[run.variant.label])
            for run, final in zip(runs, finals, strict=True)]  # fmt: skip
    results = {
        "experiment": experiment.name, "title": experiment.title, "plot": experiment.plot,
        "x_label": experiment.x_label, "notes": list(experiment.notes),
        "settings": dataclasses.asdict(settings), "dataset": dataset.name,
        "optimum_test_logloss": planted_optimum(settings.dataset),
        "seconds": time.perf_counter() - started,
        "trials": rows,
    }  # fmt: skip
    results["summary"] = aggregate(rows, results["optimum_test_logloss"])
    if experiment.speed:
        configs = {run.variant.label: run.config for run in runs
                   if run.seed == settings.first_seed}  # fmt: skip
        with _torch_threads(settings.threads):
            ratios = table_step_ratios(configs, experiment.variants[0].label, dataset,
                                       batch_size=settings.batch_size)  # fmt: skip
        for entry in results["summary"]:
            entry["table_step_vs_full"] = ratios[entry["label"]]
    if experiment.curves:
        results["curves"] = aggregate_curves(runs)
    folder = out / experiment.name
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / TRIALS_FILE, rows)
    _write_csv(folder / SUMMARY_FILE, results["summary"])
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results
