"""``compemb train`` with the mixed-dimension and TT schemes from a config file: DLRM and DCN on
MovieLens and planted data, resumed after a crash, and sharded by TorchRec."""

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

# TorchRec 1.8 deprecation notices and FBGEMM's autograd fallback notice (as in the other
# TorchRec tests, whose gradient checks cover it).
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

SCHEMES = {  # multiple_of=4: TorchRec refuses narrower widths (FBGEMM would not shard them)
    "md": {"scheme": "md", "alpha": 0.3, "base_width": 8, "multiple_of": 4},
    "tt": {"scheme": "tt", "rank": 4},
}



@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.synth_folder(tmp_path_factory.mktemp("synth") / "data")


def _config_file(path: Path, dataset: str | Path, model: str, scheme: str) -> Path:
    path.write_text(f"data: {{dataset: {dataset}}}\n"
                    f"model: {{name: {model}, embedding_dim: 8, "
                    f"embedding: {json.dumps(SCHEMES[scheme])}}}\n"
                    "train: {batch_size: 64, max_steps: 6, eval_every: 3, checkpoint_every: 3, "
                    "warmup_steps: 0}\n")  # 6 steps: no warm-up
    return path


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("model", ["dlrm", "dcn"])
@pytest.mark.parametrize("data", ["movielens", "planted"])
def test_cli_trains_from_a_config(scheme: str, model: str, data: str, synth: Path,
                                  tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = synth if data == "planted" else "movielens"
    cfg = _config_file(tmp_path / "c.yaml", dataset, model, scheme)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["steps"] == 6 and 0 < final["test_logloss"] < 1
    config = load_config(tmp_path / "run" / "config.yaml")
    assert config.model.embedding.to_dict().items() >= SCHEMES[scheme].items()
    cards = open_dataset(dataset).cardinalities
    assert final["embedding_parameters"] == embedding_parameters(cards, 8, config.model.embedding)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_resume_after_a_crash_is_exact(scheme: str, synth: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = trainkit.tiny_config(synth, "model.embedding.scheme=full")
    config = apply_overrides(config, [*(f"model.embedding.{k}={v}" for k, v in
                                        SCHEMES[scheme].items()),
                                      "train.max_steps=12", "model.name=dcn"])
    with trainkit.one_thread():
        full = train(config, tmp_path / "full", progress=False)
        resumed = trainkit.crash_then_resume(config, tmp_path / "run", monkeypatch, 7)
    assert resumed["steps"] == 12
    for key, value in trainkit.final(tmp_path / "full").items():
        if isinstance(value, float):
            assert resumed[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert resumed[key] == value, key
    assert full["steps"] == 12


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_sharded_by_torchrec_counts_as_replicated(scheme: str, synth: Path,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("torchrec")
    cfg = _config_file(tmp_path / "c.yaml", synth, "dlrm", scheme)
    with trainkit.one_thread():
        replicated = train(load_config(cfg), tmp_path / "r", progress=False)
        sharded = train(apply_overrides(load_config(cfg), ["train.sharding=torchrec"]),
                        tmp_path / "s", progress=False)
    for key in ("steps", "num_parameters", "embedding_parameters"):
        assert sharded[key] == replicated[key], key
    assert 0 < sharded["test_logloss"] < 1
