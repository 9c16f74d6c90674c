"""DLRM training speed and memory on planted synthetic Criteo-Kaggle-sized data.

Full tables, the hashing trick and QR mult (4 and 60 collisions) side by side: Adagrad with
sparse gradients, gradients cleared (set_to_none) every step, a fixed number of steps after a
warmup, at batch 128 and 2048. Each embedding config runs in its own child process, so its peak
RSS is its own; batches are read before the clock starts, so the time is forward + backward +
optimizer step. Read the ratios to the full tables: they were measured in the same run.

    .venv/bin/python benchmarks/train.py [--steps 200 40] [--batches 128 2048]
"""

from __future__ import annotations

import argparse
import json
import resource
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


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_one(name: str, data: str, batches: list[int], steps: list[int]) -> dict:
    """Child process: build, train each batch size for its steps, report speed and memory."""
    baseline = _rss_bytes()
    torch.manual_seed(0)
    dataset = open_dataset(data)
    model = build_model("dlrm", dataset.cardinalities, dataset.num_dense, 16, CONFIGS[name])
    optimizer = make_optimizer("adagrad", model.parameters())
    result = {"config": name, **parameter_report(model, "adagrad"), "rss_after_import": baseline}
    for batch_size, count in zip(batches, steps, strict=True):
        it = dataset.batches("train", batch_size, shuffle=True)
        data_batches = [next(it) for _ in range(WARMUP + count)]
        for i, batch in enumerate(data_batches):
            if i == WARMUP:
                started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            logits = model(batch.dense, batch.categorical, batch.bags)
            F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
            optimizer.step()
        result[f"samples_per_s@{batch_size}"] = count * batch_size / (
            time.perf_counter() - started
        )
    result["peak_rss"] = _rss_bytes()
    return result


def _table(results: list[dict], batches: list[int]) -> str:
    full = results[0]
    head = "config       params+state  peak RSS  RSS/(p+s)  RSS-import/(p+s)"
    head += "".join(f"  samples/s@{b} (x full)" for b in batches)
    lines = [head]
    for r in results:
        train_bytes = r["train_bytes"]
        rss = r["peak_rss"]
        row = (f"{r['config']:<12} {train_bytes / 2**20:>9.0f} MiB {rss / 2**20:>6.0f} MiB"
               f" {r['peak_rss'] / train_bytes:>9.2f}"
               f" {(r['peak_rss'] - r['rss_after_import']) / train_bytes:>17.2f}")  # fmt: skip
        for b in batches:
            key = f"samples_per_s@{b}"
            row += f"  {r[key]:>12,.0f} ({r[key] / full[key]:.2f}x)"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 40])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per child (default: torch's choice)")  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if len(args.steps) != len(args.batches):
        parser.error("give one --steps count per --batches size")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.batches, args.steps)))
        return
    rows = sum((WARMUP + s) * b for s, b in zip(args.steps, args.batches, strict=True)) * 7 // 6
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "synth")
        options = SynthOptions(rows=rows + 7, cardinalities=tuple(CRITEO_KAGGLE_CARDINALITIES))
        generate_synthetic(data, options, progress=False)
        results = []
        for name in args.configs:
            child = [sys.executable, __file__, "--one", name, "--data", data, "--batches",
                     *map(str, args.batches), "--steps", *map(str, args.steps),
                     *(["--threads", str(args.threads)] if args.threads else [])]  # fmt: skip
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(f"done {name}", file=sys.stderr)
    print(f"DLRM, Criteo Kaggle cardinalities, D=16, Adagrad (sparse), {torch.get_num_threads()} "
          f"threads; steps {args.steps} after {WARMUP} warmup")  # fmt: skip
    print(_table(results, args.batches))


if __name__ == "__main__":
    main()
