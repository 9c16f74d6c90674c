"""Does MD + QR (``md_qr``) beat MD and QR on MovieLens-100k at matched parameter budgets?

DLRM, D = 16, Adagrad, one epoch, as ``configs/movielens-dlrm-qr.yaml``; only
``model.embedding`` changes. The budgets are QR mult's exact embedding parameters at the given
collisions. For every other scheme and budget, each alpha in ``--alphas`` gets its knob from
``fit_budget`` (the largest embedding that fits), and the alpha whose count comes closest to
the budget from below is trained; ties to the smaller alpha. Every row is trained with each
seed; the table gives mean ± sample std of test AUC and the mean test log loss.

    .venv/bin/python benchmarks/movielens_md_qr.py [--collisions 9 4 3] [--seeds 0 1 2]
        [--alphas 0.1 0.2 0.3] [--schemes qr md md_block md_qr] [--head H]
        [--out runs/md-qr] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from compemb.config import load_config_text
from compemb.data import open_dataset
from compemb.embeddings import EmbeddingSpec, embedding_parameters, fit_budget
from compemb.training import train

BASE = Path(__file__).resolve().parents[1] / "configs" / "movielens-dlrm-qr.yaml"
# the searched family of each scheme (its knob is replaced by fit_budget)
FAMILIES = {
    "md": {"scheme": "md"},
    "md_block": {"scheme": "md_block", "num_blocks": 4, "order": "frequency"},
    "md_qr": {"scheme": "md_qr", "operation": "mult", "collisions": 2, "order": "frequency"},
}


def matched(cards: list[int], budget: int, family: dict, alphas: list[float]) -> EmbeddingSpec:
    """The family's spec closest to ``budget`` from below over ``alphas``."""
    best: tuple[int, EmbeddingSpec] | None = None
    for alpha in alphas:
        try:
            spec = fit_budget(cards, 16, EmbeddingSpec(**family, alpha=alpha), budget)
        except ValueError:
            continue  # even the smallest layout at this alpha is over the budget
        size = embedding_parameters(cards, 16, spec)
        if best is None or size > best[0]:
            best = (size, spec)
    if best is None:
        raise ValueError(f"no {family['scheme']} layout fits {budget}")
    return best[1]


def run(spec: EmbeddingSpec, seed: int, out: Path, dataset: object) -> dict:
    raw = yaml.safe_load(BASE.read_text())
    raw["model"]["embedding"] = {k: v for k, v in spec.to_dict().items()
                                 if v is not None and k != "sparse"}
    raw["train"]["seed"] = seed
    config = load_config_text(yaml.safe_dump(raw), "movielens_md_qr")
    return train(config, out, dataset=dataset, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collisions", type=int, nargs="+", default=[9, 4, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--schemes", nargs="+", default=["qr", *FAMILIES],
                        choices=["qr", *FAMILIES])
    parser.add_argument("--head", type=int, default=None,
                        help="md_qr's head on every feature (default: ceil(sqrt(n)) each)")
    parser.add_argument("--out", type=Path, default=Path("runs/md-qr"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.head is not None:
        FAMILIES["md_qr"] = {**FAMILIES["md_qr"], "head": args.head}
    dataset = open_dataset("movielens")
    cards = list(dataset.cardinalities)
    rows = []
    for c in args.collisions:
        qr = EmbeddingSpec("qr", "mult", collisions=c)
        budget = embedding_parameters(cards, 16, qr)
        specs = [qr] if "qr" in args.schemes else []
        specs += [matched(cards, budget, FAMILIES[name], args.alphas) for name in FAMILIES
                  if name in args.schemes]
        for spec in specs:
            label, detail = spec.owner.describe(spec)
            finals = [run(spec, seed, args.out / f"b{budget}-{label.replace(' ', '_')}-s{seed}",
                          dataset) for seed in args.seeds]
            aucs = [f["test_auc"] for f in finals]
            rows.append({"budget": budget, "scheme": spec.scheme, "settings": label,
                         "detail": detail, "spec": spec.to_dict(),
                         "embedding_parameters": finals[0]["embedding_parameters"],
                         "auc_mean": statistics.mean(aucs),
                         "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                         "logloss_mean": statistics.mean(f["test_logloss"] for f in finals),
                         "aucs": aucs})
            r = rows[-1]
            print(f"| {budget:,} | {r['settings']} ({detail}) | {r['embedding_parameters']:,} | "
                  f"{r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['logloss_mean']:.4f} |",
                  flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
