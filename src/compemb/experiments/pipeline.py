"""One call from an experiment's name to its results folder: run, aggregate, plot, report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compemb.data import open_dataset
from compemb.experiments.grids import build_experiment
from compemb.experiments.plots import plot_results
from compemb.experiments.report import write_report
from compemb.experiments.runner import Settings, run_experiment


@dataclass(frozen=True)
class Outcome:
    """What :func:`run_named` made: the results and the files holding them."""

    results: dict[str, Any]
    folder: Path
    plot: Path
    report: Path
    seconds: float


def dataset_spec(data: list[str] | tuple[str, ...]) -> str:
    """``["movielens"]``, ``["synthetic", DIR]`` or ``["criteo", DIR]`` (or ``[DIR]``) as the
    string ``open_dataset`` takes; folders are made absolute so a resumed run matches."""
    if list(data) == ["movielens"]:
        return "movielens"
    if len(data) == 2 and data[0] in ("synthetic", "criteo"):
        folder = Path(data[1])
    elif len(data) == 1:
        folder = Path(data[0])
    else:
        raise ValueError(f"--data {' '.join(data)}: use movielens, synthetic DIR or criteo DIR")
    if not (folder / "metadata.json").is_file():
        raise FileNotFoundError(
            f"--data: {folder} is not a dataset folder (no metadata.json); make one with "
            f"'compemb synth' or 'compemb preprocess'"
        )
    return str(folder.resolve())


def default_out(spec: str, model: str) -> Path:
    """``runs/experiments/<data>-<model>``."""
    return Path("runs/experiments") / f"{Path(spec).name}-{model}"


def run_named(
    name: str,
    settings: Settings,
    out: str | Path,
    *,
    progress: bool | None = None,
    command: str | None = None,
    lines: Sequence[str] | None = None,
    targets: Sequence[float] | None = None,
) -> Outcome:
    """Run experiment ``name`` with ``settings`` under ``out`` (resuming finished runs) and
    write ``OUT/<name>/``: trials.csv, summary.csv, results.json, <name>.png and report.md.
    ``lines`` and ``targets`` choose part of the frontier (:func:`.build_experiment`)."""
    started = time.perf_counter()
    dataset = open_dataset(settings.dataset)
    experiment = build_experiment(name, dataset.cardinalities,
                                  embedding_dim=settings.embedding_dim, lines=lines,
                                  targets=targets)
    results = run_experiment(experiment, settings, out, dataset=dataset, progress=progress)
    folder = Path(out) / experiment.name
    plot = plot_results(results, folder / f"{experiment.name}.png")
    report = write_report(results, folder, plot=str(plot), command=command)
    return Outcome(results, folder, plot, report, time.perf_counter() - started)
