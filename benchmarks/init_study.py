"""Init rules of QR mult under the CCE authors' MovieLens-100k GMF protocol (issue 18, item 4).

The protocol of thomasahle/cce ``examples/movielens.py``, restated: ratings of 3 dropped, label
rating >= 4; user and item ids made contiguous; each user's two latest ratings (by timestamp,
file order on ties) are the validation set, the rest is training. Model: GMF, prediction
``sigmoid(<user vector, item vector>)`` with no bias (as theirs), D = 32, 6,400 parameters per
table, binary cross-entropy, AdamW with torch's defaults, batch 4096 reshuffled every epoch,
ReduceLROnPlateau on the validation loss, their early stop (validation loss above 1.01x its best
and AUC below its best / 1.01). Reported: the best validation AUC up to each checkpoint epoch.
One run per seed gives every checkpoint (the first 20 epochs of a 100-epoch run are a 20-epoch
run: same seed, same scheduler state).

QR mult tables come from compemb's factory (``make_embedding_bag``) with collisions chosen by
``fit_budget`` to use at most 6,400 parameters; the full table is the anchor. The ``md`` rules
(issue 24, item 9) are mixed-dimension tables at the largest width that fits the same budget,
with the reference's bias-free Xavier projection or the CCE authors' ``ldim`` draws, each with
and without a projection bias (their ``LowDimensionalEmbedding`` has both).

    .venv/bin/python benchmarks/init_study.py [--rules default unit_tail gates unit_norm full]
        [--seeds 0 1 2] [--epochs 100] [--checkpoints 20 100] [--out results.json]
        [--plot curves.png] [--from-json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from compemb.data.movielens import movielens_100k_dir
from compemb.embeddings import fit_budget, make_embedding_bag
from compemb.spec import EmbeddingSpec

DIM = 32
PARAMS_PER_TABLE = 200 * DIM  # CCE's --ppd 200 at D = 32
# rule -> the md settings it names
MD_RULES: dict[str, dict[str, object]] = {
    "md": {}, "md+bias": {"bias": True},
    "md ldim": {"init": "ldim"}, "md ldim+bias": {"init": "ldim", "bias": True},
}


def load_ratings() -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(train (R, 3), valid (V, 3) rows of user, item, label; number of users, items)."""
    frame = pl.read_csv(movielens_100k_dir() / "ml-100k.inter", separator="\t")
    frame.columns = ["user", "item", "rating", "timestamp"]
    frame = frame.filter(pl.col("rating") != 3).with_row_index("row")
    users = frame["user"].to_numpy()
    items = frame["item"].to_numpy()
    user_ids = np.unique(users, return_inverse=True)[1]
    item_ids = np.unique(items, return_inverse=True)[1]
    label = (frame["rating"].to_numpy() >= 4).astype(np.int64)
    order = np.lexsort((frame["row"].to_numpy(), frame["timestamp"].to_numpy(), user_ids))
    user_sorted = user_ids[order]
    # sorted by user: a rating is among its user's last two when the user two places on differs
    last = np.ones(len(order), dtype=bool)
    last[:-2] = user_sorted[2:] != user_sorted[:-2]
    rows = np.stack([user_ids, item_ids, label], axis=1)[order]
    return (torch.from_numpy(rows[~last]), torch.from_numpy(rows[last]),
            int(user_ids.max()) + 1, int(item_ids.max()) + 1)


def make_table(n: int, rule: str) -> nn.Module:
    """A QR mult table within the budget under init ``rule``, or the full table (rule full)."""
    if rule == "full":
        return make_embedding_bag(n, DIM, validate=False)
    if rule in MD_RULES:
        spec = fit_budget([n], DIM, EmbeddingSpec("md", **MD_RULES[rule]), PARAMS_PER_TABLE)
        return make_embedding_bag(n, DIM, spec, validate=False)
    spec = fit_budget([n], DIM, EmbeddingSpec("qr", "mult", collisions=2, init=rule),
                      PARAMS_PER_TABLE)
    return make_embedding_bag(n, DIM, spec, validate=False)


