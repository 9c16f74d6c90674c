"""DHE's hashes and depth: the paper's (k = 1024, 5 hidden layers) against compemb's earlier
default (k = 64, 2 hidden layers) at equal parameters on MovieLens-100k.

DLRM, D = 16, Adagrad, one epoch, as ``configs/movielens-dlrm-qr.yaml``; only
``model.embedding`` changes. Features of at most 100 categories keep full tables
(``threshold: 100``), so every setting embeds the same three features (943, 1682 and 795
categories) by DHE. Each budget is the paper setting's embedding parameters at a width given
by ``--paper-widths``; every other setting gets the width whose count comes closest to it.
Each row is trained with every seed; the table gives mean ± sample std of the test log loss
and AUC, and the test log loss minus the paper setting's of the same seed (mean ± std).

    .venv/bin/python benchmarks/dhe_settings.py [--paper-widths 1 4] [--seeds 0 1 2 3 4]
        [--out runs/dhe-settings] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from compemb.config import load_config_text
from compemb.data import open_dataset
from compemb.embeddings import EmbeddingSpec, embedding_parameters
from compemb.training import train

BASE = Path(__file__).resolve().parents[1] / "configs" / "movielens-dlrm-qr.yaml"
THRESHOLD = 100
PAPER = (1024, 5)  # (hashes, depth)
# (hashes, depth) compared with the paper's: the earlier default, then each change alone
SETTINGS = [PAPER, (64, 2), (1024, 2), (64, 5)]


def spec(hashes: int, depth: int, width: int) -> EmbeddingSpec:
    return EmbeddingSpec("dhe", width=width, depth=depth, hashes=hashes, threshold=THRESHOLD)


def closest_width(cards: list[int], hashes: int, depth: int, budget: int) -> int:
    """The width whose embedding parameters come closest to ``budget`` (ties: the smaller)."""
    best, width = None, 1
    while True:
        size = embedding_parameters(cards, 16, spec(hashes, depth, width))
        if best is None or abs(size - budget) < abs(best[0] - budget):
            best = (size, width)
        if size > budget:
            return best[1]
        width += 1


def run(s: EmbeddingSpec, seed: int, out: Path, dataset: object) -> dict:
    raw = yaml.safe_load(BASE.read_text())
    raw["model"]["embedding"] = {k: v for k, v in s.to_dict().items()
                                 if v is not None and k != "sparse"}
    raw["train"]["seed"] = seed
    config = load_config_text(yaml.safe_dump(raw), "dhe_settings")
    return train(config, out, dataset=dataset, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper-widths", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("runs/dhe-settings"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dataset = open_dataset("movielens")
    cards = list(dataset.cardinalities)
    rows = []
    print("| budget | k | depth | width | embedding parameters | test log loss | test AUC | "
          "minus the paper setting's, same seed |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for paper_width in args.paper_widths:
        budget = embedding_parameters(cards, 16, spec(*PAPER, paper_width))
        paper_losses: list[float] = []
        for hashes, depth in SETTINGS:
            width = paper_width if (hashes, depth) == PAPER else \
                closest_width(cards, hashes, depth, budget)
            s = spec(hashes, depth, width)
            finals = [run(s, seed, args.out / f"b{budget}-k{hashes}-d{depth}-w{width}-s{seed}",
                          dataset) for seed in args.seeds]
            losses = [f["test_logloss"] for f in finals]
            aucs = [f["test_auc"] for f in finals]
            if (hashes, depth) == PAPER:
                paper_losses = losses
            diffs = [a - b for a, b in zip(losses, paper_losses, strict=True)]
            sd = statistics.stdev if len(args.seeds) > 1 else (lambda v: 0.0)
            row = {"budget": budget, "hashes": hashes, "depth": depth, "width": width,
                   "embedding_parameters": finals[0]["embedding_parameters"],
                   "logloss": losses, "auc": aucs, "vs_paper": diffs}
            rows.append(row)
            print(f"| {budget:,} | {hashes} | {depth} | {width} | "
                  f"{row['embedding_parameters']:,} | "
                  f"{statistics.mean(losses):.4f} ± {sd(losses):.4f} | "
                  f"{statistics.mean(aucs):.4f} ± {sd(aucs):.4f} | "
                  f"{statistics.mean(diffs):+.4f} ± {sd(diffs):.4f} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
