"""The frontier grid: knob values picked per target compression, sizes as the trained models'."""

from __future__ import annotations

import math

import pytest

from compemb.data import SynthOptions, generate_synthetic, open_dataset
from compemb.experiments.frontier import (
    FRONTIER_SCHEMES,
    TOLERANCE,
    Line,
    build_frontier,
    collision_candidates,
    embedding_parameters,
    fitted_variants,
    make_variant,
    pick_values,
    select_lines,
)
from compemb.experiments.grids import build_experiment
from compemb.experiments.plots import plot_results
from compemb.experiments.report import write_report
from compemb.experiments.runner import Settings, run_experiment
from compemb.spec import EmbeddingSpec
from compemb.training import count_parameters

MOVIELENS = (943, 1682, 61, 2, 21, 795, 72, 19)
PLANTED = (1460, 583, 55047, 48244, 305, 24, 10898, 633, 3, 27991, 5589, 54021, 3190)


def _some_value(scheme: Line) -> float:
    if scheme.values:
        return scheme.values[-1]
    return 16 if scheme.fitted else 4


def test_sizes_are_the_trained_models_sizes() -> None:
    for scheme in FRONTIER_SCHEMES:
        variant = make_variant(scheme, _some_value(scheme))
        spec = EmbeddingSpec(**variant.model_fields())
        expected = count_parameters("dlrm", PLANTED, spec)["embedding"]
        assert embedding_parameters(variant, PLANTED) == expected, variant.label


def test_picked_values_land_near_their_targets_or_are_reported_missing() -> None:
    full = sum(PLANTED) * 16
    targets = (2, 4, 16, 60, 1000)
    for scheme in (s for s in FRONTIER_SCHEMES if not s.fitted):
        picked = pick_values(scheme, PLANTED, targets)
        for target, (value, compression) in picked.items():
            variant = make_variant(scheme, value)
            assert compression == pytest.approx(full / embedding_parameters(variant, PLANTED))
            assert abs(math.log(compression / target)) <= math.log(TOLERANCE)
    qr = pick_values(Line("qr mult", (("scheme", "qr"),)), PLANTED, targets)
    assert [v for v, _ in qr.values()][:3] == [2, 4, 16] and 60 in qr and 1000 not in qr
    exp = build_frontier(PLANTED, targets=targets)
    assert any(n.startswith("qr mult: no collisions within") and "1000x" in n for n in exp.notes)


def test_hot_schemes_split_each_budget_between_hot_rows_and_collisions() -> None:
    hot = next(s for s in FRONTIER_SCHEMES if s.hot_share is not None)
    fitted = fitted_variants(hot, PLANTED, (4, 16))
    assert set(fitted) == {4, 16}
    for target, (variant, compression) in fitted.items():
        fields = variant.model_fields()
        assert fields["hot"] > 0 and fields["collisions"] >= 2
        assert target <= compression <= target * TOLERANCE  # fit_budget stays under the budget
        assert variant.label == f"{hot.series} c={fields['collisions']} hot={fields['hot']}"


def test_candidates_stop_where_partitions_mirror() -> None:
    assert collision_candidates((100,)) == (2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, 23, 27,
                                            32, 38, 45)  # fmt: skip
    assert collision_candidates((100,), mirrored=True)[-1] == 10
    assert max(collision_candidates((5,))) == 2


def test_grid_is_registered_with_unique_labels_and_one_entry_adds_a_line() -> None:
    exp = build_experiment("frontier", MOVIELENS)
    labels = [v.label for v in exp.variants]
    assert labels[0] == "full" and len(set(labels)) == len(labels)
    assert {v.series for v in exp.variants} == {"full"} | {s.series for s in FRONTIER_SCHEMES}
    assert "mixed radix mult k=2" in labels
    assert exp.variants[labels.index("mixed radix mult k=2")].model_fields()["k"] == 2
    extra = Line("qr mult k-free", (("scheme", "qr"), ("operation", "mult")))
    more = build_frontier(MOVIELENS, (*FRONTIER_SCHEMES, extra), targets=(4,))
    assert [v.label for v in more.variants if v.series == "qr mult k-free"] == [
        "qr mult k-free c=4"
    ]


