"""Parameter accounting of frequency-aware specs: hot rows and id maps counted by hand."""

from compemb.cli import main
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
