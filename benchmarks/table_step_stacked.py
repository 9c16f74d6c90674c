"""Table training step of the successors' stacked forms against the stacked full tables.

The harness of ``table_step.py`` (forward + backward + optimizer on a fixed random output
gradient, gradients set to None before each step, variants interleaved round by round, CPU time
of one thread, median of per-round ratios), on the 26 Criteo Kaggle features capped at ``--cap``
rows, D = 16, one id per bag, uniform ids. Every compressed collection is sized by
``fit_budget`` to the full tables' parameters over ``--ratio`` (features of at most
``--threshold`` categories keep full tables) and steps with compemb's FusedAdagrad (row
gradients routed from the backward); the full tables step with torch's sparse Adagrad (the base
of the ratios, as the frontier's panel) and with FusedAdagrad. Variants:

- MD (alpha 0.3, the base width the knob), also with ``multiple_of: 4`` (at most 4 widths),
  and with its width groups replaced by one block-diagonal projection (every feature one part of
  ``batched_parts.PartedGroup``: a gather per width, each row placed at its feature's columns, one
  batched matmul), the other stacked layout;
- MD + QR (mult tail, head ceil(sqrt(n)), ``order: frequency``);
- block MD (4 blocks, ``order: frequency``);
- CCE (c = 4 chunks; its training-mode forward marks the ids seen);
- TT-Rec at rank 8 (3 cores; not fitted: the issue's target is set at rank 8);
- DHE (depth 2, the scheme's default k hashes, uniform encoding; the width the knob);
- ROBE-Z (one array for every feature, Z = 4, blocks at any offset: two rows read per block; the
  array size the knob), and ROBE with an array per feature, block-aligned (one row per block);
- QR-mult for reference, and MD, TT, DHE and both ROBE forms as one module per feature (the
  layout before stacking; ROBE-Z's features then read the collection's array each through its
  own module), with torch's Adagrad.

Frequency ranks come from seeded Zipf counts (the ids stay uniform: the step's cost does not
depend on which ids are frequent).

    .venv/bin/python benchmarks/table_step_stacked.py [--batches 2048 16384] [--ratio 4]
"""

from __future__ import annotations

import argparse
from unittest import mock

import numpy as np
from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.embeddings import embedding_parameters, fit_budget, module_from_plan
from compemb.embeddings.batched_md import MixedDimGroup
from compemb.embeddings.batched_parts import Part, PartedStack
from compemb.scheme import Scheme
from compemb.schemes.robe import RobeScheme
from table_step import bench_modules, capped_cards, module_parser
from table_step_md_tt import PerFeature

D = 16  # as table_step.py, whose harness runs the steps


def _whole(plan) -> tuple[list[Part], list[str]]:
    """An MD feature as one part of its frequency-parts group (no ranks: the ids)."""
    (table,) = plan.tables
    return [Part(0, plan.num_categories, table.width, (table.name,), "projection")], \
        ["weight", "projection"]


def block_diagonal(module: EmbeddingBagCollection) -> EmbeddingBagCollection:
    """The MD collection with its width groups replaced by one frequency-parts group: a gather
    per width, every row placed at its feature's columns and one batched block-diagonal
    projection (the alternative to a batched matmul per width)."""
    for g, group in enumerate(module.groups):
        if isinstance(group, MixedDimGroup):
            module.groups[g] = PartedStack(D, None, _whole).build(
                group.plans, sparse=True, device=None, dtype=None)
    return module


