"""Experiment grids: the paper's on Criteo cardinalities, scaled ones on MovieLens."""

from __future__ import annotations

import math

import pytest

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.experiments.frontier import embedding_parameters, select_lines
from compemb.experiments.grids import (
    DEMO_SUCCESSORS,
    DEMO_TARGET,
    EXPERIMENTS,
    PAPER_THRESHOLDS,
    build_experiment,
    scaled_grid,
)
from compemb.experiments.runner import Settings, optimizer_for

MOVIELENS = (943, 1682, 61, 2, 21, 795, 72, 19)


def test_paper_grids_on_criteo_are_unchanged():
    fig5 = build_experiment("fig5", CRITEO_KAGGLE_CARDINALITIES)
    assert fig5.notes == ()
    # full + 7 collision counts x (hash, feature, qr concat/add/mult)
    assert len(fig5.variants) == 1 + 7 * 5
    assert sorted({v.collisions for v in fig5.variants if v.collisions}) == [2, 3, 4, 5, 6, 7, 60]
    fig6 = build_experiment("fig6", CRITEO_KAGGLE_CARDINALITIES)
    assert sorted({v.threshold for v in fig6.variants if v.threshold}) == list(PAPER_THRESHOLDS)
    assert {v.collisions for v in fig6.variants} == {None, 4}


def test_thresholds_scale_to_small_data():
    grid, note = scaled_grid("thresholds", PAPER_THRESHOLDS, MOVIELENS)
    assert grid == (1, 20, 200, 943)  # 2000, 20000 would keep every table full
    assert "943" in note and "1,682" in note
    assert scaled_grid("collisions", (2, 60), MOVIELENS) == ((2, 60), None)
    assert scaled_grid("collisions", (2, 60), (100,))[0] == (2,)


def test_every_experiment_builds_with_unique_labels():
    for name in EXPERIMENTS:
        exp = build_experiment(name, MOVIELENS)
        labels = [v.label for v in exp.variants]
        assert len(set(labels)) == len(labels), name
        assert len({v.slug for v in exp.variants}) == len(labels), name


def test_demo_has_the_paper_schemes_and_the_successors_fitted_near_4x():
    demo = build_experiment("demo", MOVIELENS)
    paper = [v for v in demo.variants if v.scheme in ("full", "hash", "qr", "path")]
    assert [v.label for v in paper[:6]] == ["full", "hash c=4", "qr concat c=4", "qr add c=4",
                                            "qr mult c=4", "path h=64 c=4"]  # fmt: skip
    assert len(paper) == 1 + 3 * 5 and demo.notes == ()
    successors = demo.variants[len(paper):]
    assert [v.scheme for v in successors] == list(DEMO_SUCCESSORS)
    full = sum(MOVIELENS) * 16
    for v, line in zip(successors, select_lines(DEMO_SUCCESSORS), strict=True):
        # the knob the frontier sizes it by is named in the table and the plot
        assert v.label.startswith(f"{line.series} {line.setting}="), v.label
        compression = full / embedding_parameters(v, MOVIELENS)
        assert abs(math.log(compression / DEMO_TARGET)) <= math.log(1.25), (v.label, compression)
    # a successor that cannot reach 4x is left out with a note, not trained at another size
    tiny = build_experiment("demo", (40, 30))
    assert "md" not in {v.scheme for v in tiny.variants}
    assert any(n.startswith("md: no alpha within") for n in tiny.notes)


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown experiment 'fig9'; valid: fig4, fig5"):
        build_experiment("fig9", MOVIELENS)


def test_auto_optimizer_is_per_operation_and_explicit_choices_win():
    demo = build_experiment("demo", MOVIELENS)
    auto = Settings(optimizer="auto")
    # The README's finding: Adagrad for every operation and the baselines.
    assert {optimizer_for(v, auto) for v in demo.variants} == {"adagrad"}
    assert {optimizer_for(v, Settings(optimizer="amsgrad")) for v in demo.variants} == {"amsgrad"}
    opt = build_experiment("optimizers", MOVIELENS)
    chosen: dict[str, set[str]] = {}
    for v in opt.variants:  # each variant names its own optimizer, whatever the settings say
        assert optimizer_for(v, Settings(optimizer="sgd")) == v.optimizer
        chosen.setdefault(v.series, set()).add(optimizer_for(v, auto))
    assert chosen and all(c == {"adagrad", "amsgrad"} for c in chosen.values())


def test_init_experiment_sets_the_rule_through_config():
    from types import SimpleNamespace

    from compemb.config import dump_config
    from compemb.data import open_dataset
    from compemb.experiments.runner import plan_runs
    from compemb.training import model_for

    runs = plan_runs(build_experiment("init", MOVIELENS), Settings(trials=1),
                     open_dataset("movielens"), "out")  # fmt: skip
    compressible = SimpleNamespace(cardinalities=(1000, 500), num_dense=2)  # no full tables
    assert len({r.folder for r in runs}) == len(runs) == 24
    lowest = {}
    for run in runs:
        rule = run.variant.init or "default"
        assert run.config.model.embedding.init == rule
        assert f"init: {rule}" in dump_config(run.config)  # recorded in the run's config.yaml
        if run.variant.operation == "mult" and run.variant.optimizer == "adagrad":
            model = model_for(run.config, compressible, "cpu")
            lowest[rule] = min(p.min().item() for p in model.sparse_arch.parameters())
    # the reference's U(sqrt(1/n), 1) draws every table positive; the others are zero-mean
    assert lowest["reference"] > 0
    assert all(lowest[r] < 0 for r in ("default", "gates", "zero_mean"))


def test_docstring_examples_run():
    import doctest

    from compemb.experiments import grids

    result = doctest.testmod(grids)
    assert result.attempted >= 3 and result.failed == 0
