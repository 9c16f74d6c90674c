"""End-to-end DLRM training speed of every scheme against the full tables, as ``compemb train``
runs it.

Each scheme is sized as the frontier sizes it (``compemb.experiments.frontier``: its knob fitted
by ``fit_budget`` to each target's budget, MD's alpha picked from the frontier's values) at every
``--targets`` compression it reaches within the budget tolerance, and trained as ``compemb
train`` trains it: the config goes through the trainer's own set-up (budget resolved, model and
optimizer built: Adagrad, fused in one process) and each step is the trainer's own step (forward,
loss, backward, the loss read back, optimizer step, learning-rate warm-up). Batches are read
before the clock starts (the first ``--warmup + --steps`` of the shuffled training split, seed 0,
the same for every config); the ``--warmup`` steps are untimed.

The full tables stay alive in one child process; each sized scheme is built in a second child,
timed in ``--rounds`` rounds against the full tables (full then scheme, scheme then full in
turns), and stopped before the next is built, so at most two models exist at once (on the Kaggle
cardinalities: the full tables' 4.3 GB of parameters and Adagrad state, and one compressed
model). Each round's ratio is the full tables' time over the scheme's in that round (above 1:
faster); the median over rounds is reported, and samples/s of the best round. The clock is each
child's CPU time on ``--threads`` torch threads (default one: see docs/benchmarks.md for why, on
a shared machine); ``--clock wall`` measures wall time.

CCE's reclustering is not part of a training step: ``compemb train`` runs it between steps
(``train.recluster_*``) and leaves it out of its samples/s, and the timed steps here run none.
``--recluster`` times one reclustering of every reclustering scheme after its rounds, reported
apart; ``--profile N`` prints where one round's CPU time goes (cProfile) per scheme.
A scheme whose warm-up steps take longer than ``--max-step-seconds`` each is reported and not
timed.

    .venv/bin/python benchmarks/train.py --data /work/data/synth-800k --batch 1024
        [--schemes hash 'qr mult' md ...] [--targets 4 16 100] [--steps 20] [--warmup 3]
        [--rounds 2] [--threads 1] [--clock cpu|wall] [--recluster] [--json out.json]

Without ``--data``, planted data with the Criteo Kaggle cardinalities kept (``compemb synth
--keep-cardinalities``) is generated in a temporary folder, just large enough.
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
from typing import Any

import torch

from compemb.config import config_from_dict
from compemb.data import CRITEO_KAGGLE_CARDINALITIES, open_dataset
from compemb.data.synthetic import SynthOptions, generate_synthetic
from compemb.experiments.frontier import select_lines, sized_variants
from compemb.training import distributed as D
from compemb.training.build import resolve_config
from compemb.training.loop import _recluster, _setup, _train_step
from compemb.training.params import parameter_report
from compemb.training.run_folder import RunFolder

SCHEMES = ("hash", "qr mult", "md", "md+qr", "md block", "robe", "cce", "tt", "dhe")
D_EMB = 16  # the paper's embedding width


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


def _raw_config(data: str, embedding: dict[str, Any], batch: int) -> dict[str, Any]:
    """The run's config as ``compemb train`` would read it from a file."""
    return {"data": {"dataset": data},
            "model": {"name": "dlrm", "embedding_dim": D_EMB, "embedding": embedding},
            "train": {"optimizer": "adagrad", "batch_size": batch, "seed": 0,
                      "checkpoint_every": 10**9, "device": "cpu"}}  # fmt: skip


