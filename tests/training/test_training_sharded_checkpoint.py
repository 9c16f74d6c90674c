"""Checkpoints of sharded runs: DCP folders committed atomically, resumed at another world size,
read without running code, exported as one file."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trainkit

pytest.importorskip("torchrec")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb import cli  # noqa: E402
from compemb.config import Config, dump_config  # noqa: E402
from compemb.training import evaluate, evaluate_run, export_run, load_local, train  # noqa: E402
from compemb.training import sharded_checkpoint as sc  # noqa: E402
from compemb.training.checkpoint import CheckpointError  # noqa: E402
from compemb.training.run_folder import RunFolder  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _config(data: Path, *extra: str) -> Config:
    # without warm-up: a world-size change or a single-file checkpoint rounds differently,
    # and at its small first rates these 66 steps amplify that past the 1e-4 compared
    return trainkit.tiny_config(data, "train.batch_size=25", "train.eval_every=0",
                                "train.checkpoint_every=20", "train.sharding=torchrec",
                                "train.warmup_steps=0", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the 300,000-category feature keeps its cardinality: a table of 1.2 MB, sharded
    return trainkit.synth_folder(tmp_path_factory.mktemp("data") / "synth", rows=1900,
                                 big=300_000, numbering="population")  # fmt: skip


@pytest.fixture(scope="module")
def one_rank_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-rank sharded run that kept every checkpoint (66 steps: 20, 40, 60, 66)."""
    out = tmp_path_factory.mktemp("runs") / "one"
    with trainkit.one_thread():
        train(_config(data, "train.keep_checkpoints=10"), out, progress=False)
    return out


def _cut_after_first_checkpoint(run: Path, to: Path) -> Path:
    """A copy of a finished run as if killed after its first checkpoint (step 20)."""
    shutil.copytree(run, to)
    (to / "final.json").unlink()
    for later in sc.complete(to / "checkpoints")[1:]:
        shutil.rmtree(later)
    return to


def test_every_checkpoint_is_complete_and_only_the_newest_are_kept(one_rank_run: Path,
                                                                   data: Path,
                                                                   tmp_path: Path) -> None:
    kept = sc.complete(one_rank_run / "checkpoints")
    assert [p.name for p in kept] == [f"checkpoint-00000{i}" for i in range(1, 5)]
    assert [sc.load_extra(p)["state"]["step"] for p in kept] == [20, 40, 60, 66]
    assert not (one_rank_run / "checkpoint.pt").exists()
    with trainkit.one_thread():
        train(_config(data, "train.keep_checkpoints=2"), tmp_path / "two_kept", progress=False)
    assert sorted(p.name for p in (tmp_path / "two_kept" / "checkpoints").iterdir()) == \
        ["checkpoint-000003", "checkpoint-000004"]


