"""TorchRec sharding on 2 gloo ranks: forward, backward and optimizer steps equal one process's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trainkit

pytest.importorskip("torchrec")

WORKER = Path(__file__).with_name("torchrec_worker.py")


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad", "sgd"])
def test_two_ranks_match_one_process(optimizer: str) -> None:
    """The worker asserts on every rank (within 1e-5): logits of each rank's share, gradients of
    the dense and data-parallel parameters, and every parameter after each of two steps, with
    the sharded model and fused optimizer state saved whole and reloaded between the steps."""
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(WORKER), optimizer], env=trainkit.env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert run.stdout.count(f" {optimizer}\n") == 4, run.stdout
    assert "table_wise" in run.stdout and "data_parallel" in run.stdout


def test_unknown_fused_optimizer_is_refused() -> None:
    from compemb.training.sharding import fused_optimizer_params

    with pytest.raises(ValueError, match="amsgrad.*no fused kernel"):
        fused_optimizer_params("amsgrad", 0.001)
