"""Serving latency and memory of DLRM on Criteo-size tables, float32 against int8.

Requests of 1, 64 and 512 samples (13 dense features, 26 categorical ones, one id each) are
drawn from a planted dataset with the Criteo Kaggle cardinalities kept (written once under
WORKDIR); each variant answers them on one thread, in eval mode, without gradients:

- full tables, QR-4 (mult), mixed dimensions (MD, alpha 0.3) and ROBE (Z = 16), the last two
  sized to QR-4's parameters, each in float32 (the trained model as it is) and int8
  (``compemb.serving``: FBGEMM's inference kernel on row-wise int8 tables, the composition in
  float32).

Latency: every variant in one process, interleaved request by request, so machine noise hits
them alike; p50 and p99 per request, requests/s on one thread (1 / mean latency). The clock is
the thread's CPU time by default (on a shared machine, wall time mostly measures the other
processes: see benchmarks/table_step.py); ``--clock wall`` for wall time. Memory: a process per
variant builds it, answers its requests and reports its resident memory then (what a serving
machine pays) and its peak (a quantized variant is made from the float model, so the peak
holds both for a moment).

    .venv/bin/python benchmarks/serving.py [WORKDIR] [--requests 200] [--variants ...]
        [--clock cpu|wall]

Needs about 6 GB free for the interleaved run (the float full tables are 2.2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from compemb.data import open_dataset
from compemb.data.criteo import CRITEO_KAGGLE_CARDINALITIES
from compemb.data.synthetic import SynthOptions, generate_synthetic
from compemb.embeddings import EmbeddingSpec, fit_budget, plan_collection
from compemb.models import build_model
from compemb.serving import quantize_model, serving_bytes

D = 16
BATCHES = (1, 64, 512)
QR4 = EmbeddingSpec("qr", "mult", collisions=4)
SCHEMES = ("full", "qr4", "md", "robe")
VARIANTS = tuple(f"{s}-{p}" for s in SCHEMES for p in ("fp32", "int8"))


def _spec(scheme: str) -> EmbeddingSpec:
    budget = sum(p.num_parameters for p in plan_collection(CRITEO_KAGGLE_CARDINALITIES, D, QR4))
    return {"full": lambda: EmbeddingSpec("full"), "qr4": lambda: QR4,
            # widths in multiples of 4: what int8 packs, and TorchRec shards
            "md": lambda: EmbeddingSpec("md", alpha=0.3, budget=budget, multiple_of=4),
            "robe": lambda: fit_budget(CRITEO_KAGGLE_CARDINALITIES, D,
                                       EmbeddingSpec("robe", size=64, block=16), budget),
            }[scheme]()  # fmt: skip


def build(variant: str) -> torch.nn.Module:
    """The variant's DLRM, ready to serve (random weights: latency does not read them)."""
    scheme, precision = variant.split("-")
    torch.manual_seed(0)
    model = build_model("dlrm", CRITEO_KAGGLE_CARDINALITIES, 13, D, _spec(scheme),
                        validate=True).eval()  # fmt: skip
    if precision == "fp32":
        return model
    served = quantize_model(model, precision, one_hot=len(CRITEO_KAGGLE_CARDINALITIES))
    del model
    return served


def requests(workdir: Path, count: int) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``count`` requests of each batch size from the planted data's test split (kept in
    ``requests.pt``, so that the processes measuring memory do not open the dataset)."""
    saved = workdir / f"requests-{count}.pt"
    if saved.is_file():
        return torch.load(saved, weights_only=True)
    data = workdir / "synth-kaggle"
    if not data.is_dir():
        generate_synthetic(data, SynthOptions(rows=200_000,
                                              cardinalities=CRITEO_KAGGLE_CARDINALITIES,
                                              numbering="population"), progress=False)
    dataset = open_dataset(str(data))
    out = {}
    for b in BATCHES:
        batches = dataset.batches("test", b)
        out[b] = [(x.dense, x.categorical) for x, _ in zip(batches, range(count), strict=False)]
    torch.save(out, saved)
    return out


def answer(model: torch.nn.Module, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model(dense, ids))


def latency(workdir: Path, variants: list[str], count: int, clock: str
            ) -> dict[str, dict[int, list[float]]]:
    now = time.thread_time if clock == "cpu" else time.perf_counter
    reqs = requests(workdir, count)
    models = {v: build(v) for v in variants}
    times: dict[str, dict[int, list[float]]] = {v: {b: [] for b in BATCHES} for v in variants}
    with torch.no_grad():
        for b in BATCHES:
            for v in variants:  # warm up
                answer(models[v], *reqs[b][0])
            for dense, ids in reqs[b]:
                for v in variants:
                    start = now()
                    answer(models[v], dense, ids)
                    times[v][b].append(now() - start)
    return times


def one_variant(workdir: Path, variant: str, count: int) -> None:
    """Build one variant, answer its requests, print its bytes and peak RSS (a child process)."""
    reqs = requests(workdir, count)
    model = build(variant)
    with torch.no_grad():
        for b in BATCHES:
            for dense, ids in reqs[b]:
                answer(model, dense, ids)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    status = Path("/proc/self/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    print(json.dumps({"variant": variant, "rss": rss * 1024, "peak_rss": peak,
                      **serving_bytes(model)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", nargs="?", default="runs/serving-bench")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        one_variant(workdir, args.one, args.requests)
        return
    requests(workdir, 20)  # the children's requests, once, before they read them
    memory = {}
    for v in args.variants:
        ran = subprocess.run([sys.executable, __file__, str(workdir), "--requests", "20",
                              "--one", v], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        memory[v] = json.loads(ran.stdout.strip().splitlines()[-1])
    times = latency(workdir, args.variants, args.requests, args.clock)
    print(f"latency clock: {args.clock} time of the serving thread; {args.requests} requests")
    print("| variant | table bytes | total bytes | RSS serving | peak RSS | "
          + " | ".join(f"B={b} p50 ms | B={b} p99 ms | B={b} req/s" for b in BATCHES) + " |")
    print("|" + " --- |" * (5 + 3 * len(BATCHES)))
    for v in args.variants:
        m = memory[v]
        cells = [v, f"{m['table_bytes'] / 1e6:,.1f} MB", f"{m['total_bytes'] / 1e6:,.1f} MB",
                 f"{m['rss'] / 1e6:,.0f} MB", f"{m['peak_rss'] / 1e6:,.0f} MB"]
        for b in BATCHES:
            t = sorted(times[v][b])
            p99 = t[min(len(t) - 1, int(0.99 * len(t)))]
            cells += [f"{statistics.median(t) * 1e3:.3f}", f"{p99 * 1e3:.3f}",
                      f"{1 / statistics.mean(t):,.0f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
