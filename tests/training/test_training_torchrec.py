"""TorchRec sharding on 2 gloo ranks: forward, backward and optimizer steps equal one process's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import trainkit

pytest.importorskip("torchrec")
# TorchRec 1.8 deprecation notices (ShardedTensor, broadcast_buffers) and FBGEMM's autograd
# fallback notice, which the gradient checks here cover.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.config import apply_overrides, dump_config, load_config  # noqa: E402
from compemb.embeddings import EmbeddingSpec  # noqa: E402
from compemb.embeddings.torchrec import TorchRecSparseArch  # noqa: E402
from compemb.models import build_model  # noqa: E402
from compemb.training import evaluate_run, sharding, train  # noqa: E402

WORKER = Path(__file__).with_name("torchrec_worker.py")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_two_ranks_match_one_process() -> None:
    """The worker asserts on every rank (within 1e-5), for exact Adagrad, row-wise Adagrad and
    SGD: logits of each rank's share, gradients of the dense and data-parallel parameters, and
    every parameter after each of three steps (the last leaves a rank without rows), with the
    sharded model and fused optimizer state saved whole and reloaded after the first."""
    optimizers = ["adagrad", "rowwise_adagrad", "sgd"]
    run = subprocess.run([*TORCHRUN, str(WORKER), *optimizers], env=trainkit.env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    for optimizer in optimizers:
        assert run.stdout.count(f" {optimizer}\n") == 4, run.stdout
    assert "table_wise" in run.stdout and "data_parallel" in run.stdout


def test_robe_z_shared_table_on_two_ranks_matches_one_process() -> None:
    """ROBE-Z's one table, which every feature reads (two rows per unaligned block), sharded
    table-wise over 2 ranks: as the worker checks for the paper's schemes, with Adagrad;
    looked up per id (a bag feature reads it) and pooled (one-hot features only)."""
    run = subprocess.run([*TORCHRUN, str(WORKER), "robe", "adagrad"], env=trainkit.env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert run.stdout.count(" per id adagrad\n") == 1, run.stdout
    assert run.stdout.count(" pooled adagrad\n") == 1, run.stdout
    for part in run.stdout.split(" adagrad\n")[1:]:  # each run's plan
        assert re.search(r"^robe +\d+ x 4 table_wise", part, re.MULTILINE), part


def test_unknown_fused_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="amsgrad.*no fused kernel"):
        sharding.fused_optimizer_params("amsgrad", 0.001)


@pytest.mark.parametrize("name", ["dlrm", "dcn"])
@pytest.mark.parametrize("spec", [
    EmbeddingSpec("qr", operation="mult", collisions=4),
    EmbeddingSpec("path", collisions=4, path_hidden=4),
    EmbeddingSpec("feature", collisions=4),
], ids=lambda s: s.scheme)  # fmt: skip
def test_model_on_torchrec_keeps_outputs_and_checkpoints(name: str, spec: EmbeddingSpec) -> None:
    """A model whose sparse_arch moves to TorchRec gives the same logits; its state in the
    checkpoint form loads into the replicated model, and back."""
    torch.manual_seed(0)
    cards = [500, 40, 3]
    model = build_model(name, cards, 2, 8, spec)
    dense = torch.randn(6, 2)
    ids = torch.stack([torch.randint(0, n, (6,)) for n in cards], 1)
    before = model(dense, ids)
    moved = sharding.to_torchrec(model)
    assert isinstance(moved.sparse_arch, TorchRecSparseArch)
    torch.testing.assert_close(moved(dense, ids), before, rtol=0, atol=1e-6)
    state = sharding.local_model_state(dict(moved.state_dict()), moved.sparse_arch)
    fresh = build_model(name, cards, 2, 8, spec)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(dense, ids), before, rtol=0, atol=1e-6)
    again = sharding.sharded_model_state(state, moved.sparse_arch)
    assert again.keys() == moved.state_dict().keys()


@pytest.mark.parametrize("chunk", [64 << 20, 40])
def test_one_process_training_resumes_exactly(tmp_path: Path, chunk: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank (a gloo group of its own), tables built on meta: three steps straight equal
    one step, a checkpoint folder (shards, dense and fused optimizer state; whole shards, or
    written in blocks of one row), a new process's worth of setup from it, and two more
    steps."""
    from compemb.training import sharded_checkpoint

    monkeypatch.setattr(sharded_checkpoint, "CHUNK_BYTES", chunk)
    started = sharding.ensure_process_group()
    try:
        cards, spec = [300, 20, 3], EmbeddingSpec("qr", operation="mult", collisions=4)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(8, 2, generator=g),
                    torch.stack([torch.randint(0, n, (8,), generator=g) for n in cards], 1),
                    torch.randint(0, 2, (8,), generator=g).float()) for _ in range(3)]

        def steps(run: sharding.ShardedTraining, todo: list) -> None:
            for dense, ids, labels in todo:
                run.optimizer.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    run.net(dense, ids), labels)
                loss.backward()
                run.optimizer.step()

        def fresh(seed: int) -> sharding.ShardedTraining:
            torch.manual_seed(seed)
            # unpooled mult tables are never data-parallel: sharded even at this size
            arch = TorchRecSparseArch(cards, 8, spec, seed=seed, device="meta")
            model = build_model("dlrm", cards, 2, 8, spec, sparse_arch=arch)
            assert all(p.is_meta for p in arch.parameters())
            return sharding.ShardedTraining.prepare(model, "adagrad", 0.05, torch.device("cpu"),
                                                    verbose=False)

        straight = fresh(0)
        steps(straight, batches)

        first = fresh(0)
        steps(first, batches[:1])
        saved = first.save(tmp_path / "checkpoints", {"note": "first"})
        files = len(list(saved.glob("*.distcp")))
        assert files > 150 if chunk == 40 else files < 60, files
        second = fresh(1)  # other weights, all replaced by the checkpoint's
        assert second.load(saved)["note"] == "first"
        steps(second, batches[1:])
        dense, ids, _ = batches[0]
        torch.testing.assert_close(second.net(dense, ids), straight.net(dense, ids),
                                   rtol=0, atol=1e-6)
        for name, value in straight.net.state_dict().items():
            mine = second.net.state_dict()[name]
            if hasattr(value, "local_shards"):
                value, mine = value.local_shards()[0].tensor, mine.local_shards()[0].tensor
            torch.testing.assert_close(mine, value, rtol=0, atol=1e-6, msg=name)
    finally:
        sharding.end_process_group(started)