def variants(cards: list[int], args: argparse.Namespace
             ) -> tuple[dict[str, tuple[nn.Module, str]], frozenset[str]]:
    """Each variant's module and a note on its size; the names that step with FusedAdagrad."""
    out: dict[str, tuple[nn.Module, str]] = {}
    full = EmbeddingBagCollection(cards, D, EmbeddingSpec("full", sparse=True), validate=False)
    out["compemb full, torch optim"] = (full, "")
    out["compemb full, fused"] = (
        EmbeddingBagCollection(cards, D, EmbeddingSpec("full", sparse=True), validate=False), "")
    counts = [np.random.default_rng(f).zipf(1.5, n).astype(np.int64)
              for f, n in enumerate(cards)]
    budget = full.num_parameters // args.ratio
    t = args.threshold
    specs = {
        "QR mult": EmbeddingSpec("qr", "mult", collisions=2, threshold=t, sparse=True),
        "MD": EmbeddingSpec("md", alpha=0.3, base_width=16, threshold=t, sparse=True),
        "MD x4": EmbeddingSpec("md", alpha=0.3, base_width=16, multiple_of=4, threshold=t,
                               sparse=True),
        "MD+QR": EmbeddingSpec("md_qr", collisions=2, order="frequency", threshold=t,
                               sparse=True),
        "block MD": EmbeddingSpec("md_block", alpha=0.3, order="frequency", threshold=t,
                                  sparse=True),
        "CCE c=4": EmbeddingSpec("cce", rows=1, chunks=4, threshold=t, sparse=True),
        "TT rank 8": EmbeddingSpec("tt", rank=8, threshold=t, sparse=True),
        "DHE": EmbeddingSpec("dhe", width=1, threshold=t),
        "ROBE-Z": EmbeddingSpec("robe", size=4, block=4, threshold=t, sparse=True),
        "ROBE per feature": EmbeddingSpec("robe", size=4, block=4, shared=False, aligned=True,
                                          threshold=t, sparse=True),
    }
    fused = set()
    for name, spec in specs.items():
        if name in args.skip:
            continue
        try:  # TT keeps its rank: the target is set at rank 8
            fitted = spec if spec.scheme == "tt" else fit_budget(cards, D, spec, budget)
        except ValueError as err:  # MD cannot reach every budget (at D = 16, about 16x)
            print(f"  {name}: left out: {err}")
            continue
        given = counts if fitted.needs_counts else None
        module = EmbeddingBagCollection(cards, D, fitted, counts=given, validate=False)
        label, detail = fitted.owner.describe(fitted)
        used = embedding_parameters(cards, D, fitted)
        stacked = "stacked" if not module.unstacked else f"{len(module.unstacked)} unstacked"
        note = f"{label} ({detail}), {full.num_parameters / used:.1f}x, {stacked}, " \
               f"{len(module.groups)} groups"
        out[f"{name}, fused"] = (module, note)
        fused.add(f"{name}, fused")
        if name == "MD":
            other = EmbeddingBagCollection(cards, D, fitted, validate=False)
            out["MD block-diagonal, fused"] = (block_diagonal(other), "")
            fused.add("MD block-diagonal, fused")
        if name in ("MD", "TT rank 8", "DHE"):  # the layout before stacking
            per = PerFeature([module_from_plan(p, validate=False) for p in module.plans])
            out[f"{name} per-feature, torch optim"] = (per, note.split(",")[0])
        if name.startswith("ROBE"):  # the collection before ROBE was stacked
            with mock.patch.object(RobeScheme, "stacking", Scheme.stacking):
                per = EmbeddingBagCollection(cards, D, fitted, validate=False)
            out[f"{name} per-feature, torch optim"] = (per, note.split(",")[0])
    return out, frozenset(fused)


def main() -> None:
    parser = module_parser(__doc__)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--threshold", type=int, default=100)
    parser.add_argument("--divide", type=int, default=1,
                        help="divide the cardinalities (1000: the planted small-table data)")
    parser.add_argument("--skip", nargs="*", default=[], help="variant names to leave out")
    args = parser.parse_args()
    cards = [max(2, -(-n // args.divide)) for n in capped_cards(args)]
    made, fused = variants(cards, args)
    bench_modules(made, cards, args, f"; /{args.ratio}, threshold {args.threshold}", fused)


if __name__ == "__main__":
    main()
