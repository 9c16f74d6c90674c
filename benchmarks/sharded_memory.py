"""Peak memory per process of `compemb train`, unsharded against sharded by TorchRec, as the OS
counts it (`/usr/bin/time -f %M`: peak RSS), with checkpoints and evaluation included.

Data: planted rows with Criteo Kaggle's 26 cardinalities kept (`compemb synth
--keep-cardinalities`), so the full tables are the paper's 540 M parameters. Each run: DLRM,
D = 16, exact Adagrad, batch 2048, --steps steps, a checkpoint every --steps / 2 steps,
validation and test at the end. Runs:

- unsharded: one process, `train.sharding: replicate` (the local collection);
- sharded x1: `train.sharding: torchrec` under torchrun with one rank;
- sharded x2: the same with two ranks (each process measured on its own).

Beside each sharded process: the bytes of tables + optimizer state the plan puts on its rank
(compemb's printed plan). Importing torch, torchrec and fbgemm alone costs about 0.34 GB.

    .venv/bin/python benchmarks/sharded_memory.py --data /tmp/criteo-planted --out /tmp/mem
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SCHEMES = {
    "full": ["model.embedding.scheme=full"],
    "qr4": ["model.embedding.scheme=qr", "model.embedding.operation=mult",
            "model.embedding.collisions=4"],
}  # fmt: skip
PLAN = re.compile(r"rank (\d+): ([\d.]+) MiB")


def _python() -> str:
    return str(Path(sys.executable))


def ensure_data(path: Path, rows: int) -> None:
    if (path / "metadata.json").is_file() or path.is_dir() and any(path.iterdir()):
        return
    subprocess.run([_python(), "-m", "compemb.cli", "synth", str(path), "--rows", str(rows),
                    "--cardinalities", "criteo-kaggle", "--seed", "0", "--keep-cardinalities"],
                   check=True)  # fmt: skip


def run(data: Path, out: Path, scheme: str, ranks: int, steps: int) -> dict:
    """One training run; peak RSS of each process (GB) and the plan's bytes per rank (GB)."""
    name = f"{scheme}-{'unsharded' if ranks == 0 else f'x{ranks}'}"
    folder = out / name
    config = out / "data.yaml"
    config.write_text(f"data:\n  dataset: {json.dumps(str(data))}\n")
    settings = ["model.name=dlrm", "model.embedding_dim=16",
                *SCHEMES[scheme], "train.optimizer=adagrad", "train.batch_size=2048",
                f"train.max_steps={steps}", f"train.checkpoint_every={max(1, steps // 2)}",
                "train.eval_every=0", f"train.sharding={'replicate' if ranks == 0 else 'torchrec'}"]
    train = ["-m", "compemb.cli", "train", "--config", str(config), "--out", str(folder),
             "--device", "cpu"]
    for s in settings:
        train += ["--set", s]
    mem = out / f"{name}.rss"
    if ranks == 0:
        command = ["/usr/bin/time", "-f", "%M", "-o", f"{mem}.0", _python(), *train]
    else:
        # every rank under its own /usr/bin/time, its file named by the rank torchrun gives it
        inner = " ".join(["/usr/bin/time", "-f", "%M", "-o", f"{mem}.$RANK", _python(), *train])
        command = [_python(), "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", "--no-python", "bash", "-c", inner]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    peaks = [int(Path(f"{mem}.{r}").read_text().split()[-1]) * 1024 / 1e9
             for r in range(max(ranks, 1))]  # fmt: skip
    plan = [float(b) * 2**20 / 1e9 for _, b in PLAN.findall(done.stderr)]
    final = json.loads((folder / "final.json").read_text())
    return {"run": name, "scheme": scheme, "ranks": ranks, "peak_rss_gb": peaks,
            "plan_gb": plan, "wall_s": seconds, "test_logloss": final["test_logloss"],
            "embedding_parameters": final["embedding_parameters"]}  # fmt: skip


def table(results: list[dict]) -> str:
    lines = ["| run | embedding params | peak RSS per process (GB) | plan: tables + Adagrad "
             "per rank (GB) | wall (s) |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        peaks = " / ".join(f"{p:.2f}" for p in r["peak_rss_gb"])
        plan = " / ".join(f"{p:.2f}" for p in r["plan_gb"]) or "-"
        lines.append(f"| {r['run']} | {r['embedding_parameters']:,} | {peaks} | {plan} | "
                     f"{r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="planted data (made if absent)")
    parser.add_argument("--out", type=Path, required=True, help="run folders and results.json")
    parser.add_argument("--rows", type=int, default=120_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--ranks", nargs="+", type=int, default=[0, 1, 2],
                        help="0: unsharded; N: sharded over N ranks")
    args = parser.parse_args()
    ensure_data(args.data, args.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for scheme in args.schemes:
        for ranks in args.ranks:
            results.append(run(args.data, args.out, scheme, ranks, args.steps))
            print(json.dumps(results[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
