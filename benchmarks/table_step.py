"""Table training step on the 26 Criteo Kaggle features: forward + backward + optimizer, samples/s.

The step of the embedding tables alone (a fixed random tensor as the outputs' gradient),
D = 16, one id per bag, uniform ids, lr 0.01. Variants, all in one process and interleaved round
by round so machine noise hits them alike (the medians of per-round ratios are printed):

- FBGEMM TBE on CPU (fbgemm-gpu-cpu), full tables, the optimizer fused into its backward;
- compemb's EmbeddingBagCollection, full tables, torch's sparse Adagrad (or RowWiseAdagrad);
- the same collection with QR mult at 4 and 60 collisions, torch's optimizer and compemb's
  FusedAdagrad (row gradients routed from the backward, no sparse gradient tensor).

The clock is the process's CPU time by default, with one torch thread (``--clock wall``
and ``--threads 2`` measure wall time instead): on a shared machine, time spent descheduled is
not the code's, and parallel regions wait for a descheduled thread (2 threads on a loaded
2-core machine ran every variant 3-10x slower than 1).

``--optimizer adagrad`` is exact Adagrad (TBE EXACT_ADAGRAD); ``rowwise_adagrad`` row-wise
(TBE EXACT_ROWWISE_ADAGRAD). The full tables with exact Adagrad hold about 8.7 GB (TBE and
compemb, weights and state); ``--skip-full-compemb`` or ``--skip-tbe`` leave one out.

    .venv/bin/python benchmarks/table_step.py [--optimizer adagrad rowwise_adagrad]
        [--batches 2048 16384] [--rounds 7] [--threads 1] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.optim.fused import FusedAdagrad
from compemb.optim.rowwise import RowWiseAdagrad

D = 16
LR = 0.01

Step = Callable[[torch.Tensor], None]


def tbe_step(cards: list[int], rowwise: bool) -> Step | None:
    """FBGEMM's CPU table-batched embedding with its fused optimizer, or None if absent."""
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except ImportError as err:
        print(f"FBGEMM TBE unavailable ({err}); its rows are left out")
        return None
    kind = EmbOptimType.EXACT_ROWWISE_ADAGRAD if rowwise else EmbOptimType.EXACT_ADAGRAD
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(n, D, EmbeddingLocation.HOST, ComputeDevice.CPU) for n in cards],
        optimizer=kind, learning_rate=LR, eps=1e-10, weights_precision=SparseType.FP32,
    )  # fmt: skip
    targets: dict[int, torch.Tensor] = {}

    def step(ids: torch.Tensor) -> None:
        b, f = ids.shape
        indices = ids.t().contiguous().view(-1)  # table-major
        offsets = torch.arange(b * f + 1, dtype=torch.int64)
        out = tbe(indices, offsets)  # (B, F * D)
        if b not in targets:  # drawn once: setdefault would draw a fresh one every step
            targets[b] = torch.randn(b, f * D)
        out.backward(targets[b])

    return step


