"""Parameter accounting of frequency-aware specs: hot rows and id maps counted by hand; a
budget's knob in ``compemb params``."""

import doctest
import json

import compemb.training.params
from compemb.cli import main
from compemb.embeddings import embedding_bytes
from compemb.spec import EmbeddingSpec
from compemb.training import count_parameters


def test_hot_rows_and_id_maps_by_hand():
    cards = [10_000, 3]
    plain = count_parameters("dlrm", cards, EmbeddingSpec("qr", collisions=4), embedding_dim=8)
    freq = count_parameters("dlrm", cards, EmbeddingSpec("qr", collisions=4, hot=100,
                                                         order="interleaved"), embedding_dim=8)
    # 101 more rows of 8 (100 private, 1 shared tail) on the compressed feature; the 3-category
    # feature keeps its full table, so it has neither hot rows nor a map
    assert freq["embedding"] - plain["embedding"] == 101 * 8
    assert freq["index_bytes"] == 10_000 * 4 + 100 * 8 and plain["index_bytes"] == 0


def test_params_cli_takes_every_spec_field(capsys):
    assert main(["params", "--scheme", "qr", "--collisions", "4", "--hot", "50", "--order",
                 "frequency", "--init", "gates", "--json"]) == 0
    assert '"index_bytes"' in capsys.readouterr().out


def test_params_cli_takes_a_budget(tmp_path, capsys):
    cards = tmp_path / "cards.txt"
    cards.write_text("20000, 500, 3")
    common = ["params", "--cardinalities", str(cards), "--embedding-dim", "8"]
    assert main([*common, "--scheme", "qr", "--order", "frequency", "--budget", "300kB",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    collisions = report["fitted"]["collisions"]
    assert report["budget"] == "300kB"
    # the bytes a budget counts: the embedding parameters and the id maps (4 B per category)
    assert report["embedding_bytes"] + report["index_bytes"] <= 300_000
    assert report["index_bytes"] == 4 * 20_500
    spec = EmbeddingSpec("qr", collisions=collisions - 1, order="frequency")
    assert embedding_bytes([20_000, 500, 3], 8, spec) > 300_000  # the closest from below
    assert main([*common, "--scheme", "tt", "--budget", "16x"]) == 0
    assert "budget 16x: rank=" in capsys.readouterr().out
    assert main([*common, "--scheme", "hash", "--budget", "1.1x"]) == 2
    err = capsys.readouterr().err
    assert "compemb params: error: budget 1.1x" in err and "at collisions=2, 2.0x" in err


def test_docstring_examples_run():
    result = doctest.testmod(compemb.training.params)
    assert result.failed == 0 and result.attempted > 0