def _close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for key, value in b.items():
        if isinstance(value, float):
            assert a[key] == pytest.approx(value, abs=tol), key
        else:
            assert a[key] == value, key


def test_movielens_sharded_ends_where_replicated_does(tmp_path: Path) -> None:
    """compemb train on MovieLens with train.sharding=torchrec (one process) ends within 0.01
    test log loss of the replicated run: the tables are drawn by the same rule but by DMP
    (seeded per table), so the two start from different draws; same parameter counts."""
    config = apply_overrides(load_config(CONFIGS / "movielens-dlrm-qr.yaml"), [
        "train.eval_every=0", "train.checkpoint_every=1000"])
    with trainkit.one_thread():
        replicated = train(config, tmp_path / "r", progress=False)
        sharded = train(apply_overrides(config, ["train.sharding=torchrec"]), tmp_path / "s",
                        progress=False)
    assert sharded["test_logloss"] == pytest.approx(replicated["test_logloss"], abs=0.01)
    for key in ("steps", "num_parameters", "embedding_parameters", "parameter_bytes"):
        assert sharded[key] == replicated[key], key
    assert not (tmp_path / "s" / "checkpoint.pt").exists()
    assert [p.name for p in (tmp_path / "s" / "checkpoints").iterdir()] == ["checkpoint-000001"]


