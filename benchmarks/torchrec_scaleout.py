"""Scale-out on TorchRec: measured train steps on 2 CPU ranks, and a formula table for Criteo.

measure (under torchrun): DLRM train steps (forward, backward, optimizer) on synthetic one-hot
ids with Criteo Kaggle's 26 cardinalities divided by --scale, D = 16, exact Adagrad, every
config side by side in one run, rounds interleaved so machine noise hits each alike:

- torchrec-full: TorchRec's fused full tables (compemb's collection with scheme full is
  exactly an EmbeddingBagCollection), sharded by DMP;
- torchrec-qr4 / torchrec-qr60: QR mult at 4 / 60 collisions, compemb on TorchRec, sharded;
- torchrec-md4 / torchrec-robe4 / torchrec-cce4: MD (widths rounded to multiples of 4, which
  FBGEMM shards; alpha the frontier's value nearest 4x), ROBE-Z and CCE (fitted to 4x), compemb
  on TorchRec, sharded (sized as the frontier sizes them: ``compemb.experiments.frontier``);
- torchrec-robe4-aligned / torchrec-robe4-z16: ROBE-Z with block-aligned offsets (one row per
  block, not two), and so with blocks of D (one row per id);
- local-qr4: compemb's local collection QR mult 4, replicated: DDP for the dense part, the
  tables' sparse gradients all-reduced over gloo (``train.sharding: replicate``).

It reports samples/s over both ranks (median round), the median and range over rounds of
each round's speed against the full tables' in the same round, and the bytes each rank sends
per step, counted at the collectives (all-to-all, all-reduce, all-gather, reduce-scatter, and DDP's
buckets through a counting comm hook).

formula (no torchrun): memory per rank and communication per step per rank for Criteo Kaggle
full / QR-4 / QR-60 (mult) at 8 and 64 ranks, replicated vs sharded, from compemb's own plan of
the tables (built on the meta device). Replicated: every table and its Adagrad state on every
rank, dense gradients all-reduced (a ring sends 2 (R - 1) / R of them), as DDP on nccl does.
Sharded: tables above 1 MiB placed whole (table-wise; greedy, largest first, on the least
loaded rank: the most loaded rank is reported; "row-wise" splits every large table evenly, as
TorchRec offers on CUDA), the rest replicated; per step a rank sends
its samples' bucket ids (int64 values and lengths) to the tables' owners and gets back their
rows, and the gradients of those rows go back the same way: (R - 1) / R of its lookups are
remote. The dense part's all-reduce is counted in both.

    .venv/bin/torchrun --standalone --nproc_per_node=2 benchmarks/torchrec_scaleout.py measure
        [--configs torchrec-full torchrec-md4 ...]
    .venv/bin/python benchmarks/torchrec_scaleout.py formula
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import EmbeddingSpec, embedding_parameters
from compemb.experiments.frontier import FRONTIER_SCHEMES, Line, select_lines, sized_variants
from compemb.models import build_model
from compemb.optim import make_optimizer

SPECS = {
    "full": EmbeddingSpec("full"),
    "qr4": EmbeddingSpec("qr", operation="mult", collisions=4),
    "qr60": EmbeddingSpec("qr", operation="mult", collisions=60),
}
D = 16
NUM_DENSE = 13
# The successors sized to about 4x by the frontier's rules; MD's widths rounded up to multiples
# of 4 (FBGEMM shards no other width), its alpha among the frontier's MD values.
_MD = next(line for line in FRONTIER_SCHEMES if line.series == "md")
SIZED = {
    "md4": Line("md x4", (*_MD.fields, ("multiple_of", 4)), _MD.knob, _MD.values),
    "robe4": select_lines(["robe"])[0],
    "robe4-aligned": select_lines(["robe aligned"])[0],
    "robe4-z16": Line("robe z16", (("scheme", "robe"), ("aligned", True), ("block", D))),
    "cce4": select_lines(["cce"])[0],
}
CONFIGS = ("torchrec-full", "torchrec-qr4", "torchrec-qr60", "local-qr4",
           *(f"torchrec-{name}" for name in SIZED))


def _spec(name: str, cards: list[int]) -> EmbeddingSpec:
    """The spec of a config's tables (``torchrec-md4`` -> MD sized to 4x on ``cards``)."""
    if name in SPECS:
        return SPECS[name]
    sized = sized_variants(SIZED[name], cards, (4,), D)
    if 4 not in sized:
        raise ValueError(f"{name}: {SIZED[name].series} does not reach 4x on these cardinalities")
    variant, _ = sized[4]
    return EmbeddingSpec(**variant.model_fields())  # type: ignore[arg-type]

