"""``compemb preprocess`` and ``compemb synth`` end to end through ``compemb.cli.main``."""

from __future__ import annotations

import json

import pytest

from compemb.cli import main
from compemb.data import open_dataset


def test_preprocess_writes_a_dataset_and_reports(write_criteo, tmp_path, capsys) -> None:
    src = write_criteo("in.tsv.gz", compress=True)
    code = main(["preprocess", "criteo", str(src), str(tmp_path / "out"), "--max-index", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "70 lines (7 rejected)" in out and "MB/s" in out
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert max(meta["cardinalities"]) == 4 and meta["options"]["vocab"] == "all"
    assert open_dataset(tmp_path / "out").num_rows("train") == 53


def test_preprocess_options_reach_the_library(write_criteo, tmp_path) -> None:
    src = write_criteo("in.tsv", bad=False)
    argv = ["preprocess", "criteo", str(src), str(tmp_path / "out"), "--min-count", "20"]
    assert main([*argv, "--vocab", "train", "--days", "20,30,20"]) == 0
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["options"]["min_count"] == 20 and meta["options"]["vocab"] == "train"
    assert meta["options"]["day_lines"] == [20, 30, 20]
    assert meta["rows"] == {"train": 50, "test": 10, "val": 10}
    assert meta["bucket_id"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strict"], "in.tsv:5: field_count"),
        (["--days", "seven"], "--days"),
        (["--min-count", "0"], "min_count"),
    ],
)
def test_preprocess_errors_exit_2_without_output(write_criteo, tmp_path, capsys, args, message):
    src = write_criteo("in.tsv")
    assert main(["preprocess", "criteo", str(src), str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_preprocess_missing_and_empty_inputs(tmp_path, capsys) -> None:
    assert main(["preprocess", "criteo", str(tmp_path / "none.tsv"), str(tmp_path / "o")]) == 2
    assert "none.tsv does not exist" in capsys.readouterr().err
    (tmp_path / "empty.tsv").write_text("")
    assert main(["preprocess", "criteo", str(tmp_path / "empty.tsv"), str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_synth_writes_a_dataset(tmp_path, capsys) -> None:
    argv = ["synth", str(tmp_path / "s"), "--rows", "7000", "--cardinalities", "100,20,3"]
    assert main([*argv, "--seed", "2", "--zipf", "1.3", "--num-dense", "4"]) == 0
    assert "test log loss of the hidden model" in capsys.readouterr().out
    ds = open_dataset(tmp_path / "s")
    assert ds.cardinalities == (100, 20, 3) and ds.num_dense == 4
    assert sum(ds.num_rows(s) for s in ("train", "val", "test")) == 7000
    assert main(argv) == 2  # the folder exists now
    assert "already exists" in capsys.readouterr().err


def test_synth_rejects_bad_cardinalities(tmp_path, capsys) -> None:
    argv = ["synth", str(tmp_path / "s"), "--rows", "700", "--cardinalities", "ten"]
    assert main(argv) == 2
    assert "criteo-kaggle" in capsys.readouterr().err
