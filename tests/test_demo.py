from compemb.cli import main
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.demo import DEMO_SPECS, size_table


def test_size_table_on_criteo_is_exact():
    rows = {(r["scheme"], r["operation"]): r for r in size_table(CRITEO_KAGGLE_CARDINALITIES, 16)}
    assert rows[("full", "-")]["parameters"] == 540_201_232
    assert rows[("full", "-")]["compression"] == 1.0
    # QR mult, 4 collisions: ceil(n/4) + 4 rows per feature (n <= 4 keeps its n rows)
    expect = sum(n if n <= 4 else -(-n // 4) + 4 for n in CRITEO_KAGGLE_CARDINALITIES)
    assert rows[("qr c=4", "mult")]["rows"] == expect
    assert rows[("qr c=4", "mult")]["parameters"] == expect * 16
    assert rows[("qr c=4", "concat")]["parameters"] < rows[("qr c=4", "mult")]["parameters"]
    assert len(rows) == len(DEMO_SPECS)


def test_demo_command_prints_both_tables(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "MovieLens-100k" in out and "Criteo Kaggle" in out
    assert "540,201,232" in out
