"""CCE through the trainer and the CLI: ``compemb train`` on MovieLens with reclustering,
``compemb params`` counts tables and id maps, the settings that cannot work are refused, and
sharded training without reclustering counts as replicated (the schedule and an exact resume
under it: test_training_recluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trainkit

from compemb.cli import main
from compemb.config import apply_overrides, dump_config
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import EmbeddingSpec, embedding_parameters
from compemb.embeddings._universal import hash_coefficients
from compemb.training import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
CCE = ["model.embedding.collisions=null", "model.embedding.scheme=cce",
       "model.embedding.rows=6", "model.embedding.chunks=2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.synth_folder(tmp_path_factory.mktemp("synth") / "data")


def test_cli_trains_on_movielens_and_reclusters(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {dataset: movielens}\n"
                   "model: {name: dlrm, embedding_dim: 8, "
                   "embedding: {scheme: cce, rows: 16, chunks: 2, kmeans_iters: 10}}\n"
                   "train: {batch_size: 256, max_steps: 6, recluster_every: 3}\n")
    out = tmp_path / "run"
    with trainkit.one_thread():
        assert main(["train", "--config", str(cfg), "--out", str(out), "--device", "cpu"]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["steps"] == 6 and 0 < final["test_logloss"] < 1
    assert "recluster_every: 3" in (out / "config.yaml").read_text()
    state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    features = sorted({k.split(".")[2] for k in state if k.endswith(".assignment")})
    assert features  # users and items are both larger than 2 x 16 rows
    first = hash_coefficients(4, 0)[:, 2:]
    for f in features:
        prefix = f"sparse_arch.features.{f}."
        # reclustered: new hashes, and the seen ids share rows (16 of them per chunk)
        assert not state[prefix + "hash_coefficients"].equal(first)
        seen = state[prefix + "seen"]
        assert 16 < int(seen.sum()) < seen.numel()
        assert state[prefix + "assignment"][seen].unique().numel() <= 16



def test_params_counts_tables_and_id_maps(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--scheme", "cce", "--rows", "64", "--chunks", "4",
                 "--threshold", "100", "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    spec = EmbeddingSpec("cce", rows=64, chunks=4, threshold=100)
    assert counted["embedding"] == embedding_parameters(CRITEO_KAGGLE_CARDINALITIES, 16, spec)
    # compressed: n > 100 and n > 2 x 64 rows (the 105-category feature keeps its full table)
    cce = [n for n in CRITEO_KAGGLE_CARDINALITIES if n > 128]
    full = sum(n * 16 for n in CRITEO_KAGGLE_CARDINALITIES if n <= 128)
    assert counted["embedding"] == len(cce) * 2 * 64 * 16 + full
    # assignment n x 4 uint8 (R = 64 rows), hashes 2 x 4 int64, the seen mask n bytes
    assert counted["index_bytes"] == sum(n * 4 + 2 * 4 * 8 + n for n in cce)


@pytest.mark.parametrize(("overrides", "message"), [
    ([*CCE, "train.recluster_every=-1"], "train.recluster_every=-1: must be >= 0"),
    (["train.recluster_every=5"], "scheme 'qr' has nothing to recluster"),
    ([*CCE, "model.embedding.chunks=3"], "embedding_dim=4 must be a multiple of chunks=3"),
])
def test_impossible_settings_are_refused(overrides: list[str], message: str,
                                         synth: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        config = trainkit.tiny_config(synth, *overrides)
        train(config, tmp_path / "run", progress=False)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_sharded_on_torchrec_trains_reclusters_and_counts_as_replicated(synth: Path,
                                                                        tmp_path: Path) -> None:
    """Each chunk a TorchRec table, the assignment and hashes in the route's data-parallel
    module; the rank owning a chunk table reclusters it (one rank here)."""
    pytest.importorskip("torchrec")
    config = trainkit.tiny_config(synth, *CCE, "model.embedding.chunks=1", "train.max_steps=6",
                                  "train.optimizer=adagrad", "train.recluster_every=0")  # fmt: skip
    sharding = ["train.sharding=torchrec"]
    with trainkit.one_thread():
        replicated = train(config, tmp_path / "r", progress=False)
        sharded = train(apply_overrides(config, sharding), tmp_path / "s", progress=False)
        reclustered = train(apply_overrides(config, [*sharding, "train.recluster_every=3"]),
                            tmp_path / "c", progress=False)
    for key in ("steps", "num_parameters", "embedding_parameters"):
        assert sharded[key] == replicated[key] == reclustered[key], key
    assert 0 < sharded["val_logloss"] < 1 and 0 < reclustered["val_logloss"] < 1
    assert reclustered["val_logloss"] != pytest.approx(sharded["val_logloss"], abs=1e-6)


def test_torchrec_refuses_chunks_not_a_multiple_of_4_wide(synth: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchrec")
    config = trainkit.tiny_config(synth, *CCE, "train.sharding=torchrec")  # D=4 over 2 chunks
    with pytest.raises(ValueError, match="a width that is a multiple of 4"):
        train(config, tmp_path / "s", progress=False)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_two_ranks_recluster_as_one(synth: Path, tmp_path: Path) -> None:
    """Sharded over 2 ranks (torchrun, gloo), each chunk table on one of them: its owner
    reclusters it and broadcasts the assignment, after the ranks' seen ids are merged; the run
    ends where the 1-rank sharded run does."""
    pytest.importorskip("torchrec")
    config = trainkit.tiny_config(synth, *CCE, "model.embedding_dim=8", "train.max_steps=12",
                                  "train.recluster_every=4", "train.sharding=torchrec",
                                  "train.batch_size=64")  # fmt: skip
    (tmp_path / "c.yaml").write_text(dump_config(config))
    two = subprocess.run([*TORCHRUN, "-m", "compemb.cli", "train", "--config",
                          str(tmp_path / "c.yaml"), "--out", str(tmp_path / "two")],
                         env=trainkit.env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    plan = [line.split() for line in two.stderr.splitlines() if line.startswith("f")]
    owners = {words[-1] for words in plan if words[0].startswith(("f2__", "f4__"))}
    assert owners == {"[0]", "[1]"}, two.stderr[-3000:]  # both ranks own chunk tables
    with trainkit.one_thread():
        one = train(config, tmp_path / "one", progress=False)
    final = json.loads((tmp_path / "two" / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 12
    assert final["test_logloss"] == pytest.approx(one["test_logloss"], abs=1e-4)


def test_two_replicated_ranks_recluster_as_one(synth: Path, tmp_path: Path) -> None:
    """torchrun, 2 ranks under DDP: each keeps its own seen ids (not broadcast from rank 0),
    merged before each reclustering, so both recluster alike and the run ends where one
    process does."""
    config = trainkit.tiny_config(synth, *CCE, "train.max_steps=12", "train.recluster_every=4",
                                  "train.batch_size=64", "train.warmup_steps=0")  # fmt: skip
    (tmp_path / "c.yaml").write_text(dump_config(config))
    two = subprocess.run([*TORCHRUN, "-m", "compemb.cli", "train", "--config",
                          str(tmp_path / "c.yaml"), "--out", str(tmp_path / "two")],
                         env=trainkit.env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    with trainkit.one_thread():
        one = train(config, tmp_path / "one", progress=False)
    final = json.loads((tmp_path / "two" / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 12
    assert final["test_logloss"] == pytest.approx(one["test_logloss"], abs=1e-4)
    saved = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)["model"]
    ones = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    for key in saved:
        if key.endswith((".seen", ".assignment", ".hash_coefficients")):
            assert saved[key].equal(ones[key]), key


def test_chunk_tables_are_sharded_table_wise_only() -> None:
    """So that one rank holds each whole and can recluster it (even where FBGEMM offers
    row-wise sharding: CUDA)."""
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection
    from compemb.training.sharding import sharding_types

    trc = TorchRecEmbeddingCollection([100_000, 50_000], 16,
                                      EmbeddingSpec("cce", rows=20_000, chunks=2),
                                      device="meta")  # fmt: skip
    robe = TorchRecEmbeddingCollection([100_000], 16, EmbeddingSpec("robe", size=400_000),
                                       device="meta")  # fmt: skip
    for device in ("cpu", "cuda"):
        types = sharding_types(trc, torch.device(device), small_bytes=0)
        assert types == {t: ["table_wise"] for t in ("f0__0", "f0__1", "f1__0", "f1__1")}
    assert "row_wise" in sharding_types(robe, torch.device("cuda"), small_bytes=0)["robe"]