def serve(raw: dict[str, Any], steps: int, warmup: int, clock: str) -> None:
    """Child process: set the run up as the trainer does, then answer the parent's requests
    (a number: time that many rounds of the steps; "recluster"; "done") one line each."""
    after_import = _peak_rss()
    config = config_from_dict(raw, "benchmark")
    dataset = open_dataset(config.data.dataset)
    batch_size = config.train.batch_size
    it = dataset.batches("train", batch_size, shuffle=True, seed=0)
    loaded = [next(it) for _ in range(warmup + steps)]
    config = resolve_config(config, dataset.cardinalities)  # as train() does first
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _setup(config, RunFolder(tmp), False, dataset, torch.device("cpu"),
                         D.DistInfo())  # fmt: skip
        now = time.process_time if clock == "cpu" else time.perf_counter
        started = now()
        for batch in loaded[:warmup]:
            _train_step(trainer, batch)
        warm = (now() - started) / max(warmup, 1)
        print(json.dumps({**parameter_report(trainer.model, "adagrad"), "warmup_step": warm,
                          "rss_after_import": after_import}), flush=True)  # fmt: skip
        for line in sys.stdin:
            request = line.strip()
            if request == "done":
                break
            started = now()
            if request == "recluster":
                _recluster(trainer)
            elif request.startswith("profile"):
                _profile(trainer, loaded[warmup:], int(request.split()[1]))
            else:
                for batch in loaded[warmup:]:
                    _train_step(trainer, batch)
            print(json.dumps({"seconds": now() - started}), flush=True)
    print(json.dumps({"peak_rss": _peak_rss()}), flush=True)


def _profile(trainer: Any, batches: list[Any], rows: int) -> None:
    """The steps of a round under cProfile on the process's CPU time (robust to the time spent
    descheduled, unlike a wall-clock profiler on a loaded machine): the ``rows`` functions of
    largest cumulative time, on stderr (stdout answers the parent). The backward pass is one
    call (``Tensor.backward``) but for the Python ``backward`` of custom autograd nodes."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for batch in batches:
        _train_step(trainer, batch)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(rows)
    print(out.getvalue(), file=sys.stderr, flush=True)


class _Child:
    """A served config: started, asked one line at a time, stopped."""

    def __init__(self, raw: dict[str, Any], args: argparse.Namespace):
        command = [sys.executable, __file__, "--serve", json.dumps(raw), "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--clock", args.clock]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)  # fmt: skip
        line = self.process.stdout.readline()  # ready: model built, warmed up
        if not line:
            self.process.wait()
            raise RuntimeError(f"the child for {raw['model']['embedding']} failed (its error "
                               f"is above)")  # fmt: skip
        self.ready = json.loads(line)

    def ask(self, request: str) -> float:
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["seconds"]

    def stop(self) -> int:
        """Stop it; its peak RSS in bytes."""
        self.process.stdin.write("done\n")
        self.process.stdin.flush()
        peak = json.loads(self.process.stdout.readline())["peak_rss"]
        self.process.wait()
        return peak


def measure(data: str, cards: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every sized scheme timed against the full tables, one scheme alive at a time."""
    samples = args.steps * args.batch
    plan, out = [], []
    for line in select_lines(args.schemes):
        sized = sized_variants(line, cards, args.targets, D_EMB)
        for target in args.targets:
            if target in sized:
                plan.append((line.series, target, *sized[target]))
            else:
                out.append({"scheme": line.series, "target": target, "skipped": "out of reach"})
    full = _Child(_raw_config(data, {"scheme": "full"}, args.batch), args)
    print(f"full tables: {full.ready['embedding']:,} embedding parameters, "
          f"warm-up step {full.ready['warmup_step']:.3f} s", flush=True)  # fmt: skip
    if args.profile:
        print("full tables: one round profiled", file=sys.stderr, flush=True)
        full.ask(f"profile {args.profile}")
    full_times: list[float] = []
    for n, (series, target, variant, compression) in enumerate(plan, 1):
        head = f"[{n}/{len(plan)}] {series} {target:g}x ({variant.label}, {compression:.1f}x)"
        result = {"scheme": series, "target": target, "label": variant.label,
                  "compression": compression}  # fmt: skip
        child = _Child(_raw_config(data, variant.model_fields(), args.batch), args)
        if child.ready["warmup_step"] > args.max_step_seconds:
            result["skipped"] = f"warm-up step {child.ready['warmup_step']:.1f} s"
            result["peak_rss"] = child.stop()
            print(f"{head}: not timed, {result['skipped']}", flush=True)
            out.append(result)
            continue
        pairs = []
        for r in range(args.rounds):
            if r % 2 == 0:
                base, seconds = full.ask("1"), child.ask("1")
            else:
                seconds, base = child.ask("1"), full.ask("1")
            pairs.append((base, seconds))
            full_times.append(base)
        ratios = [b / s for b, s in pairs]
        result.update(ratio=statistics.median(ratios), ratios=ratios, seconds=pairs,
                      samples_per_s=samples / min(s for _, s in pairs),
                      full_samples_per_s=samples / min(b for b, _ in pairs),
                      warmup_step=child.ready["warmup_step"],
                      train_bytes=child.ready["train_bytes"])  # fmt: skip
        if args.recluster and variant.scheme == "cce":
            result["recluster_seconds"] = child.ask("recluster")
        if args.profile:
            print(f"{head}: one round profiled", file=sys.stderr, flush=True)
            child.ask(f"profile {args.profile}")
        result["peak_rss"] = child.stop()
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        extra = (f", recluster {result['recluster_seconds']:.2f} s"
                 if "recluster_seconds" in result else "")  # fmt: skip
        print(f"{head}: {result['samples_per_s']:,.0f} samples/s, {result['ratio']:.2f}x the "
              f"full tables (rounds {rounds}){extra}", flush=True)  # fmt: skip
        out.append(result)
    full_peak = full.stop()
    out.insert(0, {"scheme": "full", "peak_rss": full_peak, "train_bytes":
                   full.ready["train_bytes"],
                   "samples_per_s": samples / min(full_times) if full_times else None})
    return out


