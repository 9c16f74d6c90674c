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
)
from compemb.experiments.grids import build_experiment
from compemb.experiments.runner import Settings, run_experiment
from compemb.spec import EmbeddingSpec
from compemb.training import count_parameters

MOVIELENS = (943, 1682, 61, 2, 21, 795, 72, 19)
PLANTED = (1460, 583, 55047, 48244, 305, 24, 10898, 633, 3, 27991, 5589, 54021, 3190)


def test_sizes_are_the_trained_models_sizes() -> None:
    for scheme in FRONTIER_SCHEMES:
        variant = make_variant(scheme, 4 if scheme.knob == "collisions" else 3)
        spec = EmbeddingSpec(**variant.model_fields())
        expected = count_parameters("dlrm", PLANTED, spec)["embedding"]
        assert embedding_parameters(variant, PLANTED) == expected, variant.label


def test_picked_values_land_near_their_targets_or_are_reported_missing() -> None:
    full = sum(PLANTED) * 16
    targets = (2, 4, 16, 60, 1000)
    for scheme in FRONTIER_SCHEMES:
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
                                            "qr mult hot")]  # fmt: skip
    exp = build_frontier(dataset.cardinalities, schemes, targets=(2, 16))
    settings = Settings(dataset=str(tmp_path / "data"), trials=1, batch_size=64, max_steps=2)
    results = run_experiment(exp, settings, tmp_path / "out", dataset=dataset, progress=False)
    assert [e["label"] for e in results["summary"]] == [v.label for v in exp.variants]
    assert (tmp_path / "out" / "frontier" / "summary.csv").is_file()
