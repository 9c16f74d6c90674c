"""The runner end to end on a tiny grid: MovieLens, 2 variants x 2 trials, a few steps."""

from __future__ import annotations

import csv
import json

import pytest

from compemb.data import open_dataset
from compemb.experiments import runner
from compemb.experiments.grids import Experiment, Variant
from compemb.experiments.plots import figure_for, plot_results
from compemb.experiments.report import format_table, write_report
from compemb.experiments.runner import Settings, aggregate, run_experiment

TINY = Experiment(
    "fig4", "tiny", (Variant("full", "full"), Variant("qr mult", "qr", "mult", 4, x=4)),
    "curve", "iterations", curves=True,
)  # fmt: skip
SETTINGS = Settings(trials=2, max_steps=12, batch_size=64)


@pytest.fixture(scope="module")
def dataset():
    return open_dataset("movielens")


@pytest.fixture(scope="module")
def done(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("exp")
    return out, run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)


def test_every_run_trained_once_into_its_own_folder(done):
    out, results = done
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert len(folders) == 4 and len(set(folders)) == 4
    assert all((out / "runs" / f / "final.json").is_file() for f in folders)
    assert not any((out / "runs" / f / "checkpoint.pt").exists() for f in folders)
    assert [r["seed"] for r in results["trials"]] == [0, 1, 0, 1]
    assert all(r["steps"] == 12 for r in results["trials"])


def test_summary_is_the_mean_and_std_of_the_trials(done):
    _, results = done
    by_label = {s["label"]: s for s in results["summary"]}
    assert list(by_label) == ["full", "qr mult c=4"]
    losses = [r["test_logloss"] for r in results["trials"] if r["label"] == "qr mult c=4"]
    entry = by_label["qr mult c=4"]
    assert entry["trials"] == 2
    assert entry["test_logloss_mean"] == pytest.approx(sum(losses) / 2)
    assert entry["test_logloss_std"] == pytest.approx(abs(losses[0] - losses[1]) / 2**0.5)
    assert by_label["full"]["compression"] == 1.0
    assert by_label["qr mult c=4"]["num_parameters"] < by_label["full"]["num_parameters"]


def test_curves_have_mean_and_std_per_step(done):
    _, results = done
    curve = results["curves"]["qr mult c=4"]
    assert curve["steps"][-1] == 12 and len(curve["steps"]) == 12
    assert len(curve["mean"]) == len(curve["std"]) == 12


def test_files_written(done):
    out, results = done
    folder = out / "fig4"
    with open(folder / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(folder / "summary.csv") as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["full", "qr mult c=4"]
    saved = json.loads((folder / "results.json").read_text())
    assert saved["summary"] == results["summary"]
    png = plot_results(results, folder / "fig4.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = write_report(results, folder, plot=str(png), command="compemb experiment fig4")
    text = report.read_text()
    assert "![fig4](fig4.png)" in text and "| qr c=4 | mult | adagrad |" in text
    assert "qr c=4" in format_table(results)


def test_plot_axes_are_labelled(done):
    _, results = done
    fig = figure_for(results)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "iterations" and ax.get_ylabel() == "validation log loss"
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"full", "qr mult c=4"}


def test_second_call_repeats_nothing(done, dataset, monkeypatch):
    out, first = done

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train", no_training)
    again = run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)
    assert again["summary"] == first["summary"]


def test_interrupted_run_resumes_from_its_folder(tmp_path, dataset):
    tiny = Experiment("fig5", "t", (Variant("hash", "hash", collisions=4, x=4),), "params", "p")
    settings = Settings(trials=1, max_steps=6, batch_size=64)
    (run,) = runner.plan_runs(tiny, settings, dataset, tmp_path)
    run_experiment(tiny, settings, tmp_path, dataset=dataset, progress=False)
    (run.folder / "final.json").unlink()  # as if killed after the last step
    again = run_experiment(tiny, settings, tmp_path, dataset=dataset, progress=False)
    assert again["trials"][0]["steps"] == 6


def test_aggregate_adds_excess_over_the_planted_optimum_and_differences_paired_by_seed():
    def row(label: str, seed: int, loss: float) -> dict:
        return {"series": label, "label": label, "x": 2, "scheme": "hash", "operation": "",
                "collisions": 2, "k": None, "threshold": 0, "path_hidden": None,
                "optimizer": "adagrad", "init": "", "num_parameters": 10,
                "embedding_parameters": 8, "embedding_bytes": 32, "compression": 2.0,
                "seed": seed, "test_logloss": loss, "test_auc": 0.7, "test_accuracy": 0.8,
                "val_logloss": loss, "train_seconds": 1.0}  # fmt: skip

    # seed 1 is hard for every variant: the paired difference does not see it
    rows = [row("full", 0, 0.45), row("full", 1, 0.65), row("hash", 0, 0.5), row("hash", 1, 0.7)]
    full, entry = aggregate(rows, optimum=0.4)
    assert entry["test_logloss_mean"] == pytest.approx(0.6)
    assert entry["test_logloss_std"] == pytest.approx(0.02**0.5)
    assert entry["excess_logloss_mean"] == pytest.approx(0.2)
    assert entry["paired_logloss_mean"] == pytest.approx(0.05)
    assert entry["paired_logloss_std"] == pytest.approx(0.0)
    assert full["paired_logloss_mean"] == 0.0
    assert entry["paired_logloss_median"] == pytest.approx(0.05)
    assert entry["paired_logloss_max"] == pytest.approx(0.05)


def test_trials_rows_keep_every_scheme_size_and_operation(tmp_path):
    """Mixed radix is sized by k and composed by an operation: both reach trials.csv."""
    from compemb.config import config_from_dict
    from compemb.experiments.frontier import FRONTIER_SCHEMES, make_variant

    line = next(s for s in FRONTIER_SCHEMES if s.series == "mixed radix mult")
    variant = make_variant(line, 3)
    config = config_from_dict({"model": {"embedding": variant.model_fields()}})
    run = runner.Run(variant, 0, config, tmp_path / "run")
    metrics = {**dict.fromkeys(runner.METRICS, 0.5), "num_parameters": 10,
               "embedding_parameters": 5, "steps": 1, "train_seconds": 1.0}
    row = runner.trial_row(run, metrics, 50, 20)
    assert (row["scheme"], row["operation"], row["k"], row["collisions"]) == (
        "mixed_radix", "mult", 3, None)
    path = runner.trial_row(runner.Run(
        Variant("path", "path", collisions=4, path_hidden=16), 0,
        config_from_dict({"model": {"embedding": {"scheme": "path", "collisions": 4,
                                                  "path_hidden": 16}}}), tmp_path / "p"),
        metrics, 50, 20)  # fmt: skip
    assert (path["operation"], path["collisions"], path["path_hidden"]) == ("", 4, 16)