def table(results: list[dict[str, Any]], schemes: list[str], targets: list[float]) -> str:
    """Markdown: rows targets, columns schemes; each cell the ratio to the full tables (the
    compression reached)."""
    lines = ["| target | " + " | ".join(schemes) + " |",
             "| --- |" + " ---: |" * len(schemes)]
    for target in targets:
        cells = []
        for scheme in schemes:
            r = next((r for r in results[1:]
                      if r["scheme"] == scheme and r["target"] == target), None)  # fmt: skip
            if r is None or r.get("skipped") == "out of reach":
                cells.append("-")
            elif "skipped" in r:
                cells.append(f"not timed ({r['compression']:.1f}x; {r['skipped']})")
            else:
                cells.append(f"{r['ratio']:.2f}x ({r['compression']:.1f}x)")
        lines.append(f"| {target:g}x | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a dataset folder (default: planted Kaggle-size data, "
                                       "generated)")  # fmt: skip
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES),
                        help="frontier lines (compemb.experiments.frontier)")
    parser.add_argument("--targets", type=float, nargs="+", default=[4, 16, 100])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--max-step-seconds", type=float, default=5.0,
                        help="leave untimed a scheme whose warm-up step takes longer")
    parser.add_argument("--recluster", action="store_true",
                        help="time one reclustering of CCE after its rounds, apart")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after each scheme's rounds, profile one round (cProfile, CPU "
                             "time): the N functions of largest cumulative time, on stderr")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error(f"--steps and --rounds must be >= 1 and --warmup >= 0, got {args.steps}, "
                     f"{args.rounds}, {args.warmup}")  # fmt: skip
    torch.set_num_threads(args.threads)
    if args.serve:
        serve(json.loads(args.serve), args.steps, args.warmup, args.clock)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = str(Path(tmp) / "synth")
            rows = (args.warmup + args.steps) * args.batch * 7 // 6 + 7
            generate_synthetic(data, SynthOptions(
                rows=rows, cardinalities=tuple(CRITEO_KAGGLE_CARDINALITIES),
                numbering="population"), progress=False)  # fmt: skip
        cards = list(open_dataset(data).cardinalities)
        results = measure(data, cards, args)
    print(f"\nDLRM on {args.data or 'generated planted data'} ({sum(cards):,} categories), "
          f"D={D_EMB}, Adagrad as compemb train runs it, batch {args.batch}, {args.threads} "
          f"thread(s), {args.clock} time; per round {args.steps} steps after {args.warmup} "
          f"untimed; median over {args.rounds} rounds of the full tables' time over the "
          f"scheme's (above 1x: faster); full tables "
          f"{results[0]['samples_per_s'] or 0:,.0f} samples/s at best")  # fmt: skip
    print(table(results, args.schemes, args.targets))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
