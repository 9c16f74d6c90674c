import json

from compemb.cli import main
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.demo import DEMO_SPECS, size_table
from compemb.experiments import pipeline
from compemb.experiments.plots import figure_for


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


def test_sizes_command_prints_both_tables(capsys):
    assert main(["sizes"]) == 0
    out = capsys.readouterr().out
    assert "MovieLens-100k" in out and "Criteo Kaggle" in out
    assert "540,201,232" in out


def test_demo_command_runs_the_demo_experiment(tmp_path, capsys, monkeypatch):
    """The demo's grid is the `demo` experiment (trained for real in the README's numbers);
    here its runs are capped at 3 steps, 1 trial, to check the wiring and the printed table."""
    from compemb.experiments import runner

    real = pipeline.run_named

    def capped(name, settings, out, **kwargs):
        assert name == "demo" and settings.trials == 1 and settings.optimizer == "auto"
        assert settings.workers == 2
        settings = runner.Settings(trials=1, max_steps=3, batch_size=64)
        return real(name, settings, out, **kwargs)

    monkeypatch.setattr(pipeline, "run_named", capped)
    assert main(["demo", "--out", str(tmp_path), "--trials", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for row in ("full", "hash c=4", "qr c=16", "path c=60 h=64", "test AUC",
                "md alpha=0.25", "robe size=14380", "cce rows=120", "tt rank=12",
                "dhe width=3"):  # fmt: skip
        assert row in out, row
    assert (tmp_path / "demo" / "demo.png").is_file()
    # the plot names each successor by its fitted knob and the compression it reached
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    figure = figure_for(results)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "robe size=14380 (4.0x)" in legend and "qr mult" in legend, legend
