"""Real processes: a run killed with SIGKILL and resumed, and torchrun with 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trainkit

from compemb.config import dump_config, load_config
from compemb.training import train


def _write_config(path: Path, dataset: Path, *overrides: str) -> Path:
    path.write_text(dump_config(trainkit.tiny_config(dataset, *overrides)))
    return path


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = trainkit.synth_folder(tmp_path / "data", rows=4000)  # 3,426 train rows
    config = _write_config(tmp_path / "c.yaml", data, "train.batch_size=16",
                           "train.eval_every=100", "train.checkpoint_every=25")  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "compemb.cli", "train", "--config", str(config), "--out",
         str(killed)], env=trainkit.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (killed / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.json").exists(), "the run finished before it could be killed"

    resumed = trainkit.compemb("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    with trainkit.one_thread():
        train(load_config(config), tmp_path / "s", progress=False)
    a, b = trainkit.final(killed), trainkit.final(tmp_path / "s")
    assert a.keys() == b.keys() and a["steps"] == 215
    for key, value in b.items():
        assert a[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value)
    assert (killed / "metrics.jsonl").read_text().count("\n") == 3  # steps 100, 200, 215


def test_torchrun_two_ranks_match_one_process(tmp_path: Path) -> None:
    # 1,626 train rows in batches of 25: the last global batch has 1 row, so rank 1's share of
    # it is empty.
    # A 40,000-category feature: its QR quotient table (10,000 rows) keeps sparse gradients,
    # all-reduced sparse over gloo outside DDP; the small tables go through DDP densely.
    data = trainkit.synth_folder(tmp_path / "data", rows=1900, big=40_000)
    # without warm-up (DDP's averaged gradients round differently; at the warm-up's small
    # first rates 66 steps amplify that past the 1e-4 compared)
    config = _write_config(tmp_path / "c.yaml", data, "train.batch_size=25",
                           "train.checkpoint_every=1000", "train.warmup_steps=0")  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "compemb.cli"]  # fmt: skip
    two = subprocess.run([*torchrun, "train", "--config", str(config), "--out",
                          str(tmp_path / "two")], env=trainkit.env(), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    with trainkit.one_thread():
        train(load_config(config), tmp_path / "one", progress=False)
    a = json.loads((tmp_path / "two" / "final.json").read_text())
    b = json.loads((tmp_path / "one" / "final.json").read_text())
    assert (a["world_size"], b["world_size"]) == (2, 1)
    assert a["steps"] == b["steps"] == 66 and a["samples"] == b["samples"] == 1626
    for key in ("test_logloss", "val_logloss", "train_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert a["test_logloss"] != pytest.approx(0.0)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_rank_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """torchrun starts each rank in a session of its own, so a SIGKILL of torchrun alone left
    the ranks training and writing the run folder while it was resumed. Here a launcher
    starts a "rank" as torchrun does and is killed: the rank ends within seconds."""
    rank = ("import time, torch\nfrom compemb.training.distributed import init_distributed\n"
            "init_distributed(torch.device('cpu'))\nprint('ready', flush=True)\n"
            "time.sleep(60)\n")  # fmt: skip
    launcher = ("import subprocess, sys, time\nrank = subprocess.Popen([sys.executable, '-c', "
                "sys.argv[1]], start_new_session=True)\nprint(rank.pid, flush=True)\n"
                "time.sleep(60)\n")  # fmt: skip
    env = {**trainkit.env(), "TORCHELASTIC_RUN_ID": "test", "RANK": "0"}  # as torchrun sets
    with open(tmp_path / "rank.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", launcher, rank], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=err)  # fmt: skip
    pid = int(proc.stdout.readline())
    try:
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the rank outlived its launcher by 10 s"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
    assert "rank 0 stops: its launcher" in (tmp_path / "rank.err").read_text()


def test_replicated_ranks_broadcast_no_buffer() -> None:
    """torchrun, 2 ranks under DDP (``ddp_buffers_worker.py``): with a frequency-ordered QR
    feature (relabel and hot-id maps), a CCE one (assignment, hashes, rank-local seen ids) and a
    ROBE-Z one (hashes; the stacked array's sparse gradient reduced), ``wrap_model`` lets DDP
    broadcast no buffer, at wrapping or before any forward, and the
    losses and final state equal those of DDP broadcasting every buffer."""
    worker = Path(__file__).with_name("ddp_buffers_worker.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(worker)], env=trainkit.env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