class GMF(nn.Module):
    """Generalized matrix factorization: logit = <user vector, item vector>, (B,) -> (B,)."""

    def __init__(self, users: nn.Module, items: nn.Module):
        super().__init__()
        self.users, self.items = users, items

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return (self.users(user.view(-1, 1)) * self.items(item.view(-1, 1))).sum(-1)


def run(rule: str, seed: int, epochs: int, data: tuple) -> list[float]:
    """Validation AUC after each epoch (shorter than ``epochs`` when it stops early)."""
    train, valid, n_users, n_items = data
    torch.manual_seed(seed)
    model = GMF(make_table(n_users, rule), make_table(n_items, rule))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min")
    loss_fn = nn.BCEWithLogitsLoss()
    best_loss, best_auc, aucs = float("inf"), 0.0, []
    for _ in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(4096):
            optimizer.zero_grad()
            loss = loss_fn(model(batch[:, 0], batch[:, 1]), batch[:, 2].float())
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(valid[:, 0], valid[:, 1])
            valid_loss = float(loss_fn(logits, valid[:, 2].float()))
        auc = float(roc_auc_score(valid[:, 2].numpy(), logits.numpy()))
        aucs.append(auc)
        scheduler.step(valid_loss)
        if valid_loss > best_loss * 1.01 and auc * 1.01 < best_auc:
            break
        best_loss, best_auc = min(best_loss, valid_loss), max(best_auc, auc)
    return aucs


def plot(curves: dict[str, list[list[float]]], path: str) -> None:
    """Mean (and min-max band over seeds) of the best validation AUC so far, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for rule, runs in curves.items():
        length = max(len(c) for c in runs)
        best = np.array([np.maximum.accumulate(c + [c[-1]] * (length - len(c))) for c in runs])
        epochs = np.arange(1, length + 1)
        ax.plot(epochs, best.mean(0), label=rule)
        ax.fill_between(epochs, best.min(0), best.max(0), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("best validation AUC so far")
    ax.set_title("MovieLens-100k GMF at 6,400 parameters per table")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(curves: dict[str, list[list[float]]], checkpoints: list[int]) -> None:
    print(f"| init | {' | '.join(f'best AUC @ {c} ep' for c in checkpoints)} | epochs run |")
    print("| --- |" + " ---: |" * (len(checkpoints) + 1))
    for rule, runs in curves.items():
        cells = []
        for c in checkpoints:
            best = [max(curve[:c]) for curve in runs]
            cells.append(f"{statistics.mean(best):.4f} ± {statistics.stdev(best):.4f}")
        print(f"| {rule} | {' | '.join(cells)} | {'/'.join(str(len(r)) for r in runs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+",
                        default=["default", "unit_tail", "gates", "unit_norm", "full"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write every run's AUC curve as JSON")
    parser.add_argument("--plot", default=None, help="draw the curves to this PNG")
    parser.add_argument("--from-json", default=None, help="report a previous --out, no runs")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            curves = json.load(f)["curves"]
        table(curves, args.checkpoints)
        if args.plot:
            plot(curves, args.plot)
        return
    torch.set_num_threads(args.threads)
    data = load_ratings()
    train, valid, n_users, n_items = data
    print(f"train {len(train):,} valid {len(valid):,} users {n_users} items {n_items}; "
          f"positives {float(train[:, 2].float().mean()):.3f}")
    for rule in args.rules:
        if rule != "full":
            for n in (n_users, n_items):
                m = make_table(n, rule)
                size = f"width={m.width}" if rule in MD_RULES else \
                    f"collisions={m.partitions.sizes[1]}"
                print(f"  {rule}: n={n} {size} params={m.num_parameters}")
    curves: dict[str, list[list[float]]] = {}
    for rule in args.rules:
        start = time.perf_counter()
        curves[rule] = [run(rule, seed, args.epochs, data) for seed in args.seeds]
        print(f"  {rule}: {(time.perf_counter() - start) / len(args.seeds):.1f} s per run",
              flush=True)
    table(curves, args.checkpoints)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seeds": args.seeds, "curves": curves}, f)
    if args.plot:
        plot(curves, args.plot)


if __name__ == "__main__":
    main()