# ---------------------------------------------------------------------------------------------
# measure


class _Counter:
    """Bytes this rank sends through the collectives, while ``on``."""

    def __init__(self) -> None:
        self.sent = 0
        self.on = False

    def add(self, n: float) -> None:
        if self.on:
            self.sent += int(n)


COUNTER = _Counter()


def _nbytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        t = t.coalesce()
        return _nbytes(t.indices()) + _nbytes(t.values())
    return t.numel() * t.element_size()


def _install_counters() -> None:
    """Wrap the collectives TorchRec and compemb call, counting what each rank sends."""
    world = dist.get_world_size()
    rank = dist.get_rank()
    ring = 2 * (world - 1) / world

    def a2a(fn: Callable) -> Callable:
        def wrapped(output, input, output_split_sizes=None, input_split_sizes=None, *a, **k):
            total = _nbytes(input)
            if input_split_sizes:
                rows = input.shape[0] or 1
                own = input_split_sizes[rank] * total / rows
            else:
                own = total / world
            COUNTER.add(total - own)
            return fn(output, input, output_split_sizes, input_split_sizes, *a, **k)
        return wrapped

    def reduce_like(fn: Callable, factor: float) -> Callable:
        def wrapped(tensor, *a, **k):
            tensors = tensor if isinstance(tensor, list) else [tensor]
            COUNTER.add(factor * sum(_nbytes(t) for t in tensors))
            return fn(tensor, *a, **k)
        return wrapped

    def gather_like(fn: Callable) -> Callable:
        def wrapped(output, input, *a, **k):
            COUNTER.add((world - 1) * _nbytes(input))
            return fn(output, input, *a, **k)
        return wrapped

    def scatter_like(fn: Callable) -> Callable:
        def wrapped(output, inputs, *a, **k):
            COUNTER.add(sum(_nbytes(t) for i, t in enumerate(inputs) if i != rank))
            return fn(output, inputs, *a, **k)
        return wrapped

    dist.all_to_all_single = a2a(dist.all_to_all_single)
    dist.all_reduce = reduce_like(dist.all_reduce, ring)
    dist.all_gather = gather_like(dist.all_gather)
    dist.reduce_scatter = scatter_like(dist.reduce_scatter)


def _counting_hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future:
    """DDP's all-reduce (averaging), counted."""
    world = dist.get_world_size()
    buffer = bucket.buffer()
    COUNTER.add(2 * (world - 1) / world * _nbytes(buffer))
    buffer.div_(world)
    # c10d's own all_reduce: the counted wrapper stands only on torch.distributed.
    work = torch.distributed.distributed_c10d.all_reduce(buffer, async_op=True)
    return work.get_future().then(lambda f: f.value()[0])


_counting_hook.__annotations__ = {"state": object, "bucket": dist.GradBucket,
                                  "return": torch.futures.Future[torch.Tensor]}


def _hook_ddp(model: torch.nn.Module) -> None:
    from torch.nn.parallel import DistributedDataParallel

    seen = set()
    for m in [model, *model.modules()]:
        for cand in [m, *(getattr(m, "_lookups", None) or [])]:
            if isinstance(cand, DistributedDataParallel) and id(cand) not in seen:
                seen.add(id(cand))
                cand.register_comm_hook(None, _counting_hook)


def _batches(cards: list[int], batch: int, count: int, seed: int) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in cards], 1)
        out.append((torch.randn(batch, NUM_DENSE, generator=g), ids,
                    torch.randint(0, 2, (batch,), generator=g).float()))
    return out


