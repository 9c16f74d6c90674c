"""Criteo preprocessing throughput and peak memory, on generated Criteo-format files.

Writes Criteo-format TSVs of two sizes (default 1 M and 2 M lines) whose 26 categoricals range
over the Criteo Kaggle cardinalities: half of each feature's values follow a Zipf law, half are
uniform over the feature's range, so the big features reach about a million distinct ids. Each
file is then preprocessed by ``compemb preprocess criteo`` in a child process, whose own peak RSS
is read with ``os.wait4``; a plain polars parse of the same file (all columns as strings, one
read) runs beside it as the ceiling.

    .venv/bin/python benchmarks/preprocess.py [--lines 1000000 2000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.data.synthetic import category_hash, zipf_ids

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


def _hex(values: np.ndarray) -> pl.Series:
    """8-hex-digit strings of uint32 values, vectorized."""
    digits = _HEX_DIGITS[((values[:, None] >> _SHIFTS) & 0xF).astype(np.uint8)]
    return pl.Series(np.ascontiguousarray(digits).view("S8").ravel()).cast(pl.String)


def write_criteo_file(path: Path, lines: int, seed: int = 0, block: int = 500_000) -> None:
    """A Criteo-format TSV of ``lines`` lines; about 5 % of fields are blank."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        for lo in range(0, lines, block):
            n = min(block, lines - lo)
            columns: dict[str, pl.Series] = {"label": pl.Series((rng.random(n) < 0.26).astype(int))}
            for j in range(13):
                counts = np.floor(np.exp(rng.normal(1.5, 1.6, n))).astype(np.int64) - (j == 1)
                columns[f"I{j + 1}"] = pl.Series(counts)
            for f, card in enumerate(CRITEO_KAGGLE_CARDINALITIES):
                zipf = zipf_ids(rng.random(n), card, 1.05)
                ids = np.where(rng.random(n) < 0.5, zipf, rng.integers(0, card, n))
                # Hash the id so the hex values look like Criteo's (spread over 32 bits).
                columns[f"C{f + 1}"] = _hex((category_hash(seed, f, ids) >> 32).astype(np.uint32))
            frame = pl.DataFrame(columns)
            blank = rng.random((n, 39)) < 0.05
            frame = frame.with_columns(
                pl.when(pl.Series(blank[:, i])).then(None).otherwise(pl.col(c)).alias(c)
                for i, c in enumerate(frame.columns[1:])
            )
            frame.write_csv(out, separator="\t", include_header=False, quote_style="never")


def _run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed with status {status}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


_POLARS_ONLY = """
import sys, polars as pl
names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
frame = pl.read_csv(sys.argv[1], has_header=False, separator="\\t", quote_char=None,
                    schema={n: pl.String for n in names})
print(frame.height)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="compemb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, polars {pl.__version__}, workdir {workdir}")
    header = (
        f"{'lines':>9} {'MB':>7} {'gen s':>6} | {'preprocess s':>12} {'MB/s':>6} "
        f"{'peak RSS MiB':>12} | {'polars-only MB/s':>16} {'RSS MiB':>8} | distinct ids (sum)"
    )
    print(header)
    try:
        for lines in args.lines:
            src = workdir / f"criteo-{lines}.tsv"
            started = time.perf_counter()
            write_criteo_file(src, lines)
            gen = time.perf_counter() - started
            mb = src.stat().st_size / 1e6
            out = workdir / f"out-{lines}"
            cmd = [sys.executable, "-m", "compemb.cli", "preprocess", "criteo", str(src), str(out)]
            seconds, rss = _run_child([*cmd, "--no-progress"])
            base_seconds, base_rss = _run_child([sys.executable, "-c", _POLARS_ONLY, str(src)])
            meta = json.loads((out / "metadata.json").read_text())
            distinct = sum(meta["cardinalities"])
            print(
                f"{lines:>9} {mb:>7.0f} {gen:>6.1f} | {seconds:>12.1f} {mb / seconds:>6.1f} "
                f"{rss:>12.0f} | {mb / base_seconds:>16.1f} {base_rss:>8.0f} | {distinct:,} "
                f"(largest {max(meta['cardinalities']):,})",
                flush=True,
            )
            src.unlink()
            shutil.rmtree(out)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
