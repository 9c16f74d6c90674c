"""Table training step of mixed-dimension and TT-Rec embeddings against the full tables.

The harness of ``table_step.py`` (forward + backward + torch's Adagrad on a fixed random output
gradient, gradients set to None before each step, variants interleaved round by round, CPU
time of one thread, median of per-round ratios), on the 26 Criteo Kaggle features, D = 16, one
id per bag, uniform ids. Tables are capped at ``--cap`` rows (default 1 M; 0 keeps the real
sizes, about 4.3 GB for the full tables and their Adagrad state) so the run fits a shared
machine. Variants:

- compemb full tables (the stacked collection; the base of the ratios) and QR-4 mult, as in
  ``table_step.py``;
- MD: per-feature :class:`MixedDimEmbeddingBag`, widths ``md_widths(alpha, base_width=16)``,
  alone and rounded up to a multiple of 4 (what FBGEMM shards);
- full tables as per-feature modules (what the MD and TT rows pay for being per-feature);
- TT: per-feature :class:`TTEmbeddingBag`, 3 cores, rank 8 (sparse and dense core gradients)
  and 32, for features of more than ``--tt-threshold`` categories (smaller ones keep a full
  table, as TT-Rec does).

    .venv/bin/python benchmarks/table_step_md_tt.py [--batches 2048 16384] [--rounds 7]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import FullEmbeddingBag
from compemb.embeddings.mixed_dim import MixedDimEmbeddingBag, md_widths
from compemb.embeddings.tt import TTEmbeddingBag
from table_step import bench_modules, capped_cards, module_parser

D = 16


class PerFeature(nn.Module):
    """One module per feature: ids (B, F) -> (B, F * D)."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.features = nn.ModuleList(modules)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(ids[:, f:f + 1]) for f, m in enumerate(self.features)], dim=1)


def variants(cards: list[int], args: argparse.Namespace) -> dict[str, tuple[nn.Module, str]]:
    """Each variant's module and a note on its size."""
    out: dict[str, tuple[nn.Module, str]] = {}
    full = EmbeddingBagCollection(cards, D, EmbeddingSpec("full", sparse=True), validate=False)
    out["compemb full, torch optim"] = (full, "")
    qr = EmbeddingBagCollection(cards, D, EmbeddingSpec("qr", operation="mult", collisions=4,
                                                        sparse=True), validate=False)
    out["compemb QR-4, torch optim"] = (qr, "")
    out["full, per-feature modules"] = (PerFeature(
        [FullEmbeddingBag(n, D, sparse=True, validate=False) for n in cards]), "")
    for multiple in (1, 4):
        # widths of the real cardinalities (the layout a Criteo run gets), rows capped
        widths = md_widths(CRITEO_KAGGLE_CARDINALITIES, args.alpha, base_width=D,
                           multiple_of=multiple)
        mods = [MixedDimEmbeddingBag(n, D, w, sparse=True, validate=False)
                for n, w in zip(cards, widths, strict=True)]
        out[f"MD a={args.alpha} x{multiple}"] = (PerFeature(mods), f"widths {widths}")
    for rank, sparse in ((8, True), (8, False), (32, False)):
        # the cores are small (a few hundred rows): dense gradients may beat sparse ones
        mods = [TTEmbeddingBag(n, D, rank, sparse=sparse, validate=False)
                if n > args.tt_threshold else FullEmbeddingBag(n, D, sparse=True,
                                                               validate=False)
                for n in cards]
        grads = "sparse" if sparse else "dense"
        out[f"TT rank {rank}, {grads} cores"] = (PerFeature(mods), "")
    return out


def main() -> None:
    parser = module_parser(__doc__)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--tt-threshold", type=int, default=10_000)
    args = parser.parse_args()
    cards = capped_cards(args)
    bench_modules(variants(cards, args), cards, args)


if __name__ == "__main__":
    main()