def _build(name: str, cards: list[int]) -> tuple[torch.nn.Module, Callable[[], None], Callable]:
    """(model to call, zero_grad, step) for one config."""
    from compemb.training import distributed as D_
    from compemb.training import sharding

    torch.manual_seed(0)
    if name.startswith("torchrec-"):
        from compemb.embeddings.torchrec import TorchRecSparseArch

        spec = _spec(name.removeprefix("torchrec-"), cards)
        # as compemb train builds it: tables on meta, every feature one-hot (pooled lookups)
        arch = TorchRecSparseArch(cards, D, spec, one_hot=len(cards), device="meta")
        model = build_model("dlrm", cards, NUM_DENSE, D, spec, sparse_arch=arch)
        sharded = sharding.shard(model, torch.device("cpu"), optimizer="adagrad", lr=0.01)
        if dist.get_rank() == 0:
            label, detail = spec.owner.describe(spec)
            used = embedding_parameters(cards, D, spec)
            print(f"\n{name}: {label} ({detail}), {sum(cards) * D / used:.1f}x; plan:\n"
                  f"{sharded.summary}", flush=True)  # fmt: skip
        opt = make_optimizer("adagrad", [p for _, p in sharded.dense_parameters()], 0.01,
                             tables=sharded.replicated_tables())
        _hook_ddp(sharded.model)
        return sharded.model, lambda: opt.zero_grad(set_to_none=True), opt.step
    spec = SPECS[name.removeprefix("local-")].with_(sparse=True)
    model = build_model("dlrm", cards, NUM_DENSE, D, spec)
    info = D_.DistInfo(dist.get_rank(), dist.get_world_size(), 0)
    wrapped = D_.wrap_model(model, torch.device("cpu"), info, sparse_tables=True)
    _hook_ddp(wrapped)
    opt = make_optimizer("adagrad", model.parameters(), 0.01,
                         tables=model.sparse_arch.table_parameters())

    def step() -> None:
        D_.reduce_table_grads(model, info)
        opt.step()

    return wrapped, lambda: opt.zero_grad(set_to_none=True), step


