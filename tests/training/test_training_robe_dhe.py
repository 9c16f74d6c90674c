"""ROBE and DHE through the trainer and the CLI: ``compemb train`` from a config file (DLRM and
DCN), resuming after a crash gives the run that never stopped, ``compemb params`` counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trainkit

from compemb.cli import main
from compemb.config import apply_overrides
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import EmbeddingSpec, embedding_parameters
from compemb.training import train

# ROBE's array below every feature's full table (3 categories x D = 4), so every feature is
# ROBE's (a 64-parameter array would leave the two smallest full tables)
SCHEMES = {"robe": "{scheme: robe, size: 8, block: 2}",
           "dhe": "{scheme: dhe, width: 8, hashes: 16, encoding: gaussian}"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.synth_folder(tmp_path_factory.mktemp("synth") / "data")


@pytest.mark.parametrize("model", ["dlrm", "dcn"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_cli_trains_from_a_config(scheme: str, model: str, synth: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: {synth}}}\n"
                   f"model: {{name: {model}, embedding_dim: 4, embedding: {SCHEMES[scheme]}}}\n")
    out = tmp_path / "run"
    # no warm-up: 3 steps at its first rates would barely move DCN from its init
    assert main(["train", "--config", str(cfg), "--set", "train.max_steps=3", "--set",
                 "train.warmup_steps=0", "--out", str(out), "--device", "cpu"]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["steps"] == 3 and 0 < final["val_logloss"] < 1
    assert (out / "config.yaml").read_text().count(f"scheme: {scheme}") == 1



@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_resume_after_a_crash_is_exact(scheme: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = trainkit.bag_dataset()  # 10 steps per epoch, checkpoints at 7 and 14
    settings = {"robe": ["model.embedding.size=64", "model.embedding.block=2"],
                "dhe": ["model.embedding.width=8", "model.embedding.hashes=16"]}[scheme]
    config = trainkit.tiny_config("in-memory", "model.embedding.collisions=null",
                                  f"model.embedding.scheme={scheme}", *settings,
                                  "train.epochs=2", "train.lr=0.05")  # fmt: skip
    full = train(config, tmp_path / "full", dataset=data, progress=False)
    resumed = trainkit.crash_then_resume(config, tmp_path / "run", monkeypatch, 14, dataset=data)
    assert resumed["steps"] == 20
    for key in ("val_logloss", "test_logloss", "test_auc", "embedding_parameters"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6), key


@pytest.mark.parametrize(("flags", "spec"), [
    (["--scheme", "robe", "--size", "1024"], EmbeddingSpec("robe", size=1024, threshold=100)),
    (["--scheme", "robe", "--size", "1024", "--shared", "false", "--aligned", "false"],
     EmbeddingSpec("robe", size=1024, shared=False, aligned=False, threshold=100)),
    (["--scheme", "dhe", "--width", "32", "--depth", "3", "--hashes", "64"],
     EmbeddingSpec("dhe", width=32, depth=3, hashes=64, threshold=100)),
])
def test_params_counts_what_the_plans_count(flags: list[str], spec: EmbeddingSpec,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["params", *flags, "--threshold", "100", "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert counted["embedding"] == embedding_parameters(CRITEO_KAGGLE_CARDINALITIES, 16, spec)
    big = [n for n in CRITEO_KAGGLE_CARDINALITIES if n > 100]
    small = sum(n * 16 for n in CRITEO_KAGGLE_CARDINALITIES if n <= 100)
    if spec.scheme == "dhe":
        mlp = 64 * 32 + 32 + 2 * (32 * 32 + 32) + 32 * 16 + 16
        # bytes held per feature: its parameters and hash coefficients (2 x 64 int64); a
        # feature whose full table is smaller keeps it (DHE: 105 and 305 categories)
        held = 4 * mlp + 2 * 64 * 8
        compressed = sum(mlp if held <= 64 * n else 16 * n for n in big)
    else:  # ROBE-Z: one array for all; otherwise one per feature (each below a full table)
        compressed = 1024 if spec.shared else len(big) * 1024
    assert counted["embedding"] == compressed + small


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_sharded_on_torchrec_trains_and_counts_as_replicated(scheme: str, synth: Path,
                                                             tmp_path: Path) -> None:
    """One process, train.sharding=torchrec: ROBE-Z's array is one TorchRec table, DHE's
    network runs data-parallel; the counts equal the replicated run's."""
    pytest.importorskip("torchrec")
    spec = {"robe": ["model.embedding.size=64", "model.embedding.block=4"],
            "dhe": ["model.embedding.width=8", "model.embedding.hashes=16"]}[scheme]
    config = trainkit.tiny_config(synth, "model.embedding.collisions=null",
                                  f"model.embedding.scheme={scheme}", *spec, "train.max_steps=3",
                                  "train.optimizer=adagrad")  # fmt: skip
    with trainkit.one_thread():
        replicated = train(config, tmp_path / "r", progress=False)
        sharded = train(apply_overrides(config, ["train.sharding=torchrec"]), tmp_path / "s",
                        progress=False)
    for key in ("steps", "num_parameters", "embedding_parameters"):
        assert sharded[key] == replicated[key], key
    assert 0 < sharded["val_logloss"] < 1
