"""Run-folder digests: finished runs survive a new field at its neutral value, nothing else."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil

import pytest

import compemb.config as config_module
from compemb import partitions as P
from compemb.config import Config, TrainConfig, load_config_text
from compemb.data import open_dataset
from compemb.experiments import digest, runner
from compemb.experiments.grids import Experiment, Variant
from compemb.experiments.runner import Settings, run_experiment
from compemb.scheme import SCHEMES
from compemb.training.run_folder import RunFolder

TINY = Experiment("fig5", "t", (Variant("hash", "hash", collisions=4, x=4),), "params", "p")
SETTINGS = Settings(trials=1, max_steps=2, batch_size=64)


class Retrained(Exception):
    """Raised instead of training: the run was not reused."""


def no_training(*args, **kwargs):
    raise Retrained


@pytest.fixture(scope="module")
def dataset():
    return open_dataset("movielens")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("digest")
    return out, run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)


@pytest.fixture
def out(finished, tmp_path, monkeypatch):
    """A copy of the finished experiment's folder; training refused (``Retrained``)."""
    copy = tmp_path / "out"
    shutil.copytree(finished[0], copy)
    monkeypatch.setattr(runner, "train", no_training)
    return copy


def the_folder(out):
    (folder,) = (out / "runs").iterdir()
    return folder


def add_train_field(monkeypatch, default, neutral=None, *, registered=True):
    """As if ``train.future_knob`` had been added to TrainConfig (and to NEUTRAL)."""
    field = ("future_knob", int, dataclasses.field(default=default))
    grown = dataclasses.make_dataclass("TrainConfig", [field], bases=(TrainConfig,), frozen=True)
    monkeypatch.setitem(config_module._SECTIONS, "train", grown)  # what the loader builds
    if registered:
        monkeypatch.setitem(digest.NEUTRAL, "train.future_knob", neutral)


def own_schemes():
    """The schemes compemb registers (tests register more)."""
    def own(obj) -> bool:
        return type(obj).__module__.startswith("compemb.")

    return [n for n in SCHEMES.names()
            if own(SCHEMES.lookup(n)) and (n not in P.FAMILIES or own(P.FAMILIES[n]))]


def test_every_field_is_hashed_from_the_start_or_has_a_neutral_value():
    keys = set(digest.flat_config(Config())) | {"imports"}
    for name in own_schemes():
        keys |= {f"model.embedding[{name}].{s}" for s in SCHEMES.lookup(name).setting_names()}
    keys = {digest.RENAMED.get(k, k) for k in keys} | {"model.embedding.budget"}
    unregistered = keys - digest.BASELINE - set(digest.NEUTRAL)
    assert not unregistered, (
        f"{sorted(unregistered)}: a field added to the config or to a scheme records its "
        f"neutral value (training as before the field existed) in compemb.experiments.digest."
        f"NEUTRAL; a new scheme lists its settings in digest._BASELINE_SCHEMES")
    assert set(digest.NEUTRAL) <= keys and not set(digest.NEUTRAL) & digest.BASELINE


def test_the_digest_leaves_out_neutral_fields_and_hashes_the_version(monkeypatch):
    config = load_config_text("model: {embedding: {scheme: qr, collisions: 4}}", "inline")
    reclusters = load_config_text(
        "model: {embedding: {scheme: cce, rows: 8}}\ntrain: {recluster_every: 10}", "inline")
    assert "train.recluster_every" not in digest.config_fields(config)
    assert digest.config_fields(reclusters)["train.recluster_every"] == 10
    assert digest.config_fields(config)["model.embedding[qr].collisions"] == 4
    before = digest.run_digest(config)
    monkeypatch.setattr(digest, "RESULTS_VERSION", digest.RESULTS_VERSION + 1)
    assert digest.run_digest(config) != before


def test_a_finished_run_stays_cached_after_a_field_at_its_neutral_default_is_added(
        out, dataset, finished, monkeypatch):
    add_train_field(monkeypatch, default=0, neutral=0)
    (run,) = runner.plan_runs(TINY, SETTINGS, dataset, out)
    assert run.config.train.future_knob == 0 and run.folder == the_folder(out)
    again = run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)
    assert again["trials"] == finished[1]["trials"]