def measure(args: argparse.Namespace) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    _install_counters()
    cards = [max(2, n // args.scale) for n in CRITEO_KAGGLE_CARDINALITIES]
    names = ["torchrec-full", *(n for n in args.configs if n != "torchrec-full")]
    built = {n: _build(n, cards) for n in names}
    data = _batches(cards, args.batch, args.steps + 2, seed=rank)
    times: dict[str, list[float]] = {n: [] for n in names}
    sent: dict[str, int] = {}

    def run(name: str, batches: list[tuple]) -> None:
        model, zero, step = built[name]
        for dense, ids, labels in batches:
            zero()
            loss = F.binary_cross_entropy_with_logits(model(dense, ids), labels)
            loss.backward()
            step()

    for name in names:  # warm-up, and the bytes of one step
        run(name, data[:2])
        COUNTER.sent, COUNTER.on = 0, True
        run(name, data[:1])
        COUNTER.on = False
        sent[name] = COUNTER.sent
    for r in range(args.rounds):
        for name in names:
            dist.barrier()
            start = time.perf_counter()
            run(name, data[2:])
            dist.barrier()
            times[name].append(time.perf_counter() - start)
        if rank == 0:  # progress: this round's speed of each against the full tables
            ratios = ", ".join(f"{n} {times['torchrec-full'][-1] / times[n][-1]:.2f}x"
                               for n in names[1:])  # fmt: skip
            print(f"round {r + 1}/{args.rounds}: {ratios}", flush=True)
    if rank == 0:
        print(f"\n{world} ranks (gloo, CPU), batch {args.batch} per rank, Criteo Kaggle "
              f"cardinalities / {args.scale} ({sum(cards):,} rows), D={D}, DLRM, exact Adagrad;"
              f" median of {args.rounds} rounds of {args.steps} steps")
        print(f"{'config':<16} {'samples/s':>10} {'vs full':>8} {'spread':>13} "
              f"{'sent/step/rank':>16}")  # fmt: skip
        for name in names:
            t = statistics.median(times[name])
            rate = world * args.batch * args.steps / t
            # each round's ratio to the full tables' time in the same round
            ratios = sorted(f / x for f, x in zip(times["torchrec-full"], times[name],
                                                  strict=True))  # fmt: skip
            spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
            print(f"{name:<16} {rate:>10,.0f} {statistics.median(ratios):>7.2f}x {spread:>13} "
                  f"{sent[name] / 2**20:>12.2f} MiB")  # fmt: skip
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# formula


def _plan_tables(spec: EmbeddingSpec) -> tuple[list[int], list[int], int]:
    """(bytes of large tables, bytes of small tables, lookups of large tables per sample) for
    Criteo Kaggle under compemb's sharding rule, and the width of each large table."""
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection
    from compemb.training.sharding import SMALL_BYTES

    trc = TorchRecEmbeddingCollection(CRITEO_KAGGLE_CARDINALITIES, D, spec, device="meta")
    large, small, widths = [], [], []
    pooled = {t for r in trc.routes if r.pooled for t in r.tables}
    for t, nbytes in trc.table_bytes().items():
        if t in pooled and nbytes <= SMALL_BYTES:
            small.append(nbytes)
        else:
            large.append(nbytes)
            widths.append(trc.table_shapes[t][1])
    return large, small, widths


def _dense_bytes() -> int:
    model = build_model("dlrm", CRITEO_KAGGLE_CARDINALITIES, NUM_DENSE, D, SPECS["qr60"],
                        device="meta")
    return 4 * model.dense_parameters


def formula(args: argparse.Namespace) -> None:
    dense = _dense_bytes()
    b = args.batch
    gb, mb = 2**30, 2**20
    print(f"Criteo Kaggle, D={D}, DLRM (dense part {dense / mb:.1f} MiB), exact Adagrad (state "
          f"= table size), batch {b} per rank; per rank: memory of tables + optimizer state, "
          f"bytes sent per step")
    print(f"{'tables':<8} {'ranks':>5} {'replicated mem':>15} {'sharded mem':>12} "
          f"{'(row-wise)':>11} {'replicated comm':>16} {'sharded comm':>13}")
    for name, spec in SPECS.items():
        large, small, widths = _plan_tables(spec)
        total = sum(large) + sum(small)
        for world in args.ranks:
            ring = 2 * (world - 1) / world
            rep_mem = 2 * total + 2 * dense
            rep_comm = ring * (total + dense)
            loads = [0] * world
            for nbytes in sorted(large, reverse=True):
                loads[loads.index(min(loads))] += nbytes
            sh_mem = 2 * max(loads) + 2 * (sum(small) + dense)
            rw_mem = 2 * sum(large) / world + 2 * (sum(small) + dense)
            remote = (world - 1) / world
            # per large-table lookup: int64 id + int64 length out, the row back, its gradient
            per_sample = sum(8 + 8 + 2 * 4 * w for w in widths)
            sh_comm = remote * b * per_sample + ring * (sum(small) + dense)
            print(f"{name:<8} {world:>5} {rep_mem / gb:>12.2f} GB {sh_mem / gb:>9.2f} GB "
                  f"{rw_mem / gb:>8.3f} GB "
                  f"{rep_comm / mb:>12.1f} MiB {sh_comm / mb:>9.2f} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("measure", help="train steps on the ranks torchrun started")
    m.add_argument("--batch", type=int, default=2048, help="samples per rank per step")
    m.add_argument("--steps", type=int, default=10)
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--scale", type=int, default=10, help="divide Criteo's cardinalities")
    m.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                   help="configs to time (the full tables always: the base of the ratios)")
    f = sub.add_parser("formula", help="memory and communication table for Criteo Kaggle")
    f.add_argument("--batch", type=int, default=2048, help="samples per rank per step")
    f.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args(argv)
    measure(args) if args.what == "measure" else formula(args)


if __name__ == "__main__":
    main(sys.argv[1:])
