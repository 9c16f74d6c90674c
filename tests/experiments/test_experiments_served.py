"""An experiment that also serves every run quantized: before the checkpoint goes, the served
metrics land in the run folder, the summary and the report (a refused width as a dash)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fbgemm_gpu")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.data import open_dataset  # noqa: E402
from compemb.experiments.grids import Experiment, Variant  # noqa: E402
from compemb.experiments.plots import figure_for  # noqa: E402
from compemb.experiments.report import write_report  # noqa: E402
from compemb.experiments.runner import Settings, run_experiment  # noqa: E402

# width 6: int8 packs the full tables, int4 (multiples of 4) neither; concat's 3 + 3 neither
TINY = Experiment("frontier", "tiny", (Variant("full", "full"),
                                       Variant("qr concat", "qr", "concat", 4, x=4)),
                  "frontier", "bytes")  # fmt: skip
SETTINGS = Settings(trials=1, max_steps=8, batch_size=64, embedding_dim=6,
                    quantize=("fp16", "int8", "int4"))


def test_runs_are_served_before_their_checkpoints_go(tmp_path, monkeypatch) -> None:
    dataset = open_dataset("movielens")
    results = run_experiment(TINY, SETTINGS, tmp_path, dataset=dataset, progress=False)
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert not (folder / "checkpoint.pt").exists()
        served = json.loads((folder / "served.json").read_text())
        assert set(served) == {"fp16", "int8", "int4"}
    full, concat = results["summary"]
    assert full["served_fp16_embedding_bytes"] * 2 == full["embedding_bytes"]
    assert full["served_int8_embedding_bytes"] < full["embedding_bytes"] / 2
    assert abs(full["served_fp16_logloss_change_mean"]) < 1e-3
    assert full["served_int4_test_logloss_mean"] is None  # width 6 refused by int4
    assert concat["served_int8_test_logloss_mean"] is None  # width 3 refused by int8
    assert concat["served_fp16_test_logloss_mean"] is not None
    report = write_report(results, tmp_path).read_text()
    assert "## Served quantized" in report
    assert "| qr concat c=4 |" in report and "| - | - | - |" in report
    figure_for(results)
    # a second call reads served.json: the checkpoints are gone, nothing is loaded again
    monkeypatch.setattr("compemb.serving.runs.load_local", None)
    again = run_experiment(TINY, SETTINGS, tmp_path, dataset=dataset, progress=False)
    assert again["summary"][0]["served_int8_test_logloss_mean"] == \
        full["served_int8_test_logloss_mean"]
