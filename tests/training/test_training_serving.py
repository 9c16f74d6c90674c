"""Runs served: a replicated and a sharded run exported as programs and evaluated quantized,
from the command line and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trainkit

pytest.importorskip("fbgemm_gpu")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.serving.runs import evaluate_program, evaluate_quantized, export_served  # noqa: E402
from compemb.training import evaluate_run, train  # noqa: E402


def _check_run(run: Path, tmp_path: Path, launch: bool) -> None:
    """Export and evaluate a finished run: the program, the quantized model and the float
    one agree. ``launch``: the commands in processes of their own, else the CLI in this one
    (a launch costs seconds of imports; one test launches them)."""
    compemb = trainkit.compemb if launch else trainkit.compemb_in_process
    out = compemb("export", str(run), str(tmp_path / "served.pt2"), "--quantize", "int8")
    assert out.returncode == 0, out.stderr[-3000:]
    refused = trainkit.compemb_in_process("evaluate", str(run), "--quantize", "int8",
                                          "--feature-precision", "C9=int4")  # fmt: skip
    assert refused.returncode == 2 and "per-feature precision for 'C9': no such" in refused.stderr
    by_cli = compemb("evaluate", str(run), "--quantize", "int8")
    assert by_cli.returncode == 0, by_cli.stderr[-3000:]
    quantized = json.loads(by_cli.stdout)
    program = evaluate_program(tmp_path / "served.pt2")
    assert program["test_logloss"] == pytest.approx(quantized["test_logloss"], abs=1e-5)
    assert program["total_bytes"] == quantized["total_bytes"]
    full = evaluate_run(run)
    assert quantized["test_logloss"] == pytest.approx(full["test_logloss"], abs=5e-3)
    assert quantized["table_bytes"] < quantized["float32_table_bytes"]


def test_a_replicated_run_exported_and_evaluated(tmp_path: Path) -> None:
    data = trainkit.synth_folder(tmp_path / "data", rows=900)
    with trainkit.one_thread():
        train(trainkit.tiny_config(data, "train.eval_every=0"), tmp_path / "run", progress=False)
    _check_run(tmp_path / "run", tmp_path, launch=True)


def test_a_sharded_run_exported_and_evaluated(tmp_path: Path) -> None:
    pytest.importorskip("torchrec")
    data = trainkit.synth_folder(tmp_path / "data", rows=900)
    config = trainkit.tiny_config(data, "train.eval_every=0", "train.sharding=torchrec",
                                  "train.checkpoint_every=20")  # fmt: skip
    with trainkit.one_thread():
        train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints").is_dir()
    _check_run(tmp_path / "run", tmp_path, launch=False)
    served = export_served(tmp_path / "run", tmp_path / "fp16.pt2", "fp16")
    assert evaluate_quantized(tmp_path / "run", "fp16")["test_logloss"] == pytest.approx(
        evaluate_program(served)["test_logloss"], abs=1e-5)
