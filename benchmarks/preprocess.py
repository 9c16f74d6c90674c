"""Criteo preprocessing throughput and peak memory, on generated Criteo-format files.

Writes Criteo-format TSVs of the given sizes (default about 0.5 GB and 1 GB) whose 26
categoricals range over the Criteo Kaggle cardinalities: half of each feature's values follow a
Zipf law, half are uniform over the feature's range, so the big features reach millions of
distinct ids. Each file is preprocessed by ``compemb preprocess criteo`` in a child process, end
to end (start-up and the line-counting pass included), whose wall time, CPU time (user + sys, all
threads) and peak RSS are read with ``os.wait4``; a plain polars parse of the same file (all
columns as strings, one read) runs beside it as the ceiling. The load average is printed with
each row: on a shared machine the wall time reflects the other processes, the CPU time much less.
The same run through the library (``preprocess_criteo`` in a fresh ``python -c``) shows what the
``compemb`` command's own start-up adds.

Projections for Criteo Kaggle (11 GB) and Terabyte (1 TB) use the marginal rate between the two
sizes (start-up and the first blocks' dictionary growth excluded), measured and as bounded by
the CPU time on two otherwise idle cores; Kaggle's dictionary memory comes from its known
cardinalities at the measured bytes per distinct category.

    .venv/bin/python benchmarks/preprocess.py [--lines 2000000 4000000] [--workdir DIR]
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

from compemb.data.criteo import CRITEO_KAGGLE_CARDINALITIES
from compemb.data.synthetic import category_hash, zipf_ids

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)
KAGGLE_BYTES = 11.15e9  # train.txt, 45,840,617 lines
TERABYTE_BYTES = 1.0e12  # day_0 .. day_23, about 4.4 billion lines


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


def _run_child(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + sys, every thread) and peak RSS (MiB) of a child."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed with status {status}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KiB


_LIBRARY = """
import sys
from compemb.data.preprocess import preprocess_criteo
preprocess_criteo(sys.argv[1], sys.argv[2], progress=False)
"""

_POLARS_ONLY = """
import sys, polars as pl
names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
frame = pl.read_csv(sys.argv[1], has_header=False, separator="\\t", quote_char=None,
                    schema={n: pl.String for n in names})
print(frame.height)
"""


def _table_bytes(distinct: int) -> int:
    """Bytes of one feature's dictionary: hash table (half full at most) plus int64 counts."""
    slots = 16
    while 2 * distinct > slots:
        slots *= 2
    return 8 * slots + 8 * distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[2_000_000, 4_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="compemb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, polars {pl.__version__}, workdir {workdir}")
    print(
        f"{'lines':>9} {'MB':>6} {'load':>5} | {'compemb preprocess (peak RSS)':^38} | "
        f"{'library call':^20} | {'polars-only':^13} |\n{'':>22} | {'wall s':>6} {'MB/s':>6} "
        f"{'cpu s':>6} {'2-core MB/s':>11} {'RSS MiB':>8} | {'wall s':>6} {'MB/s':>5} "
        f"{'cpu s':>6} | {'MB/s':>5} {'cpu s':>6} | distinct ids (sum)"
    )
    rows = []
    try:
        for lines in args.lines:
            src = workdir / f"criteo-{lines}.tsv"
            write_criteo_file(src, lines)
            mb = src.stat().st_size / 1e6
            out = workdir / f"out-{lines}"
            cmd = [sys.executable, "-m", "compemb.cli", "preprocess", "criteo", str(src), str(out)]
            load = os.getloadavg()[0]
            seconds, cpu, rss = _run_child([*cmd, "--no-progress"])
            shutil.rmtree(out)
            lib_seconds, lib_cpu, _ = _run_child(
                [sys.executable, "-c", _LIBRARY, str(src), str(out)]
            )
            base_seconds, base_cpu, _ = _run_child([sys.executable, "-c", _POLARS_ONLY, str(src)])
            meta = json.loads((out / "metadata.json").read_text())
            distinct = sum(meta["vocabulary_sizes"])
            rows.append((mb, seconds, cpu, rss, distinct))
            print(
                f"{lines:>9} {mb:>6.0f} {load:>5.1f} | {seconds:>6.1f} {mb / seconds:>6.1f} "
                f"{cpu:>6.1f} {mb / (cpu / 2):>11.1f} {rss:>8.0f} | {lib_seconds:>6.1f} "
                f"{mb / lib_seconds:>5.1f} {lib_cpu:>6.1f} | {mb / base_seconds:>5.1f} "
                f"{base_cpu:>6.1f} | {distinct:,} (largest {max(meta['vocabulary_sizes']):,})",
                flush=True,
            )
            src.unlink()
            shutil.rmtree(out)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if len(rows) < 2:
        return
    (mb0, s0, c0, r0, d0), (mb1, s1, c1, r1, d1) = rows[0], rows[-1]
    rate, cpu_rate = (mb1 - mb0) / (s1 - s0), (mb1 - mb0) / ((c1 - c0) / 2)
    per_key = (r1 - r0) * 2**20 / max(d1 - d0, 1)
    kaggle_dict = sum(_table_bytes(c) for c in CRITEO_KAGGLE_CARDINALITIES) / 2**30
    print(
        f"\nmarginal rate {rate:.0f} MB/s measured, {cpu_rate:.0f} MB/s on two idle cores "
        f"(CPU-bound); peak RSS grew {r1 - r0:.0f} MiB for {d1 - d0:,} more distinct ids "
        f"({per_key:.0f} bytes each)"
    )
    for name, size in (("Kaggle 11 GB", KAGGLE_BYTES), ("Terabyte 1 TB", TERABYTE_BYTES)):
        print(
            f"{name}: {size / 1e6 / rate / 60:.1f} min at the measured rate, "
            f"{size / 1e6 / cpu_rate / 60:.1f} min on two idle cores"
        )
    print(
        f"Kaggle dictionaries ({sum(CRITEO_KAGGLE_CARDINALITIES):,} distinct ids): "
        f"{kaggle_dict:.2f} GiB of tables and counts; Terabyte: the same 24-48 bytes per "
        "distinct id (--max-index caps the ids, not the dictionaries)"
    )


if __name__ == "__main__":
    main()
