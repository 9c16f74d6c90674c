"""`compemb experiment` end to end on a tiny run, and its errors."""

from __future__ import annotations

import json

from compemb.cli import main


def test_experiment_command_writes_results(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["experiment", "table1", "--trials", "1", "--steps", "4", "--batch-size", "64",
            "--out", str(out), "--no-progress", "--workers", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "path c=4 h=16" in printed and "test log loss" in printed
    folder = out / "table1"
    for name in ("trials.csv", "summary.csv", "results.json", "table1.png", "report.md"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "results.json").read_text())["summary"]
    params = [s["num_parameters"] for s in summary]
    assert [s["x"] for s in summary] == [16, 32, 64, 128] and params == sorted(params)


def test_experiment_command_errors(tmp_path, capsys):
    assert main(["experiment", "fig9", "--out", str(tmp_path)]) == 2
    assert "valid: fig4, fig5, fig6, fig7, table1" in capsys.readouterr().err
    assert main(["experiment", "fig4", "--data", "synthetic", str(tmp_path)]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
