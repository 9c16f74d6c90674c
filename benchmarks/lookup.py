"""Embedding lookup speed on the 26 Criteo Kaggle features: forward + backward, samples/s.

All variants run side by side in one process, interleaved round by round, so machine noise hits
them alike; the ratio to the full tables is the number to read. Gradients are cleared before
every timed step, as training does (sparse gradients otherwise pile up and every step slows).

    .venv/bin/python benchmarks/lookup.py [--batches 2048 16384] [--rounds 7] [--threads 1]
        [--clock cpu|wall]

The clock is the process's CPU time on one torch thread by default (see
benchmarks/table_step.py for why, on a shared machine).
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
from compemb.embeddings import CompositionalEmbeddingBag, FullEmbeddingBag
from compemb.partitions import quotient_remainder

D = 16


class NaiveQR(nn.Module):
    """The reference implementation's QR: two EmbeddingBags per feature, each pooled over the
    bag, then multiplied (integer quotients here, so it is at least correct). ``flat``: each
    feature's ids as 1-D input with offsets (B,), as ``nn.EmbeddingBag`` also takes them."""

    def __init__(self, cardinalities, collisions: int, flat: bool = False):
        super().__init__()
        self.c = collisions
        self.flat = flat
        self.q = nn.ModuleList(
            nn.EmbeddingBag(-(-n // collisions), D, mode="sum", sparse=True) for n in cardinalities
        )
        self.r = nn.ModuleList(nn.EmbeddingBag(collisions, D, mode="sum", sparse=True)
                               for _ in cardinalities)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outs = []
        offsets = torch.arange(ids.shape[0]) if self.flat else None
        for f, (q, r) in enumerate(zip(self.q, self.r, strict=True)):
            x = ids[:, f] if self.flat else ids[:, f : f + 1]
            outs.append(q(torch.div(x, self.c, rounding_mode="floor"), offsets)
                        * r(x % self.c, offsets))  # fmt: skip
        return torch.stack(outs, 1)


class PerFeature(nn.Module):
    """One compemb ``CompositionalEmbeddingBag(sparse=True)`` per feature, as a user replaces
    each ``nn.EmbeddingBag`` (2-D (B, 1) input, or 1-D with offsets)."""

    def __init__(self, cardinalities, collisions: int, flat: bool = False):
        super().__init__()
        self.flat = flat
        self.bags = nn.ModuleList(
            CompositionalEmbeddingBag(n, D, quotient_remainder(n, collisions), "mult",
                                      sparse=True) if n > collisions else
            FullEmbeddingBag(n, D, sparse=True)
            for n in cardinalities
        )  # fmt: skip

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(ids.shape[0]) if self.flat else None
        return torch.stack([bag(ids[:, f], offsets) if self.flat else bag(ids[:, f : f + 1])
                            for f, bag in enumerate(self.bags)], 1)  # fmt: skip


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
        "naive QR mult 4, 1-D+offsets": NaiveQR(cards, 4, flat=True),
        "per-feature QR mult 4": PerFeature(cards, 4),
        "per-feature QR mult 4, 1-D": PerFeature(cards, 4, flat=True),
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
          steps: int, clock: Callable[[], float]) -> dict[str, list[float]]:
    ids = [make_ids() for _ in range(steps)]
    for m in models.values():  # warm-up
        for x in ids[:2]:
            step(m, x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = clock()
            for x in ids:
                step(m, x)
            times[name].append((clock() - t0) / steps)
    return times


def ratio(times: dict[str, list[float]], base: str, name: str) -> float:
    """How many times faster ``name`` ran than ``base``: the median of per-round ratios."""
    return statistics.median(b / t for b, t in zip(times[base], times[name], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(args.seed)
    cards = torch.tensor(CRITEO_KAGGLE_CARDINALITIES)
    models = variants(CRITEO_KAGGLE_CARDINALITIES)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} time, "
          f"D={D}, 26 features, one id per bag, uniform ids, forward+backward, sparse gradients; "
          f"median of {args.rounds} rounds of {args.steps} steps")  # fmt: skip
    for batch in args.batches:
        def make_ids(batch=batch) -> torch.Tensor:
            return (torch.rand(batch, len(cards)) * cards).long()

        times = bench(models, make_ids, args.rounds, args.steps, clock)
        print(f"\nbatch {batch}")
        print(f"{'variant':32s} {'samples/s':>12s} {'vs full':>8s}")
        for name, ts in times.items():
            print(f"{name:32s} {batch / statistics.median(ts):12,.0f} "
                  f"{ratio(times, 'full nn.EmbeddingBag x26', name):8.2f}")  # fmt: skip
        qr = "compemb QR mult 4"
        print(f"QR mult 4 collection vs full collection: "
              f"{ratio(times, 'full, compemb collection', qr):.2f}x (target >= 0.8)")
        print(f"QR mult 4 collection vs naive QR: "
              f"{ratio(times, 'naive QR mult 4 (reference)', qr):.2f}x")
        print(f"per-feature CompositionalEmbeddingBag vs naive QR: 2-D (B, 1) "
              f"{ratio(times, 'naive QR mult 4 (reference)', 'per-feature QR mult 4'):.2f}x, "
              f"1-D + offsets "
              f"{ratio(times, 'naive QR mult 4, 1-D+offsets', 'per-feature QR mult 4, 1-D'):.2f}x"
              f" (target >= 1.0)")  # fmt: skip
        for h in (16, 64):
            cost = 1 / ratio(times, qr, f"compemb path MLP h={h}, 4")
            print(f"path MLP h={h} costs {cost:.2f}x QR mult's time" + (" (target <= 4)" if h == 64
                                                                         else ""))


if __name__ == "__main__":
    main()
