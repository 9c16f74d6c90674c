"""CCE's reclustering schedule (the authors': at epoch ends up to 75 % of the run, evenly spaced in
a run shorter than that, never on the last step), its config, an exact resume under it, and
k-means seeded by the feature rather than by the order of the reclustering modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trainkit

from compemb.config import Config, apply_overrides, load_config_text
from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec, module_from_plan
from compemb.training import loop, train
from compemb.training.recluster import feature_seed, recluster_local, recluster_steps

CCE = ["model.embedding.collisions=null", "model.embedding.scheme=cce",
       "model.embedding.rows=6", "model.embedding.chunks=2"]


def authors(epochs: int, until: float = 0.75) -> list[int]:
    """The epochs (1-based) after which the authors' movielens.py reclusters: after epoch
    index e while e < int(until * epochs)."""
    return [e + 1 for e in range(epochs) if e < int(until * epochs)]


@pytest.mark.parametrize("epochs", [2, 3, 4, 10, 30])
def test_multi_epoch_runs_recluster_at_the_authors_epoch_ends(epochs: int) -> None:
    steps = recluster_steps(epochs * 7, 7)
    assert [s // 7 for s in steps] == authors(epochs)
    assert all(s % 7 == 0 for s in steps)


def test_a_run_shorter_than_the_cut_off_reclusters_evenly_before_it() -> None:
    # one epoch of MovieLens-100k at batch 128: 625 steps, the cut-off at step 468
    assert recluster_steps(625, 625) == (156, 312, 468)
    assert recluster_steps(625, 625, times=7) == (66, 133, 200, 267, 334, 401, 468)
    assert recluster_steps(625, 625, times=1) == (468,)
    assert recluster_steps(625, 625, times=2, until=0.5) == (156, 312)
    # max_steps inside the first epoch: the same rule over the steps run
    assert recluster_steps(12, 54, times=3) == (3, 6, 9)
    # more reclusterings asked than steps before the cut-off: each step at most once
    assert recluster_steps(4, 100, times=10) == (1, 2, 3)


def test_never_on_the_last_step_nor_after_the_cut_off() -> None:
    assert recluster_steps(40, 10, until=1.0) == (10, 20, 30)  # not 40: the run's end
    assert recluster_steps(12, 100, every=3, until=1.0) == (3, 6, 9)
    assert recluster_steps(12, 100, every=3) == (3, 6, 9)  # 0.75 x 12 = 9
    assert recluster_steps(100, 100, every=30) == (30, 60)  # 90 is past step 75
    assert recluster_steps(100, 10, every=0) == ()
    assert recluster_steps(1, 1) == ()


def test_schedule_config_defaults_and_old_configs() -> None:
    t = Config().train
    assert (t.recluster_every, t.recluster_until, t.recluster_times) == (None, 0.75, 3)
    old = load_config_text("model: {embedding: {scheme: cce, rows: 8}}\n"
                           "train: {recluster_every: 500}", "an old run's config.yaml")
    assert old.train.recluster_every == 500 and old.train.recluster_until == 0.75
    # an old run of another scheme wrote the defaults: no schedule to refuse
    plain = load_config_text("model: {embedding: {scheme: qr, collisions: 4}}\n"
                             "train: {recluster_every: null, recluster_until: 0.75}", "qr")
    assert plain.model.embedding.scheme == "qr"


@pytest.mark.parametrize(("overrides", "message"), [
    ([*CCE, "train.recluster_until=0"], r"recluster_until=0.0: must be a share of the run in"),
    ([*CCE, "train.recluster_until=1.5"], r"recluster_until=1.5: must be a share"),
    ([*CCE, "train.recluster_times=0"], r"recluster_times=0: must be >= 1"),
    (["train.recluster_times=5", "train.recluster_until=0.5"],
     r"train.recluster_until=0.5, train.recluster_times=5: scheme 'full' has nothing to "
     r"recluster; leave them out"),
])  # fmt: skip
def test_impossible_schedules_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(Config(), ["data.dataset=x", *overrides])


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.synth_folder(tmp_path_factory.mktemp("synth") / "data")


def test_trainer_reclusters_on_the_schedule_and_resumes_exactly(
        synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """12 steps inside an epoch of 54, 3 reclusterings: after steps 3, 6 and 9 (the cut-off),
    none at 12; killed after the checkpoint at step 7, the resumed run reclusters at 9 and
    ends where the uninterrupted one does."""
    config = trainkit.tiny_config(synth, *CCE, "train.max_steps=12", "train.recluster_times=3")
    seen: list[int] = []
    real = loop._recluster

    def record(trainer: loop.Trainer) -> None:
        seen.append(trainer.state.step)
        real(trainer)

    monkeypatch.setattr(loop, "_recluster", record)
    with trainkit.one_thread():
        full = train(config, tmp_path / "full", progress=False)
        assert seen == [3, 6, 9]
        seen.clear()
        resumed = trainkit.crash_then_resume(config, tmp_path / "run", monkeypatch, 7)
        assert seen == [3, 6, 9]
        never = train(apply_overrides(config, ["train.recluster_every=0"]), tmp_path / "never",
                      progress=False)
    assert never["val_logloss"] != pytest.approx(full["val_logloss"], abs=1e-6)
    for key, value in trainkit.final(tmp_path / "full").items():
        assert resumed[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float)
                                else value), key
    saved = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["model"]
             for run in ("full", "run")]
    assert saved[0].keys() == saved[1].keys()
    for key in saved[0]:
        torch.testing.assert_close(saved[1][key], saved[0][key], rtol=0, atol=1e-6, msg=key)


def test_each_feature_is_seeded_by_itself_not_by_module_order() -> None:
    """Feature 2 reclusters alike whether feature 0 is CCE too (threshold 0) or kept full
    (threshold 60): its seed is (train seed, 2, step), not its place among the CCE modules."""
    cards, spec = [50, 7, 300], EmbeddingSpec("cce", rows=6, chunks=2, kmeans_iters=5)
    both = EmbeddingBagCollection(cards, 4, spec)
    alone = EmbeddingBagCollection(cards, 4, spec.with_(threshold=60))
    assert [p.spec.scheme for p in both.plans] == ["cce", "full", "cce"]
    assert [p.spec.scheme for p in alone.plans] == ["full", "full", "cce"]

    def feature_2(arch: EmbeddingBagCollection) -> dict[str, torch.Tensor]:
        prefix = "features.2."
        return {k[len(prefix):]: v.clone() for k, v in arch.state_dict().items()
                if k.startswith(prefix)}

    start = feature_2(both)
    alone.load_state_dict({**alone.state_dict(), **{f"features.2.{k}": v
                                                   for k, v in start.items()}})
    by_hand = module_from_plan(both.plans[2])
    by_hand.load_state_dict(start)
    ids = torch.stack([torch.arange(40) % n for n in cards], dim=1)
    for arch in (both, alone):
        arch.train()(ids)
        recluster_local(arch, seed=5, step=100)
    by_hand.train()(ids[:, 2:])
    by_hand.recluster(feature_seed(5, 2, 100))
    after = [feature_2(both), feature_2(alone), by_hand.state_dict()]
    assert not after[0]["hash_coefficients"].equal(start["hash_coefficients"])
    for key in after[0]:
        assert after[0][key].equal(after[1][key]), key
        assert after[0][key].equal(after[2][key]), key
