"""Parameter accounting against the paper: full-table totals and table 1 (path-based)."""

from __future__ import annotations

import json

import pytest

from compemb.cli import main
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import EmbeddingSpec
from compemb.training import count_parameters, load_cardinalities

# Table 1 of the paper: path-based, 4 collisions, one MLP hidden layer of H units.
TABLE_1 = {
    "dlrm": {16: 135_581_537, 32: 135_636_449, 64: 135_746_273, 128: 135_965_921},
    "dcn": {16: 135_464_410, 32: 135_519_322, 64: 135_629_146, 128: 135_848_794},
}


@pytest.mark.parametrize("model", ["dlrm", "dcn"])
@pytest.mark.parametrize("hidden", [16, 32, 64, 128])
def test_table_1_within_a_tenth_of_a_percent(model: str, hidden: int) -> None:
    # the paper puts path functions on every feature, also where they outweigh the full table
    spec = EmbeddingSpec("path", collisions=4, path_hidden=hidden, cap_at_full=False)
    total = count_parameters(model, CRITEO_KAGGLE_CARDINALITIES, spec)["total"]
    assert abs(total - TABLE_1[model][hidden]) / TABLE_1[model][hidden] < 1e-3


def test_full_tables_near_5_4e8() -> None:
    dlrm = count_parameters("dlrm", CRITEO_KAGGLE_CARDINALITIES, EmbeddingSpec("full"))
    dcn = count_parameters("dcn", CRITEO_KAGGLE_CARDINALITIES, EmbeddingSpec("full"))
    assert dlrm["embedding"] == dcn["embedding"] == 540_201_232
    # bottom 13-512-256-64-16 (155,984) + top 367-512-256-1 (320,001)
    assert dlrm["dense"] == 475_985
    # deep 429-512-256-64 (367,936) + cross 6 x 2 x 429 (5,148) + output 493 -> 1 (494)
    assert dcn["dense"] == 373_578
    assert dlrm["total_bytes"] == 4 * dlrm["total"]


def test_qr_four_collisions_is_four_times_smaller() -> None:
    spec = EmbeddingSpec("qr", operation="mult", collisions=4)
    report = count_parameters("dlrm", CRITEO_KAGGLE_CARDINALITIES, spec, optimizer="adagrad")
    assert 3.9 < report["compression_ratio"] < 4.0
    assert report["train_bytes"] == 2 * report["total_bytes"]


def test_params_cli_json(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    cards = tmp_path / "cards.txt"
    cards.write_text("1000, 20\n7")
    argv = ["params", "--model", "dcn", "--cardinalities", str(cards), "--scheme", "qr",
            "--collisions", "4", "--num-dense", "2", "--embedding-dim", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    # quotient + remainder rows per feature: 250 + 4, 5 + 4, 2 + 4; width 4
    assert report["embedding"] == (254 + 9 + 6) * 4
    assert report["total"] == report["embedding"] + report["dense"]


def test_params_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--cardinalities", "no-such-file"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["params", "--scheme", "qr"]) == 2
    assert "needs collisions" in capsys.readouterr().err


def test_load_cardinalities_json(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[3, 4, 5]")
    assert load_cardinalities(str(path)) == (3, 4, 5)
    path.write_text("3, x")
    with pytest.raises(ValueError, match="expected integers"):
        load_cardinalities(str(path))
