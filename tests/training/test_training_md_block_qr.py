"""``compemb train`` with the block mixed-dimension and MD + QR schemes: from the shipped
configs on MovieLens, on planted data (counts from the dataset folder), resumed exactly after a
crash (the frequency ranks come back from the checkpoint), and sharded by TorchRec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trainkit

from compemb.cli import main
from compemb.config import apply_overrides, load_config
from compemb.data import open_dataset
from compemb.embeddings import embedding_parameters
from compemb.training import train

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCHEMES = {  # multiple_of=4: what TorchRec shards
    "md_block": ["model.embedding.scheme=md_block", "model.embedding.alpha=0.3",
                 "model.embedding.base_width=8", "model.embedding.multiple_of=4",
                 "model.embedding.order=frequency"],
    "md_qr": ["model.embedding.scheme=md_qr", "model.embedding.collisions=4",
              "model.embedding.multiple_of=4", "model.embedding.order=frequency"],
}



@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.synth_folder(tmp_path_factory.mktemp("synth") / "data")


@pytest.mark.parametrize("name", ["movielens-dlrm-md-qr.yaml", "movielens-dlrm-md-block.yaml"])
def test_cli_trains_the_shipped_config(name: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    with trainkit.one_thread():
        assert main(["train", "--config", str(CONFIGS / name), "--set", "train.max_steps=5",
                     "--set", "train.eval_every=5", "--set", "train.warmup_steps=0",  # 5 steps
                     "--out", str(tmp_path / "run")]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["steps"] == 5 and 0 < final["test_logloss"] < 1
    config = load_config(tmp_path / "run" / "config.yaml")
    assert config.model.embedding == load_config(CONFIGS / name).model.embedding
    cards = open_dataset("movielens").cardinalities
    assert final["embedding_parameters"] == embedding_parameters(cards, 16,
                                                                 config.model.embedding)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_resume_after_a_crash_is_exact(scheme: str, synth: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = trainkit.tiny_config(synth, "model.embedding.scheme=full")
    config = apply_overrides(config, [*SCHEMES[scheme], "model.embedding_dim=8",
                                      "train.max_steps=12"])
    with trainkit.one_thread():
        full = train(config, tmp_path / "full", progress=False)
        resumed = trainkit.crash_then_resume(config, tmp_path / "run", monkeypatch, 7)
    assert resumed["steps"] == full["steps"] == 12
    for key, value in trainkit.final(tmp_path / "full").items():
        if isinstance(value, float) and key not in ("train_seconds", "samples_per_s"):
            assert resumed[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_sharded_by_torchrec_counts_as_replicated(scheme: str, synth: Path,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("torchrec")
    config = apply_overrides(trainkit.tiny_config(synth, "model.embedding.scheme=full"),
                             [*SCHEMES[scheme], "model.embedding_dim=8", "train.max_steps=6"])
    with trainkit.one_thread():
        replicated = train(config, tmp_path / "r", progress=False)
        sharded = train(apply_overrides(config, ["train.sharding=torchrec"]), tmp_path / "s",
                        progress=False)
    for key in ("steps", "num_parameters", "embedding_parameters"):
        assert sharded[key] == replicated[key], key
    assert 0 < sharded["test_logloss"] < 1
