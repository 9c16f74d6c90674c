"""The experiments of the paper's section 5 (and ours) as grids of variants.

An :class:`Experiment` is a named tuple of :class:`Variant` s (one model each, trained once per
trial) plus how to plot them. :func:`build_experiment` makes the grid for a dataset: the paper's
grids were set for Criteo's cardinalities (largest 10,131,227), so values that would make every
feature keep its full table on smaller data are dropped or replaced (see :func:`scaled_grid`).

>>> exp = build_experiment("fig4", (943, 1682, 61))
>>> [v.label for v in exp.variants]
['full', 'hash c=4', 'qr mult c=4']
>>> build_experiment("fig8", (943,))  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: unknown experiment 'fig8'; valid: fig4, fig5, fig6, fig7, table1, optimizers, ...
"""

from __future__ import annotations

from collections.abc import Sequence

from compemb.experiments.frontier import (
    TARGET_COMPRESSIONS,
    build_frontier,
    place_lines,
    select_lines,
)
from compemb.experiments.variants import Experiment, Variant

# Figures 4-7 and table 1 of the paper, and two of ours (see EXPERIMENT_HELP).
EXPERIMENTS = ("fig4", "fig5", "fig6", "fig7", "table1", "optimizers", "init", "demo", "frontier")
EXPERIMENT_HELP = {
    "fig4": "validation loss against iterations: full, hash and QR mult at 4 collisions",
    "fig5": "test loss against parameters: collisions 2-7 and 60, every operation, full table",
    "fig6": "test loss against the threshold (4 collisions), per operation",
    "fig7": "parameters against the threshold (4 collisions), per operation",
    "table1": "path-based QR at 4 collisions, MLP hidden 16, 32, 64, 128",
    "optimizers": "Adagrad against AMSGrad for each QR operation and the baselines",
    "init": "initialization rules of the QR tables (model.embedding.init), with both optimizers",
    "demo": "the main job: the paper's schemes at 4, 16, 60 collisions, the successors at 4x",
    "frontier": "test loss against embedding parameters, every scheme at 2x to 1000x compression",
}
PAPER_COLLISIONS = (2, 3, 4, 5, 6, 7, 60)
PAPER_THRESHOLDS = (1, 20, 200, 2000, 20000)
PATH_HIDDEN = (16, 32, 64, 128)
DEMO_COLLISIONS = (4, 16, 60)
# The methods that came after the paper (frontier lines), each sized to DEMO_TARGET the way the
# frontier sizes it: beside the paper's schemes, so the demo's table covers every scheme.
DEMO_SUCCESSORS = ("md", "robe", "cce", "tt", "dhe")
DEMO_TARGET = 4

# The optimizer each operation trains with when the experiment says "auto", settled by the
# "optimizers" and "init" experiments on MovieLens-100k (docs/movielens/): with the library's
# init, AMSGrad and Adagrad differ by less than one std for every operation (AMSGrad wins only
# from the reference's all-positive init), and Adagrad keeps sparse table updates.
AUTO_OPTIMIZER = {"concat": "adagrad", "add": "adagrad", "mult": "adagrad"}


def scaled_grid(
    name: str, values: Sequence[int], cardinalities: Sequence[int]
) -> tuple[tuple[int, ...], str | None]:
    """``values`` of a collisions or threshold grid that make sense for ``cardinalities``.

    Collisions must leave the largest feature at least 2 rows (c < largest / 2). A threshold at
    or above the largest cardinality keeps every table full, so those are dropped; if that
    leaves fewer than all of them, the second-largest cardinality is added (only the largest
    feature compressed): the end of the sweep, as 20000 is on Criteo (8 of 26 compressed).
    Returns the grid and a note saying what changed (None if nothing did).
    """
    largest = max(cardinalities)
    if name == "collisions":
        kept = tuple(c for c in values if c < largest / 2)
    else:
        kept = tuple(t for t in values if t < largest)
        if len(kept) < len(values):
            second = sorted(cardinalities)[-2] if len(cardinalities) > 1 else largest - 1
            kept = tuple(sorted(set(kept) | {second}))
    if kept == tuple(values):
        return kept, None
    return kept, (f"{name} grid scaled to the data (largest cardinality {largest:,}): "
                  f"{list(kept)} instead of the paper's {list(values)}")  # fmt: skip


def _qr_ops(collisions: int, ops: Sequence[str] = ("concat", "add", "mult")) -> list[Variant]:
    return [Variant(f"qr {op}", "qr", op, collisions, x=collisions) for op in ops]