def test_sharded_run_killed_then_resumed_matches(tmp_path: Path) -> None:
    data = trainkit.synth_folder(tmp_path / "data", rows=3000)
    config = trainkit.tiny_config(data, "train.batch_size=16", "train.eval_every=100",
                                  "train.checkpoint_every=25", "train.sharding=torchrec")
    (tmp_path / "c.yaml").write_text(dump_config(config))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "compemb.cli", "train", "--config", str(tmp_path / "c.yaml"),
         "--out", str(killed)], env=trainkit.env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(killed.glob("checkpoints/checkpoint-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.json").exists(), "the run finished before it could be killed"
    resumed = trainkit.compemb("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with trainkit.one_thread():
        train(config, tmp_path / "straight", progress=False)
    _close(trainkit.final(killed), trainkit.final(tmp_path / "straight"), 1e-5)


def test_torchrun_sharded_matches_one_process_and_evaluates_replicated(tmp_path: Path) -> None:
    """Two ranks (the last global batch leaves rank 1 without rows) end where one process
    does; the sharded run's checkpoint loads into a replicated model (compemb evaluate)."""
    data = trainkit.synth_folder(tmp_path / "data", rows=1900, big=300_000,
                                 numbering="population")  # a table of 1.2 MB to shard
    config = trainkit.tiny_config(data, "train.batch_size=25", "train.checkpoint_every=1000",
                                  "train.sharding=torchrec")
    (tmp_path / "c.yaml").write_text(dump_config(config))
    two = subprocess.run([*TORCHRUN, "-m", "compemb.cli", "train", "--config",
                          str(tmp_path / "c.yaml"), "--out", str(tmp_path / "two")],
                         env=trainkit.env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "table_wise" in two.stderr  # the plan, printed at start-up
    with trainkit.one_thread():
        train(config, tmp_path / "one", progress=False)
    a = json.loads((tmp_path / "two" / "final.json").read_text())
    b = json.loads((tmp_path / "one" / "final.json").read_text())
    assert (a["world_size"], b["world_size"]) == (2, 1) and a["steps"] == b["steps"] == 66
    for key in ("test_logloss", "val_logloss", "train_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    evaluated = evaluate_run(tmp_path / "two", "val")
    assert evaluated["val_logloss"] == pytest.approx(a["val_logloss"], abs=1e-6)


def test_config_refuses_amsgrad_with_torchrec() -> None:
    with pytest.raises(ValueError, match="fused optimizers.*amsgrad"):
        apply_overrides(load_config(CONFIGS / "movielens-dlrm-qr.yaml"),
                        ["train.optimizer=amsgrad", "train.sharding=torchrec"])


def test_plan_rules() -> None:
    """Large pooled tables shard (column-wise too when FBGEMM can split them), small ones and
    widths FBGEMM refuses replicate, unpooled ones are table-wise; an unpooled table FBGEMM
    cannot take stops with a reason."""
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    def types(d: int, op: str) -> dict[str, list[str]]:
        trc = TorchRecEmbeddingCollection([40_000, 3], d, EmbeddingSpec("qr", op, collisions=4))
        return sharding.sharding_types(trc, torch.device("cpu"), small_bytes=4096)

    assert types(16, "add") == {"f0__0": ["table_wise", "column_wise"],
                                "f0__1": ["data_parallel"], "f1__0": ["data_parallel"]}
    assert types(12, "concat")["f0__0"] == ["data_parallel"]  # 6 wide: FBGEMM refuses it
    assert types(8, "concat")["f0__0"] == ["table_wise"]  # 4 wide: no column shards
    assert types(16, "mult") == {"f0__0": ["table_wise"], "f0__1": ["table_wise"],
                                 "f1__0": ["data_parallel"]}
    with pytest.raises(ValueError, match="multiple of 4"):
        types(6, "mult")


def test_warmup_reaches_fbgemm_tables_before_their_update(tmp_path: Path, monkeypatch) -> None:
    """FBGEMM's fused tables update in backward with the rate TorchRec hands them at zero_grad:
    the warm-up's and the decay's rate of step s reaches them before step s's backward (seen at
    the next forward), as it reaches the dense parameters' optimizer."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        SplitTableBatchedEmbeddingBagsCodegen as TBE,
    )

    seen: list[tuple[int, float]] = []
    forward = TBE.forward

    def spy(self, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not evaluation
            seen.append((id(self), self.get_learning_rate()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TBE, "forward", spy)
    # a table above sharding.SMALL_BYTES (70,000 x 4 floats) goes to FBGEMM, not data-parallel
    data = trainkit.synth_folder(tmp_path / "data", rows=400, big=70_000, numbering="population")
    config = trainkit.tiny_config(data, "model.embedding.scheme=full",
                                  "train.sharding=torchrec", "train.max_steps=6",
                                  "train.warmup_steps=4", "train.lr=0.05",
                                  "train.lr_decay=0.5", "train.eval_every=0")  # fmt: skip
    with trainkit.one_thread():
        train(config, tmp_path / "run", progress=False)
    first = seen[0][0]
    rates = [lr for module, lr in seen if module == first]
    assert len(rates) == 6
    # steps 0-5: warm-up over 4 steps, and the last 3 steps decayed to 3/3, 2/3, 1/3
    assert rates[1:] == pytest.approx([0.05 * min(1, (s + 1) / 4) * min(1, (6 - s) / 3)
                                       for s in range(5)])  # fmt: skip
