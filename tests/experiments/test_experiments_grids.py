"""Experiment grids: the paper's on Criteo cardinalities, scaled ones on MovieLens."""

from __future__ import annotations

import pytest

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.experiments.grids import (
    EXPERIMENTS,
    PAPER_THRESHOLDS,
    build_experiment,
    scaled_grid,
)
from compemb.experiments.init_rules import init_rule
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


def test_init_rule_swaps_the_bounds_and_restores_them():
    import torch

    from compemb.embeddings import make_embedding_bag

    def first_table(rule):
        with init_rule(rule):
            torch.manual_seed(0)
            return make_embedding_bag(1000, 8, scheme="qr", collisions=4).weights[0]

    assert first_table("reference").min() >= (1 / 1000) ** 0.5
    assert first_table("zero_mean").abs().max() <= (1 / 1000) ** 0.5
    assert first_table(None).min() < 0  # restored: the library's zero-mean first table
    assert first_table("gates").abs().max() <= (1 / 1000) ** 0.5
    with init_rule("gates"):
        gates = make_embedding_bag(1000, 8, scheme="qr", collisions=4)
    assert gates.weights[1].min() >= 0.5 and gates.weights[1].max() <= 1.5
    with init_rule("gates"):  # other operations keep the library's rule
        add = make_embedding_bag(1000, 8, scheme="qr", collisions=4, operation="add")
    assert add.weights[1].abs().max() <= (1 / 1000 / 2) ** 0.5
    with pytest.raises(ValueError, match="unknown init rule 'he'; valid: library, gates"):
        with init_rule("he"):
            pass


def test_docstring_examples_run():
    import doctest

    from compemb.experiments import grids

    result = doctest.testmod(grids)
    assert result.attempted >= 3 and result.failed == 0


def test_init_rule_reaches_the_stacked_collection():
    from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec

    spec = EmbeddingSpec("qr", "mult", collisions=4)
    with init_rule("reference"):
        ebc = EmbeddingBagCollection([1000, 500], 8, spec)
    lowest = min(p.detach().min().item() for p in ebc.parameters())
    assert lowest >= (1 / 1000) ** 0.5  # every table all positive, as the reference draws it
    library = EmbeddingBagCollection([1000, 500], 8, spec)  # the rule is restored
    assert min(p.detach().min().item() for p in library.parameters()) < 0
