"""DLRM training speed and memory on planted synthetic Criteo-Kaggle-sized data.

Full tables, the hashing trick and QR mult (4 and 60 collisions) side by side: Adagrad with
sparse tables, built as ``compemb train`` builds it (in one process the tables' row gradients go
straight into compemb's FusedAdagrad; ``--torch-optimizer``: torch's Adagrad on sparse
gradients, as before), gradients cleared (set_to_none) every step and the loss read back every
step as the trainer does, at batch 128 and 2048. The data keeps the generator's Criteo Kaggle
cardinalities (``compemb synth --keep-cardinalities``), so the full tables are full size. Each
embedding config lives in its own child process, so its peak RSS is its own; the children stay
alive together and the parent asks them in turn for one timed round of a fixed number of steps,
round after round, so machine noise hits every config alike (the median round is reported).
Batches are read before the clock starts: the time is forward + backward + optimizer step. The
clock is each child's CPU time on one torch thread by default (``--clock wall``, ``--threads``):
see benchmarks/table_step.py for why, on a shared machine.

    .venv/bin/python benchmarks/train.py [--steps 100 20] [--batches 128 2048] [--rounds 5]
        [--torch-optimizer] [--threads 1] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compemb.data import CRITEO_KAGGLE_CARDINALITIES, open_dataset
from compemb.data.synthetic import SynthOptions, generate_synthetic
from compemb.embeddings import EmbeddingSpec
from compemb.models import build_model
from compemb.training import make_optimizer, parameter_report

CONFIGS = {
    "full": EmbeddingSpec("full", sparse=True),
    "hash-4": EmbeddingSpec("hash", collisions=4, sparse=True),
    "qr-mult-4": EmbeddingSpec("qr", operation="mult", collisions=4, sparse=True),
    "qr-mult-60": EmbeddingSpec("qr", operation="mult", collisions=60, sparse=True),
}
WARMUP = 5


def _peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM is the address space's own high-water
    mark; ru_maxrss would carry over the parent's peak through fork and exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def serve(name: str, data: str, batches: list[int], steps: list[int], fused: bool,
          clock: str) -> None:
    """Child process: build the model, then time one round per request read from stdin."""
    after_import = _peak_rss()
    torch.manual_seed(0)
    dataset = open_dataset(data)
    model = build_model("dlrm", dataset.cardinalities, dataset.num_dense, 16, CONFIGS[name])
    optimizer = make_optimizer("adagrad", model.parameters(),
                               tables=model.sparse_arch.table_parameters(), fused=fused)
    now = time.process_time if clock == "cpu" else time.perf_counter
    loaded = {}
    for size, count in zip(batches, steps, strict=True):
        it = dataset.batches("train", size, shuffle=True)
        loaded[size] = [next(it) for _ in range(count)]

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch.dense, batch.categorical, batch.bags)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        loss.backward()
        loss.item()  # the trainer reads the loss back every step
        optimizer.step()

    for size in batches:
        for batch in loaded[size][:WARMUP]:
            step(batch)
    print(json.dumps({"config": name, **parameter_report(model, "adagrad"),
                      "rss_after_import": after_import}), flush=True)  # fmt: skip
    for line in sys.stdin:
        if line.strip() == "done":
            break
        size = int(line)
        started = now()
        for batch in loaded[size]:
            step(batch)
        print(json.dumps({"seconds": now() - started}), flush=True)
    print(json.dumps({"peak_rss": _peak_rss()}), flush=True)


def _ask(child: subprocess.Popen, line: str) -> dict:
    child.stdin.write(line + "\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def measure(data: str, args: argparse.Namespace) -> list[dict]:
    """Start every child, interleave the timed rounds, collect medians and peak RSS."""
    common = ["--data", data, "--batches", *map(str, args.batches), "--steps",
              *map(str, args.steps), "--threads", str(args.threads), "--clock", args.clock,
              *(["--torch-optimizer"] if args.torch_optimizer else [])]
    children, results = [], []
    for name in args.configs:
        child = subprocess.Popen([sys.executable, __file__, "--serve", name, *common],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        results.append(json.loads(child.stdout.readline()))  # ready: model built, warmed up
    times = [{size: [] for size in args.batches} for _ in children]
    for _ in range(args.rounds):
        for size in args.batches:
            for child, record in zip(children, times, strict=True):
                record[size].append(_ask(child, str(size))["seconds"])
    for child, result, record in zip(children, results, times, strict=True):
        result.update(_ask(child, "done"))
        child.wait()
        for size, count in zip(args.batches, args.steps, strict=True):
            result[f"samples_per_s@{size}"] = count * size / statistics.median(record[size])
            result[f"seconds@{size}"] = record[size]
    return results


def _table(results: list[dict], batches: list[int]) -> str:
    full = results[0]
    head = "config       params+state  peak RSS  RSS/(p+s)  RSS-import/(p+s)"
    head += "".join(f"  samples/s@{b} (x full)" for b in batches)
    lines = [head]
    for r in results:
        train_bytes, rss = r["train_bytes"], r["peak_rss"]
        row = (f"{r['config']:<12} {train_bytes / 2**20:>9.0f} MiB {rss / 2**20:>6.0f} MiB"
               f" {rss / train_bytes:>9.2f}"
               f" {(rss - r['rss_after_import']) / train_bytes:>17.2f}")  # fmt: skip
        for b in batches:
            key = f"samples_per_s@{b}"
            # the median over rounds of the per-round ratio to the full tables
            ratio = statistics.median(f / t for f, t in zip(full[f"seconds@{b}"], r[f"seconds@{b}"],
                                                             strict=True))  # fmt: skip
            row += f"  {r[key]:>12,.0f} ({ratio:.2f}x)"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 20],
                        help="timed steps per round, one count per batch size")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--torch-optimizer", action="store_true",
                        help="torch's Adagrad on sparse gradients instead of the trainer's "
                             "fused one")  # fmt: skip
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if len(args.steps) != len(args.batches) or min(args.steps) <= WARMUP:
        parser.error(f"give one --steps count (> {WARMUP}) per --batches size")
    torch.set_num_threads(args.threads)
    if args.serve:
        serve(args.serve, args.data, args.batches, args.steps, not args.torch_optimizer,
              args.clock)
        return
    rows = sum(s * b for s, b in zip(args.steps, args.batches, strict=True)) * 7 // 6 + 7
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "synth")
        options = SynthOptions(rows=rows, cardinalities=tuple(CRITEO_KAGGLE_CARDINALITIES),
                               numbering="population")
        generate_synthetic(data, options, progress=False)
        results = measure(data, args)
    which = "torch's sparse Adagrad" if args.torch_optimizer else "the trainer's fused Adagrad"
    print(f"DLRM, Criteo Kaggle cardinalities, D=16, {which}, {args.threads} threads, "
          f"{args.clock} time; median of {args.rounds} rounds of {args.steps} steps")
    print(_table(results, args.batches))


if __name__ == "__main__":
    main()
