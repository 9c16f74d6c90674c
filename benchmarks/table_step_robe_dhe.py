"""Table training step of ROBE and DHE embeddings against the full tables.

The harness of ``table_step.py`` (forward + backward + torch's Adagrad on a fixed random output
gradient, gradients set to None before each step, variants interleaved round by round, CPU
time of one thread, median of per-round ratios), on the 26 Criteo Kaggle features, D = 16, one
id per bag, uniform ids, tables capped at ``--cap`` rows. Every compressed variant is sized by
``fit_budget`` to the full tables' parameters divided by each ``--ratios`` value, features of at
most ``--threshold`` categories keeping their full tables. Variants:

- compemb full tables (the stacked collection; the base of the ratios), and the full tables as
  per-feature modules (ROBE and DHE features are per-feature modules: what that layout costs);
- ROBE, block-aligned Z = 4 and Z = 16 (one block per id), and unaligned Z = 4; sparse
  gradients of the array;
- DHE, depth 2, k = 64 hashes, uniform encoding; the width is the knob (its multiply-adds per
  id are printed).

    .venv/bin/python benchmarks/table_step_robe_dhe.py [--batches 2048] [--ratios 10 100]
"""

from __future__ import annotations

import argparse

from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.embeddings import FullEmbeddingBag, embedding_parameters, fit_budget
from table_step import bench_modules, capped_cards, module_parser
from table_step_md_tt import PerFeature

D = 16  # as table_step.py, whose harness runs the steps


def variants(cards: list[int], args: argparse.Namespace) -> dict[str, tuple[nn.Module, str]]:
    """Each variant's module and a note on its size."""
    out: dict[str, tuple[nn.Module, str]] = {}
    full = EmbeddingBagCollection(cards, D, EmbeddingSpec("full", sparse=True), validate=False)
    out["compemb full, torch optim"] = (full, "")
    out["full, per-feature modules"] = (PerFeature(
        [FullEmbeddingBag(n, D, sparse=True, validate=False) for n in cards]), "")
    t = args.threshold
    for ratio in args.ratios:
        budget = full.num_parameters // ratio
        for name, spec in (
            ("ROBE Z=4", EmbeddingSpec("robe", size=4, block=4, threshold=t, sparse=True)),
            ("ROBE Z=16", EmbeddingSpec("robe", size=16, block=16, threshold=t, sparse=True)),
            ("ROBE Z=4 unaligned", EmbeddingSpec("robe", size=4, block=4, aligned=False,
                                                 threshold=t, sparse=True)),
            ("DHE", EmbeddingSpec("dhe", width=1, threshold=t)),
        ):
            fitted = fit_budget(cards, D, spec, budget)
            module = EmbeddingBagCollection(cards, D, fitted, validate=False)
            label, detail = fitted.owner.describe(fitted)
            used = embedding_parameters(cards, D, fitted)
            note = f"{label} ({detail}), {full.num_parameters / used:.0f}x"
            out[f"{name} /{ratio}"] = (module, note)
    return out


def main() -> None:
    parser = module_parser(__doc__)
    parser.add_argument("--ratios", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--threshold", type=int, default=1000)
    args = parser.parse_args()
    cards = capped_cards(args)
    bench_modules(variants(cards, args), cards, args, f"; threshold {args.threshold}")


if __name__ == "__main__":
    main()