@pytest.mark.parametrize("neutral, registered", [(5, True), (None, False)])
def test_a_new_field_off_its_neutral_value_or_unregistered_trains_anew(
        out, dataset, monkeypatch, neutral, registered):
    add_train_field(monkeypatch, default=0, neutral=neutral, registered=registered)
    with pytest.raises(Retrained):
        run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)


def test_a_results_version_bump_trains_anew(out, dataset, monkeypatch):
    monkeypatch.setattr(digest, "RESULTS_VERSION", digest.RESULTS_VERSION + 1)
    with pytest.raises(Retrained):
        run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)


def earlier_named(folder, edit=("", "")):
    """The folder as the earlier runner left it: no stamp, named by the sha1 of the whole config
    dump, its config file edited (``edit``: old text, new text)."""
    config = RunFolder(folder).config
    config.write_text(config.read_text().replace(*edit))
    (folder / digest.VERSION_FILE).unlink()
    old = hashlib.sha1(config.read_text().encode()).hexdigest()[:8]
    earlier = folder.with_name(f"{folder.name[:-8]}{old}")
    assert earlier != folder
    return folder.rename(earlier)


def test_a_folder_of_the_earlier_digest_is_adopted_once(out, dataset, finished, monkeypatch):
    # as when folders were first stamped: an unstamped folder was written at this version
    monkeypatch.setattr(digest, "_UNSTAMPED", digest.RESULTS_VERSION)
    folder = the_folder(out)
    # written before train.recluster_every existed: the config file lacks it
    earlier = earlier_named(folder, ("  recluster_every: null\n", ""))
    again = run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)
    assert again["trials"] == finished[1]["trials"]
    assert not earlier.exists() and the_folder(out) == folder
    assert digest.folder_version(folder) == digest.RESULTS_VERSION
    (run,) = runner.plan_runs(TINY, SETTINGS, dataset, out)
    assert not digest.adopt_earlier(run.folder, run.config)  # once: nothing left to adopt
    again = run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)
    assert again["trials"] == finished[1]["trials"]


@pytest.mark.parametrize("edit", [
    ("  shuffle: true\n", ""),  # written before a field that has no neutral value
    ("  lr: null\n", "  lr: 0.02\n"),  # another run
])  # fmt: skip
def test_an_earlier_folder_of_another_run_is_left_alone(out, dataset, edit):
    earlier = earlier_named(the_folder(out), edit)
    with pytest.raises(Retrained):
        run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)
    assert earlier.is_dir()


def test_an_earlier_folder_of_another_results_version_is_left_alone(out, dataset, monkeypatch):
    earlier = earlier_named(the_folder(out))
    monkeypatch.setattr(digest, "RESULTS_VERSION", digest.RESULTS_VERSION + 1)
    with pytest.raises(Retrained):
        run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)
    assert earlier.is_dir()


def test_a_folder_stamped_by_another_version_is_refused(out, dataset):
    (the_folder(out) / digest.VERSION_FILE).write_text("7\n")
    now = digest.RESULTS_VERSION
    with pytest.raises(ValueError, match=f"written at results version 7, this code is at {now}"):
        run_experiment(TINY, SETTINGS, out, dataset=dataset, progress=False)


def test_runs_written_before_the_decay_are_found_at_lr_decay_0(dataset, tmp_path):
    """The MovieLens frontier's full-table runs (docs/movielens/frontier/trials.csv, written
    before train.lr_decay) keep their folders at --lr-decay 0; the default plans new ones."""
    full = Experiment("frontier", "t", (Variant("full", "full", x=1),), "params", "p")
    before = Settings(trials=2, optimizer="adagrad", lr_decay=0.0)
    names = [run.folder.name for run in runner.plan_runs(full, before, dataset, tmp_path)]
    assert names == ["full-adagrad-s0-bfe149d4", "full-adagrad-s1-44c97801"]
    (now,) = runner.plan_runs(full, Settings(trials=1, optimizer="adagrad"), dataset, tmp_path)
    assert now.config.train.lr_decay == 0.3 and now.folder.name != names[0]