def test_a_save_killed_midway_leaves_the_last_good_checkpoint(one_rank_run: Path,
                                                              tmp_path: Path) -> None:
    """A process killed during a save leaves a ``.partial-N`` folder (or one without its
    extra.pt): never taken as a checkpoint; the resumed run ends as the uninterrupted one."""
    run = _cut_after_first_checkpoint(one_rank_run, tmp_path / "run")
    partial = run / "checkpoints" / ".partial-000002"
    shutil.copytree(sc.complete(one_rank_run / "checkpoints")[1], partial)
    (partial / ".metadata").write_bytes(b"\x80\x04half a file")
    unfinished = run / "checkpoints" / "checkpoint-000002"
    shutil.copytree(sc.complete(one_rank_run / "checkpoints")[1], unfinished)
    (unfinished / sc.EXTRA).unlink()  # killed between DCP's files and extra.pt
    assert RunFolder(run).latest_sharded().name == "checkpoint-000001"
    shutil.rmtree(unfinished)
    resumed = trainkit.compemb("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert trainkit.final(run) == trainkit.final(one_rank_run)
    assert not partial.exists()


class _Marker:
    """Unpickling it creates a file: the code a crafted checkpoint would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


def test_metadata_carrying_code_is_refused_without_running_it(one_rank_run: Path,
                                                              tmp_path: Path) -> None:
    run = _cut_after_first_checkpoint(one_rank_run, tmp_path / "run")
    marker = tmp_path / "ran"
    metadata = sc.latest(run / "checkpoints") / ".metadata"
    metadata.write_bytes(pickle.dumps(_Marker(marker)))
    plain = subprocess.run([sys.executable, "-c", "import pickle, sys; "
                            "pickle.load(open(sys.argv[1], 'rb'))", str(metadata)],
                           capture_output=True, text=True)  # fmt: skip
    assert plain.returncode == 0 and marker.exists(), "the crafted file must carry code"
    marker.unlink()
    with pytest.raises(CheckpointError, match="references pathlib.Path.touch"):
        sc.read_metadata(metadata.parent)
    for command in (["train", "--resume", str(run)], ["evaluate", str(run)],
                    ["export", str(run), str(tmp_path / "out.pt")]):  # fmt: skip
        # in process: a launch per command would cost seconds each and test nothing more
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = cli.main(command)
        assert status != 0, command
        last = stderr.getvalue().strip().splitlines()[-1]
        assert str(metadata) in last and "refused" in last, (command, last)
        assert not marker.exists(), command


def test_non_tensor_items_load_weights_only() -> None:
    """DCP's default planner loads non-tensor items with weights_only=False; ours does not."""
    planner = sc.SafeLoadPlanner()
    planner.state_dict = {}

    class Item:
        class dest_index:  # noqa: N801
            fqn = "x"

    good = io.BytesIO()
    torch.save({"step": 3}, good)
    good.seek(0)
    planner.load_bytes(Item, good)
    assert planner.state_dict["x"] == {"step": 3}
    evil = io.BytesIO()
    torch.save(_Marker(Path("/nonexistent/never")), evil)
    evil.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        planner.load_bytes(Item, evil)


def test_resume_on_another_world_size_ends_where_the_uninterrupted_run_does(
        one_rank_run: Path, data: Path, tmp_path: Path) -> None:
    """1 -> 2 and 2 -> 1 ranks: DCP reshards the tables and fused state; the test log loss
    equals the uninterrupted run's within 1e-4. A 2-rank run is evaluated sharded under
    torchrun and whole in one process (also from its exported file) alike."""
    (tmp_path / "c.yaml").write_text(dump_config(_config(data, "train.keep_checkpoints=10")))
    two = tmp_path / "two"
    ran = subprocess.run([*TORCHRUN, "-m", "compemb.cli", "train", "--config",
                          str(tmp_path / "c.yaml"), "--out", str(two)],
                         env=trainkit.env(), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    expected = json.loads((one_rank_run / "final.json").read_text())
    for run, command in ((two, [sys.executable, "-m", "compemb.cli"]), (one_rank_run, TORCHRUN
                         + ["-m", "compemb.cli"])):  # fmt: skip
        cut = _cut_after_first_checkpoint(run, tmp_path / f"cut-{run.name}")
        resumed = subprocess.run([*command, "train", "--resume", str(cut)], env=trainkit.env(),
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        final = json.loads((cut / "final.json").read_text())
        assert final["world_size"] == (1 if run == two else 2)
        assert final["test_logloss"] == pytest.approx(expected["test_logloss"], abs=1e-4)
    sharded = subprocess.run([*TORCHRUN, "-m", "compemb.cli", "evaluate", str(two), "--split",
                              "val"], env=trainkit.env(), capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    whole = evaluate_run(two, "val")
    two_final = json.loads((two / "final.json").read_text())
    assert json.loads(sharded.stdout)["val_logloss"] == pytest.approx(whole["val_logloss"],
                                                                      abs=1e-6)
    assert whole["val_logloss"] == pytest.approx(two_final["val_logloss"], abs=1e-6)
    exported = export_run(two, tmp_path / "model.pt")
    saved = torch.load(exported, weights_only=True)
    config = RunFolder(two).read_config()
    model = load_local(config, _dataset(config), two)
    assert saved.keys() == {"model", "config"} and saved["config"] == config.to_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
    with trainkit.one_thread():
        again = evaluate(model, _dataset(config), "val", 256)
    assert again["val_logloss" if "val_logloss" in again else "logloss"] == pytest.approx(
        two_final["val_logloss"], abs=1e-6)


def _dataset(config: Config):  # noqa: ANN202
    from compemb.data import open_dataset

    return open_dataset(config.data.dataset)


def test_single_file_checkpoint_of_an_earlier_sharded_run_resumes(one_rank_run: Path,
                                                                  tmp_path: Path) -> None:
    """Sharded runs before DCP checkpoints wrote one checkpoint.pt: whole tables under the
    local collection's keys and the fused optimizers' state whole (``<parameter>/<state>``).
    Such a run still resumes, to the uninterrupted run's metrics."""
    from compemb.training import sharding
    from compemb.training.build import model_for

    run = _cut_after_first_checkpoint(one_rank_run, tmp_path / "run")
    first = sc.latest(run / "checkpoints")
    config = RunFolder(run).read_config()
    dataset = _dataset(config)
    extra = sc.load_extra(first)
    model = load_local(config, dataset, run)
    started = sharding.ensure_process_group()
    try:
        net = model_for(config, dataset, "cpu", torchrec=True)
        sharded = sharding.ShardedTraining.prepare(net, "adagrad", 0.01, torch.device("cpu"),
                                                   verbose=False)  # fmt: skip
        sharded.load(first)
        fused = {f"{p}/{s}": v.local_shards()[0].tensor.clone()  # one rank: shards are whole
                 for p, states in sharded.net.fused_optimizer.state_dict()["state"].items()
                 for s, v in states.items()}  # fmt: skip
    finally:
        sharding.end_process_group(started)
    assert fused, "the run must have sharded tables with fused state"
    torch.save({"model": model.state_dict(), "optimizer": extra["optimizer"],
                "fused_optimizer": fused, "state": extra["state"], "rng": extra["rng"],
                "config": extra["config"]}, run / "checkpoint.pt")  # fmt: skip
    shutil.rmtree(run / "checkpoints")
    resumed = trainkit.compemb("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert trainkit.final(run) == trainkit.final(one_rank_run)


@pytest.mark.parametrize("settings", [
    ["model.embedding.scheme=md", "model.embedding.alpha=0.3", "model.embedding.base_width=4",
     "model.embedding.multiple_of=4"],
    ["model.embedding.scheme=tt", "model.embedding.rank=2"],
    ["model.embedding.scheme=robe", "model.embedding.size=4096", "model.embedding.block=4"],
    ["model.embedding.collisions=null", "model.embedding.scheme=cce", "model.embedding.rows=64",
     "model.embedding.chunks=2", "model.embedding.kmeans_iters=10", "train.recluster_every=15"],
], ids=["md", "tt", "robe", "cce-reclustered"])  # fmt: skip
def test_sharded_runs_of_other_schemes_resume_exactly(data: Path, tmp_path: Path,
                                                      settings: list[str]) -> None:
    """The sharded checkpoint path is the same for every scheme: a run cut after its first
    checkpoint resumes to the uninterrupted run's metrics."""
    config = _config(data, "model.embedding_dim=8", "train.keep_checkpoints=10", *settings)
    with trainkit.one_thread():
        train(config, tmp_path / "straight", progress=False)
    cut = _cut_after_first_checkpoint(tmp_path / "straight", tmp_path / "cut")
    resumed = trainkit.compemb("train", "--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert trainkit.final(cut) == trainkit.final(tmp_path / "straight")


def test_a_checkpoint_of_per_id_lookups_loads_where_they_are_pooled(tmp_path: Path) -> None:
    """A ROBE-Z run's checkpoint from when one-hot features looked the array up per id
    (TorchRec's unpooled collection; the features now look it up pooled, a one-id bag per
    row) loads: the same table and fused Adagrad state."""
    from compemb.embeddings import EmbeddingSpec
    from compemb.embeddings.torchrec import TorchRecSparseArch
    from compemb.models import build_model
    from compemb.training import sharding

    cards, spec = [4000, 900], EmbeddingSpec("robe", size=1 << 19, block=4)

    def prepared(one_hot: int) -> sharding.ShardedTraining:
        arch = TorchRecSparseArch(cards, 8, spec, one_hot=one_hot, seed=one_hot, device="meta")
        model = build_model("dlrm", cards, 13, 8, spec, sparse_arch=arch)
        return sharding.ShardedTraining.prepare(model, "adagrad", 0.1, torch.device("cpu"),
                                                verbose=False)  # fmt: skip

    def table(run: sharding.ShardedTraining) -> tuple[torch.Tensor, torch.Tensor]:
        (weight,) = [v for k, v in run.net.state_dict().items() if k.endswith(".robe.weight")]
        (moments,) = [m["robe.momentum1"] for m in run._state()["fused"].values()]
        return weight.local_shards()[0].tensor, moments.local_shards()[0].tensor

    started = sharding.ensure_process_group()
    try:
        per_id, pooled = prepared(0), prepared(len(cards))
        assert not per_id.sharded.collection.routes[0].pooled
        assert pooled.sharded.collection.routes[0].pooled
        ids = torch.tensor([[3, 7], [3999, 0]])
        per_id.net(torch.randn(2, 13), ids).sum().backward()  # fused Adagrad: one step
        saved = per_id.save(tmp_path, {})
        assert not torch.equal(table(per_id)[0], table(pooled)[0])
        pooled.load(saved)
        for a, b in zip(table(pooled), table(per_id), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(pooled.net(torch.zeros(2, 13), ids),
                           per_id.net(torch.zeros(2, 13), ids))
    finally:
        sharding.end_process_group(started)
