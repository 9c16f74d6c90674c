"""Table training step of ROBE, DHE and CCE embeddings against the full tables.

The harness of ``table_step.py`` (forward + backward + torch's Adagrad on a fixed random output
gradient, gradients set to None before each step, variants interleaved round by round, CPU
time of one thread, median of per-round ratios), on the 26 Criteo Kaggle features, D = 16, one
id per bag, uniform ids, tables capped at ``--cap`` rows. Every compressed variant is sized by
``fit_budget`` to the full tables' parameters divided by each ``--ratios`` value, features of at
most ``--threshold`` categories keeping their full tables. Variants:

- compemb full tables (the stacked collection; the base of the ratios), and the full tables as
  per-feature modules (ROBE and DHE features are per-feature modules: what that layout costs);
- ROBE-Z (one array for all features, blocks at any offset: two rows read per block) at Z = 4
  and Z = 16 (one block per id); ROBE with an array per feature, block-aligned (one row per
  block) at Z = 4 and Z = 16, and unaligned at Z = 4 (Z rows of width 1); sparse gradients of
  the arrays;
- DHE, depth 2, k = 64 hashes, uniform encoding; the width is the knob (its multiply-adds per
  id are printed);
- CCE with c = 4 chunks (8 rows of width 4 per id) and c = 1 (2 rows of width 16); sparse
  gradients; the rows R are the knob. Its training-mode forward also marks the ids seen.

After the steps, one ``recluster`` of the CCE collections of the ``--recluster-ratios`` is
timed (CPU time, over the ids the steps saw), with ``--kmeans-iters`` and ``--kmeans-samples``
(lower than the scheme's defaults of 100 and 200, which on these sizes take many minutes on one
thread; at /10, R = 31,845 rows, the sequential k-means++ start alone takes minutes).

    .venv/bin/python benchmarks/table_step_robe_dhe.py [--batches 2048] [--ratios 10 100]
"""

from __future__ import annotations

import argparse
import time

import torch
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
            ("ROBE-Z Z=4", EmbeddingSpec("robe", size=4, block=4, threshold=t, sparse=True)),
            ("ROBE-Z Z=16", EmbeddingSpec("robe", size=16, block=16, threshold=t, sparse=True)),
            ("ROBE per feature Z=4", EmbeddingSpec("robe", size=4, block=4, shared=False,
                                                   aligned=True, threshold=t, sparse=True)),
            ("ROBE per feature Z=16", EmbeddingSpec("robe", size=16, block=16, shared=False,
                                                    aligned=True, threshold=t, sparse=True)),
            ("ROBE per feature Z=4 unaligned", EmbeddingSpec(
                "robe", size=4, block=4, shared=False, aligned=False, threshold=t,
                sparse=True)),
            ("DHE", EmbeddingSpec("dhe", width=1, threshold=t)),
            ("CCE c=4", EmbeddingSpec("cce", rows=1, chunks=4, threshold=t, sparse=True,
                                      kmeans_iters=args.kmeans_iters,
                                      kmeans_samples=args.kmeans_samples)),
            ("CCE c=1", EmbeddingSpec("cce", rows=1, chunks=1, threshold=t, sparse=True,
                                      kmeans_iters=args.kmeans_iters,
                                      kmeans_samples=args.kmeans_samples)),
        ):
            fitted = fit_budget(cards, D, spec, budget)
            module = EmbeddingBagCollection(cards, D, fitted, validate=False)
            label, detail = fitted.owner.describe(fitted)
            used = embedding_parameters(cards, D, fitted)
            note = f"{label} ({detail}), {full.num_parameters / used:.0f}x"
            out[f"{name} /{ratio}"] = (module, note)
    return out


def time_reclustering(made: dict[str, tuple[nn.Module, str]], ratios: list[int]) -> None:
    """CPU time of one ``recluster`` of each collection of ``ratios`` whose modules have
    one."""
    print(f"\none recluster of every feature, CPU time, {torch.get_num_threads()} thread(s)")
    for name, (module, _) in made.items():
        owners = [m for m in module.modules() if callable(getattr(m, "recluster", None))]
        if not owners or not name.endswith(tuple(f"/{r}" for r in ratios)):
            continue
        seen = sum(int(m.seen.sum()) for m in owners)
        started = time.process_time()
        for j, m in enumerate(owners):
            m.recluster(seed=j)
        took = time.process_time() - started
        print(f"  {name:28s} {took:8.1f} s  ({len(owners)} features, {seen:,} seen ids)")


def main() -> None:
    parser = module_parser(__doc__)
    parser.add_argument("--ratios", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--threshold", type=int, default=1000)
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--kmeans-samples", type=int, default=32)
    parser.add_argument("--recluster-ratios", type=int, nargs="*", default=[100])
    args = parser.parse_args()
    cards = capped_cards(args)
    made = variants(cards, args)
    bench_modules(made, cards, args, f"; threshold {args.threshold}")
    time_reclustering(made, args.recluster_ratios)


if __name__ == "__main__":
    main()
