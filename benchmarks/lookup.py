"""Embedding lookup speed on the 26 Criteo Kaggle features: forward + backward, samples/s.

All variants run side by side in one process, interleaved round by round, so machine noise hits
them alike; the ratio to the full tables is the number to read. Gradients are cleared before
every timed step, as training does (sparse gradients otherwise pile up and every step slows).

    .venv/bin/python benchmarks/lookup.py [--batches 2048 16384] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.data import CRITEO_KAGGLE_CARDINALITIES

D = 16


class NaiveQR(nn.Module):
    """The reference implementation's QR: two EmbeddingBags per feature, each pooled over the
    bag, then multiplied (integer quotients here, so it is at least correct)."""

    def __init__(self, cardinalities, collisions: int):
        super().__init__()
        self.c = collisions
        self.q = nn.ModuleList(
            nn.EmbeddingBag(-(-n // collisions), D, mode="sum", sparse=True) for n in cardinalities
        )
        self.r = nn.ModuleList(nn.EmbeddingBag(collisions, D, mode="sum", sparse=True)
                               for _ in cardinalities)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outs = []
        for f, (q, r) in enumerate(zip(self.q, self.r, strict=True)):
            x = ids[:, f : f + 1]
            outs.append(q(torch.div(x, self.c, rounding_mode="floor")) * r(x % self.c))
        return torch.stack(outs, 1)


class FullTables(nn.Module):
    """26 plain nn.EmbeddingBag with sparse gradients: what users have today."""

    def __init__(self, cardinalities):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(n, D, mode="sum", sparse=True)
                                    for n in cardinalities)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(ids[:, f : f + 1]) for f, t in enumerate(self.tables)], 1)


def variants(cards) -> dict[str, nn.Module]:
    def ebc(validate: bool, **spec) -> nn.Module:
        return EmbeddingBagCollection(cards, D, EmbeddingSpec(sparse=True, **spec),
                                      validate=validate)

    return {
        "full nn.EmbeddingBag x26": FullTables(cards),
        "full, compemb collection": ebc(False, scheme="full"),
        "hash 4 (compemb)": ebc(False, scheme="hash", collisions=4),
        "naive QR mult 4 (reference)": NaiveQR(cards, 4),
        "compemb QR mult 4": ebc(False, scheme="qr", collisions=4),
        "compemb QR mult 4, validate": ebc(True, scheme="qr", collisions=4),
        "compemb QR mult 60": ebc(False, scheme="qr", collisions=60),
        "compemb path MLP h=16, 4": ebc(False, scheme="path", collisions=4, path_hidden=16),
        "compemb path MLP h=64, 4": ebc(False, scheme="path", collisions=4, path_hidden=64),
    }


def step(module: nn.Module, ids: torch.Tensor) -> None:
    for p in module.parameters():
        p.grad = None
    module(ids).sum().backward()


def bench(models: dict[str, nn.Module], make_ids: Callable[[], torch.Tensor], rounds: int,
          steps: int) -> dict[str, list[float]]:
    ids = [make_ids() for _ in range(steps)]
    for m in models.values():  # warm-up
        for x in ids[:2]:
            step(m, x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            for x in ids:
                step(m, x)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cards = torch.tensor(CRITEO_KAGGLE_CARDINALITIES)
    models = variants(CRITEO_KAGGLE_CARDINALITIES)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D={D}, 26 features, "
          f"one id per bag, uniform ids, forward+backward, sparse gradients")
    for batch in args.batches:
        def make_ids(batch=batch) -> torch.Tensor:
            return (torch.rand(batch, len(cards)) * cards).long()

        times = bench(models, make_ids, args.rounds, args.steps)
        base = statistics.median(times["full nn.EmbeddingBag x26"])
        print(f"\nbatch {batch}")
        print(f"{'variant':32s} {'samples/s':>12s} {'vs full':>8s}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:32s} {batch / med:12,.0f} {base / med:8.2f}")
        mult = statistics.median(times["compemb QR mult 4"])
        naive = statistics.median(times["naive QR mult 4 (reference)"])
        full_ebc = statistics.median(times["full, compemb collection"])
        print(f"compemb QR mult 4 vs naive QR: {naive / mult:.2f}x; vs full collection: "
              f"{full_ebc / mult:.2f}x")
        for h in (16, 64):
            path = statistics.median(times[f"compemb path MLP h={h}, 4"])
            print(f"path MLP h={h} costs {path / mult:.2f}x QR mult's time")


if __name__ == "__main__":
    main()