def _fig5(cards: Sequence[int]) -> Experiment:
    grid, note = scaled_grid("collisions", PAPER_COLLISIONS, cards)
    variants = [Variant("full", "full")]
    for c in grid:
        variants += [Variant("hash", "hash", collisions=c, x=c),
                     Variant("feature", "feature", collisions=c, x=c), *_qr_ops(c)]  # fmt: skip
    return Experiment("fig5", "test loss against the number of parameters", tuple(variants),
                      "params", "number of parameters", notes=(note,) if note else ())  # fmt: skip


def _thresholds(name: str, cards: Sequence[int]) -> Experiment:
    grid, note = scaled_grid("thresholds", PAPER_THRESHOLDS, cards)
    variants = [Variant("full", "full")]
    for t in grid:
        variants += [Variant(f"qr {op}", "qr", op, 4, threshold=t, x=t)
                     for op in ("concat", "add", "mult")]  # fmt: skip
    plot, title = (
        ("threshold", "test loss against the threshold (4 collisions)")
        if name == "fig6"
        else ("threshold_params", "parameters against the threshold (4 collisions)")
    )
    return Experiment(name, title, tuple(variants), plot, "threshold",
                      notes=(note,) if note else ())  # fmt: skip


def _demo(cards: Sequence[int], embedding_dim: int) -> Experiment:
    grid, note = scaled_grid("collisions", DEMO_COLLISIONS, cards)
    variants: list[Variant] = [Variant("full", "full")]
    for c in grid:
        variants += [Variant("hash", "hash", collisions=c, x=c), *_qr_ops(c),
                     Variant("path h=64", "path", collisions=c, x=c)]  # fmt: skip
    successors, missed = place_lines(cards, select_lines(DEMO_SUCCESSORS), (DEMO_TARGET,),
                                     embedding_dim)  # fmt: skip
    notes = ([note] if note else []) + missed
    return Experiment("demo", f"the paper's schemes at {', '.join(map(str, grid))} collisions, "
                      f"the successors fitted to {DEMO_TARGET}x", (*variants, *successors),
                      "params", "number of parameters", notes=tuple(notes))  # fmt: skip


def build_experiment(name: str, cardinalities: Sequence[int], *, embedding_dim: int = 16,
                     lines: Sequence[str] | None = None,
                     targets: Sequence[float] | None = None) -> Experiment:
    """The grid of experiment ``name`` for data with these ``cardinalities``.

    ``lines`` (series of :data:`~compemb.experiments.frontier.FRONTIER_SCHEMES`; None: all) and
    ``targets`` (compressions; None: the default ones) choose part of the frontier, whose sizes
    are counted at ``embedding_dim``; other experiments take neither."""
    cards = tuple(cardinalities)
    if name != "frontier" and (lines is not None or targets is not None):
        raise ValueError(f"lines and targets choose part of the frontier; experiment {name!r} "
                         f"has fixed grids")
    if name == "fig4":
        variants = (Variant("full", "full"), Variant("hash", "hash", collisions=4),
                    Variant("qr mult", "qr", "mult", 4))  # fmt: skip
        return Experiment("fig4", "validation loss during training (4 collisions)", variants,
                          "curve", "iterations", curves=True)  # fmt: skip
    if name == "fig5":
        return _fig5(cards)
    if name in ("fig6", "fig7"):
        return _thresholds(name, cards)
    if name == "table1":
        variants = tuple(Variant(f"path h={h}", "path", collisions=4, path_hidden=h, x=h)
                         for h in PATH_HIDDEN)  # fmt: skip
        return Experiment("table1", "path-based QR (4 collisions) against MLP hidden units",
                          variants, "hidden", "hidden units per path MLP")  # fmt: skip
    if name == "optimizers":
        base = [Variant("full", "full"), Variant("hash", "hash", collisions=4),
                *_qr_ops(4), Variant("path h=64", "path", collisions=4)]  # fmt: skip
        variants = tuple(Variant(v.series, v.scheme, v.operation, v.collisions, x=v.x,
                                 optimizer=opt)
                         for v in base for opt in ("adagrad", "amsgrad"))  # fmt: skip
        return Experiment("optimizers", "Adagrad against AMSGrad (4 collisions)", variants,
                          "bars", "test log loss")  # fmt: skip
    if name == "init":
        variants = tuple(Variant(f"qr {op}", "qr", op, 4, x=4, optimizer=opt, init=rule)
                         for op in ("concat", "add", "mult")
                         for rule in (None, "gates", "reference", "zero_mean")
                         for opt in ("adagrad", "amsgrad"))  # fmt: skip
        return Experiment("init", "initialization rules of the QR tables (4 collisions)",
                          variants, "bars", "test log loss")  # fmt: skip
    if name == "demo":
        return _demo(cards, embedding_dim)
    if name == "frontier":
        return build_frontier(cards, select_lines(lines), targets or TARGET_COMPRESSIONS,
                              embedding_dim)
    raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
