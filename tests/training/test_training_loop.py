"""The trainer in process: metrics files, determinism, resume, divergence, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import trainkit

from compemb.cli import main
from compemb.config import load_config
from compemb.data import open_dataset
from compemb.training import evaluate_run, loop, train
from compemb.training.checkpoint import load_checkpoint
from compemb.training.run_folder import RunFolder


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.synth_folder(tmp_path_factory.mktemp("synth") / "data")


def test_run_folder_contents(synth: Path, tmp_path: Path) -> None:
    config = trainkit.tiny_config(synth, "model.name=dcn")
    result = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert load_config(run / "config.yaml") == config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 54]  # 1722 rows / 32
    assert all(0 < r["val_logloss"] < 1 for r in records)
    for key in ("test_logloss", "test_accuracy", "test_auc", "val_logloss", "num_parameters",
                "embedding_parameters", "samples_per_s"):  # fmt: skip
        assert result[key] is not None, key
    assert result["val_logloss"] == records[-1]["val_logloss"]
    assert result["steps"] == 54 and result["epochs_completed"] == 1 and result["samples"] == 1722
    # It learned: the planted model's base-rate loss is about 0.64.
    assert result["test_logloss"] < 0.62 and result["test_auc"] > 0.65
    checkpoint = load_checkpoint(run / "checkpoint.pt")  # weights_only=True
    assert checkpoint["state"]["step"] == 54
    assert evaluate_run(run, "test")["test_logloss"] == pytest.approx(result["test_logloss"])


def test_same_seed_same_metrics_other_seed_differs(tmp_path: Path) -> None:
    data = trainkit.bag_dataset()
    config = trainkit.tiny_config("in-memory", "train.max_steps=12")
    a = train(config, tmp_path / "a", dataset=data, progress=False)
    b = train(config, tmp_path / "b", dataset=data, progress=False)
    c = train(trainkit.tiny_config("in-memory", "train.max_steps=12", "train.seed=1"),
              tmp_path / "c", dataset=data, progress=False)  # fmt: skip
    strip = lambda r: {k: v for k, v in r.items() if k not in trainkit.TIMING_KEYS}  # noqa: E731
    assert strip(a) == strip(b)
    assert a["test_logloss"] != c["test_logloss"]



def test_shuffle_seed_moves_the_order_not_the_init(tmp_path: Path, monkeypatch) -> None:
    data = trainkit.bag_dataset()
    orders: list[int] = []
    batches = type(data).batches

    def spy(self, split, batch_size, **kw):
        if kw.get("shuffle"):  # training batches (evaluation reads in order)
            orders.append(kw["seed"])
        return batches(self, split, batch_size, **kw)

    monkeypatch.setattr(type(data), "batches", spy)
    base = trainkit.tiny_config("in-memory", "train.max_steps=3", "train.seed=1")
    apart = trainkit.tiny_config("in-memory", "train.max_steps=3", "train.seed=1",
                                 "train.shuffle_seed=7")  # fmt: skip
    train(base, tmp_path / "a", dataset=data, progress=False)
    train(apart, tmp_path / "b", dataset=data, progress=False)
    assert orders == [1, 7]  # epoch 0 of each
    # the same init seed, another order: the runs differ (only through their batches)
    assert trainkit.final(tmp_path / "a")["test_logloss"] != \
        trainkit.final(tmp_path / "b")["test_logloss"]


def _close(a: dict, b: dict) -> bool:
    """Equal keys, strings equal, numbers within 1e-6."""
    if a.keys() != b.keys():
        return False
    for k in a:
        if k in trainkit.TIMING_KEYS:
            continue
        if isinstance(a[k], float):
            if abs(a[k] - b[k]) > 1e-6:
                return False
        elif a[k] != b[k]:
            return False
    return True


@pytest.mark.parametrize("optimizer", ["adagrad", "amsgrad", "sgd"])
def test_resume_after_a_crash_is_exact(
    tmp_path: Path, optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = trainkit.bag_dataset()  # 10 steps per epoch, checkpoints at 7 and 14
    config = trainkit.tiny_config("in-memory", f"train.optimizer={optimizer}", "train.lr=0.05",
                                  "train.epochs=2", "model.name=dcn")  # fmt: skip
    full = train(config, tmp_path / "full", dataset=data, progress=False)
    # killed in the second epoch, after a record at step 10
    resumed = trainkit.crash_then_resume(config, tmp_path / "run", monkeypatch, 14, dataset=data)
    assert resumed["steps"] == 20 and resumed["epochs_completed"] == 2
    assert _close(resumed, full)
    def records(run: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    lines, expected = records("run"), records("full")
    assert len(lines) == len(expected) == 2 and all(map(_close, lines, expected))


def test_nan_loss_stops_with_the_iteration_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    data = trainkit.bag_dataset()
    config = trainkit.tiny_config("in-memory", "train.optimizer=sgd", "train.lr=1e38",
                                  "train.checkpoint_every=1", "model.name=dcn")  # fmt: skip
    with pytest.raises(ValueError, match=r"loss is (nan|inf) at iteration (\d+)") as info:
        train(config, tmp_path / "run", dataset=data, progress=False)
    step = int(str(info.value).split("iteration ")[1].split(" ")[0])
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["state"]["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert not (tmp_path / "run" / "final.json").exists()


def test_existing_run_folder_is_not_overwritten(synth: Path, tmp_path: Path) -> None:
    config = trainkit.tiny_config(synth, "train.max_steps=2")
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="differs"):
        train(trainkit.tiny_config(synth, "train.max_steps=3"), tmp_path / "run", resume=True)


def test_cli_train_and_evaluate(synth: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: {synth}}}\n"
                   "model: {embedding: {scheme: qr, collisions: 4}}\n")
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--set", "train.max_steps=3", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["steps"] == 3 and final == json.loads((out / "final.json").read_text())
    assert main(["evaluate", str(out), "--split", "val"]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # the saved weights give the same metrics
    assert evaluated["val_logloss"] == pytest.approx(final["val_logloss"], abs=1e-6)
    assert evaluated["val_auc"] == pytest.approx(final["val_auc"], abs=1e-6)
    assert main(["train", "--config", str(cfg), "--set", "model.embedding.colisions=4", "--out",
                 str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "did you mean 'collisions'" in capsys.readouterr().err
    bad = ["train", "--config", str(cfg), "--set", "model.embedding.scheme=hash", "--set",
           "model.embedding.collisions=null", "--out", str(tmp_path / "bad")]  # fmt: skip
    assert main(bad) == 2
    assert "model.embedding: scheme 'hash' needs collisions" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_frequency_aware_run_evaluates_with_its_own_maps(synth: Path, tmp_path: Path) -> None:
    """hot rows and a frequency order read the dataset's counts; the maps they make are in the
    checkpoint, so evaluation reproduces training's metrics."""
    config = trainkit.tiny_config(synth, "train.max_steps=5", "model.embedding.hot=8",
                                  "model.embedding.order=interleaved")
    final = train(config, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    assert state["sparse_arch.features.4.hot_ids"].shape == (8,)
    n = open_dataset(synth).cardinalities[4]
    assert state["sparse_arch.features.4.relabel"].shape == (n,)
    evaluated = evaluate_run(tmp_path / "run", "val")
    assert evaluated["val_logloss"] == pytest.approx(final["val_logloss"], abs=1e-6)


def test_trainer_fused_adagrad_equals_torch_adagrad_on_sparse_tables(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Tables large enough for sparse gradients (> 4,096 stacked rows) route their row
    gradients into the fused optimizer; in the trainer's order (forward, zero_grad, backward)
    they must train exactly as with torch's Adagrad."""
    data = trainkit.synth_folder(tmp_path / "data", rows=3000, big=6000)
    config = trainkit.tiny_config(data, "train.max_steps=6", "model.embedding.scheme=full")
    with trainkit.one_thread():
        fused = train(config, tmp_path / "fused", progress=False)
        original = loop.make_optimizer
        monkeypatch.setattr(loop, "make_optimizer",
                            lambda *a, **k: original(*a, **{**k, "fused": False}))
        reference = train(config, tmp_path / "torch", progress=False)
    a = load_checkpoint(tmp_path / "fused" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "torch" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert fused["val_logloss"] == pytest.approx(reference["val_logloss"], abs=1e-6)


def _rates(tmp_path: Path, monkeypatch, *overrides: str) -> list[float]:
    """The learning rate each training step of a tiny run ran with."""
    rates: list[float] = []
    step = loop._train_step

    def spy(trainer, batch):
        rows = step(trainer, batch)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return rows

    monkeypatch.setattr(loop, "_train_step", spy)
    config = trainkit.tiny_config("in-memory", *overrides)
    train(config, tmp_path / "run", dataset=trainkit.bag_dataset(), progress=False)
    return rates


def test_warmup_raises_the_rate_linearly_then_holds(tmp_path: Path, monkeypatch) -> None:
    rates = _rates(tmp_path, monkeypatch, "train.max_steps=6", "train.warmup_steps=4",
                   "train.lr=0.02", "train.lr_decay=0")  # fmt: skip
    assert rates == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])


def test_decay_lowers_the_rate_linearly_over_the_last_share(tmp_path: Path, monkeypatch) -> None:
    rates = _rates(tmp_path, monkeypatch, "train.max_steps=8", "train.warmup_steps=2",
                   "train.lr_decay=0.5", "train.lr=0.04")  # fmt: skip
    # warm-up over steps 0-1, constant, then the last 4 of 8 steps at 4/4, 3/4, 2/4, 1/4
    assert rates == pytest.approx([0.02, 0.04, 0.04, 0.04, 0.04, 0.03, 0.02, 0.01])
    with pytest.raises(ValueError, match=r"train.lr_decay=1.0: must be in \[0, 1\)"):
        trainkit.tiny_config("in-memory", "train.lr_decay=1.0")


def test_a_run_written_before_warmup_resumes_without_it(tmp_path: Path) -> None:
    """A run's config.yaml holds every field there was when it was written: one without
    train.warmup_steps or train.lr_decay ran with neither (config.PAST_DEFAULTS), whatever
    today's defaults."""
    config = trainkit.tiny_config("in-memory", "train.max_steps=2", "train.warmup_steps=0",
                                  "train.lr_decay=0")  # fmt: skip
    run = tmp_path / "run"
    train(config, run, dataset=trainkit.bag_dataset(), progress=False)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("  warmup_steps: 0\n", "")
                                     .replace("  lr_decay: 0.0\n", ""))  # fmt: skip
    assert "warmup_steps" not in (run / "config.yaml").read_text()
    assert "lr_decay" not in (run / "config.yaml").read_text()
    assert RunFolder(run).read_config().train.warmup_steps == 0
    assert RunFolder(run).read_config().train.lr_decay == 0
    assert load_config(run / "config.yaml").train.warmup_steps == 100  # a hand-written file
    assert load_config(run / "config.yaml").train.lr_decay == 0.3
    (run / "final.json").unlink()
    train(config, run, resume=True, dataset=trainkit.bag_dataset(), progress=False)