def compemb_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Step:
    targets: dict[int, torch.Tensor] = {}

    def step(ids: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = module(ids)
        if ids.shape[0] not in targets:  # drawn once: setdefault would draw one every step
            targets[ids.shape[0]] = torch.randn(out.shape)
        out.backward(targets[ids.shape[0]])
        optimizer.step()

    return step


def torch_optimizer(module: EmbeddingBagCollection, rowwise: bool) -> torch.optim.Optimizer:
    if rowwise:
        return RowWiseAdagrad([{"params": module.table_parameters(), "rowwise": True}], lr=LR)
    return torch.optim.Adagrad(module.parameters(), lr=LR)


def fused_optimizer(module: EmbeddingBagCollection, rowwise: bool) -> torch.optim.Optimizer:
    """FusedAdagrad with every table routed; the other parameters (projections) exact."""
    tables = module.table_parameters()
    routed = {id(t) for t in tables}
    rest = [p for p in module.parameters() if id(p) not in routed]
    groups = [{"params": tables, "rowwise": rowwise}] + ([{"params": rest}] if rest else [])
    return FusedAdagrad(groups, lr=LR, tables=tables)


def variants(cards: list[int], rowwise: bool, args: argparse.Namespace) -> dict[str, Step]:
    torch.sparse.check_sparse_tensor_invariants.disable()
    steps: dict[str, Step] = {}
    if not args.skip_tbe:
        tbe = tbe_step(cards, rowwise)
        if tbe is not None:
            steps["TBE full (FBGEMM, fused)"] = tbe
    if not args.skip_full_compemb:
        full = EmbeddingBagCollection(cards, D, EmbeddingSpec("full", sparse=True),
                                      validate=False)  # fmt: skip
        steps["compemb full, torch optim"] = compemb_step(full, torch_optimizer(full, rowwise))
    for c in (4, 60):
        spec = EmbeddingSpec("qr", operation="mult", collisions=c, sparse=True)
        qr = EmbeddingBagCollection(cards, D, spec, validate=False)
        steps[f"compemb QR-{c}, torch optim"] = compemb_step(qr, torch_optimizer(qr, rowwise))
        qr = EmbeddingBagCollection(cards, D, spec, validate=False)
        steps[f"compemb QR-{c}, fused"] = compemb_step(qr, fused_optimizer(qr, rowwise))
    return steps


def bench(steps: dict[str, Step], make_ids: Callable[[], torch.Tensor], rounds: int,
          count: int, clock: Callable[[], float]) -> dict[str, list[float]]:
    batches = [make_ids() for _ in range(count)]
    for step in steps.values():  # warm-up: optimizer state, allocator, caches
        for ids in batches[:2]:
            step(ids)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started = clock()
            for ids in batches:
                step(ids)
            times[name].append((clock() - started) / count)
    return times


def report(times: dict[str, list[float]], batch: int) -> None:
    names = list(times)
    bases = [n for n in ("TBE full (FBGEMM, fused)", "compemb full, torch optim") if n in times]
    print(f"\nbatch {batch}")
    print(f"{'variant':30s} {'samples/s':>11s}" + "".join(f"  {'x ' + b[:14]:>17s}" for b in bases))
    for name in names:
        row = f"{name:30s} {batch / statistics.median(times[name]):11,.0f}"
        for base in bases:  # median over rounds of the per-round ratio
            ratio = statistics.median(b / t for b, t in zip(times[base], times[name],
                                                             strict=True))  # fmt: skip
            row += f"  {ratio:17.2f}"
        print(row)


def module_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a per-module benchmark (:func:`bench_modules`); add your own to it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--cap", type=int, default=1_000_000, help="rows per table (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def capped_cards(args: argparse.Namespace) -> list[int]:
    """Set threads and seed; the Criteo Kaggle cardinalities capped at ``args.cap``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.sparse.check_sparse_tensor_invariants.disable()
    return [min(n, args.cap) if args.cap else n for n in CRITEO_KAGGLE_CARDINALITIES]


def bench_modules(made: dict[str, tuple[torch.nn.Module, str]], cards: list[int],
                  args: argparse.Namespace, what: str = "",
                  fused: frozenset[str] = frozenset()) -> None:
    """Per-module variants (``name -> (module, note)``) on ``cards``: print the setup and each
    one's parameters, then each batch size's report of steps with torch's Adagrad (CPU time),
    or compemb's FusedAdagrad for the collections named in ``fused``. ``args`` holds
    ``batches``, ``rounds``, ``steps`` and ``cap``; ``what`` ends the header."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU time, D={D}, "
          f"26 Criteo Kaggle features capped at {args.cap or 'no'} rows, one id per bag, uniform "
          f"ids, forward + backward + Adagrad (lr {LR}); median of {args.rounds} rounds of "
          f"{args.steps} steps{what}")
    for name, (module, note) in made.items():
        params = sum(p.numel() for p in module.parameters())
        print(f"  {name:28s} {params:>13,} parameters {note}")
    steps = {name: compemb_step(m, fused_optimizer(m, False) if name in fused
                                else torch.optim.Adagrad(m.parameters(), lr=LR))
             for name, (m, _) in made.items()}
    limits = torch.tensor(cards)
    for batch in args.batches:
        def make_ids(batch=batch) -> torch.Tensor:
            return (torch.rand(batch, len(cards)) * limits).long()

        report(bench(steps, make_ids, args.rounds, args.steps, time.process_time), batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", nargs="+", default=["adagrad", "rowwise_adagrad"],
                        choices=["adagrad", "rowwise_adagrad"])  # fmt: skip
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--skip-tbe", action="store_true")
    parser.add_argument("--skip-full-compemb", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cards = list(CRITEO_KAGGLE_CARDINALITIES)
    limits = torch.tensor(cards)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} time, "
          f"D={D}, 26 Criteo Kaggle features, one id per bag, uniform ids, forward + backward + "
          f"optimizer, lr {LR}; median of {args.rounds} rounds of {args.steps} steps")  # fmt: skip
    for name in args.optimizer:
        print(f"\n== {name} ==")
        steps = variants(cards, name == "rowwise_adagrad", args)
        for batch in args.batches:
            def make_ids(batch=batch) -> torch.Tensor:
                return (torch.rand(batch, len(cards)) * limits).long()

            report(bench(steps, make_ids, args.rounds, args.steps, clock), batch)
        del steps
        gc.collect()


if __name__ == "__main__":
    main()