def test_a_tiny_frontier_trains_and_records_every_run(tmp_path) -> None:
    generate_synthetic(tmp_path / "data", SynthOptions(rows=1400, cardinalities=(400, 90, 7),
                                                       num_dense=2))  # fmt: skip
    dataset = open_dataset(tmp_path / "data")
    by_series = {s.series: s for s in FRONTIER_SCHEMES}
    schemes = [by_series[name] for name in ("hash", "mixed radix mult", "qr mult freq",
                                            "qr mult hot", "robe")]  # fmt: skip
    exp = build_frontier(dataset.cardinalities, schemes, targets=(2, 16))
    settings = Settings(dataset=str(tmp_path / "data"), trials=1, batch_size=64, max_steps=2)
    results = run_experiment(exp, settings, tmp_path / "out", dataset=dataset, progress=False)
    summary = results["summary"]
    assert [e["label"] for e in summary] == [v.label for v in exp.variants]
    assert (tmp_path / "out" / "frontier" / "summary.csv").is_file()
    # memory counts id maps (frequency order: 4 bytes per category), and each table step is
    # timed against the full tables'
    by_label = {e["label"]: e for e in summary}
    freq = next(e for e in summary if e["series"] == "qr mult freq")
    assert freq["embedding_bytes"] == 4 * freq["embedding_parameters"] + 4 * sum(
        dataset.cardinalities)
    assert by_label["full"]["embedding_bytes"] == 4 * 16 * sum(dataset.cardinalities)
    assert by_label["full"]["table_step_vs_full"] == 1.0
    assert all(0 < e["table_step_vs_full"] < 100 for e in summary)
    report = write_report(results, tmp_path, plot=str(plot_results(results, tmp_path / "f.png")))
    text = report.read_text()
    assert "| embedding memory | table step vs full |" in text and "Table step vs full:" in text


def test_growing_knobs_are_fitted_to_each_budget_and_reach_far() -> None:
    full = sum(PLANTED) * 16
    by_series = {s.series: s for s in FRONTIER_SCHEMES}
    for series in ("tt", "robe", "dhe"):
        line = by_series[series]
        assert line.fitted and line.hot_share is None
        fitted = fitted_variants(line, PLANTED, (4, 60, 1000))
        # ROBE shrinks to any size; DHE's first layer holds k = 1024 weights per unit of
        # width in each compressed feature, so it stops short of 1000x here
        assert (1000 in fitted) == (series == "robe"), series
        knobs = []
        for target, (variant, compression) in fitted.items():
            # fit_budget stays under the budget, so compression lands at or above the target
            assert target <= compression <= target * TOLERANCE, (series, target, compression)
            assert compression == pytest.approx(full / embedding_parameters(variant, PLANTED))
            knobs.append(variant.model_fields()[line.setting])
        assert knobs == sorted(knobs, reverse=True)  # less memory, a smaller knob
    # MD's widths are at least 1: it never passes D-fold, and says so
    exp = build_frontier(PLANTED, select_lines(["md"]), targets=(4, 60))
    assert [v.label for v in exp.variants][1].startswith("md alpha=")
    assert any(n.startswith("md: no alpha within") and "60x" in n for n in exp.notes)


def test_lines_and_targets_choose_part_of_the_frontier() -> None:
    exp = build_experiment("frontier", MOVIELENS, lines=["robe", "qr mult"], targets=[4])
    assert [v.series for v in exp.variants] == ["full", "robe", "qr mult"]
    with pytest.raises(ValueError, match="no frontier line 'nope'.*'qr mult'"):
        select_lines(["nope"])
    with pytest.raises(ValueError, match="experiment 'fig5' has fixed grids"):
        build_experiment("fig5", MOVIELENS, targets=[4])
    with pytest.raises(ValueError, match="target compressions must be > 1"):
        build_frontier(MOVIELENS, targets=(1,))
