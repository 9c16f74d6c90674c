"""Criteo TSV -> dataset folder (see :mod:`compemb.data.storage` for the layout).

Input: one file (Criteo Kaggle's ``train.txt``), or the Criteo Terabyte layout: several day
files (``day_0`` ... ``day_23``, each plain or gzip), given as a list or as their folder.

Why polars: the CSV reader takes an explicit schema and parses multi-threaded in Rust at
400-560 MB/s on two cores, and its string expressions (base-10/base-16 integer parsing) run
column-wise without a Python call per value. The categoricals are read as strings and parsed as
hex here, because a schema-less read infers a hex column of digits only as an integer.

How it keeps up with the parser: the input is streamed in blocks of whole lines; a background
thread reads (and decompresses, and hashes) and parses the next block while the main thread maps
the current one's categories to ids and appends the arrays to disk, so the two halves run on two
cores (polars, zlib, hashlib and most NumPy loops release the GIL). A block is validated with a
few column aggregates; only a block holding a bad line is re-parsed line by line to find it (see
:mod:`compemb.data.criteo`). Categories are mapped by per-feature open-addressing hash tables in
NumPy (:mod:`compemb.data.vocab`): a lookup is a gather, and new keys cost amortized constant
time, so dictionary time grows linearly with the input. Memory is a few blocks plus the
dictionaries (16 to 32 bytes a distinct category, plus 8 for its count); the outputs are appended
to disk.

The protocol (the reference one by default):

* One input: its lines (all lines read, valid or not) are cut into ``days`` equal-count days,
  the remainder going to the last. Days 1..days-1 are train; the last day's first half is test,
  its second half validation. The pass itself finds the line count (every row goes to train, the
  held-out ones are moved out at the end), except where the vocabulary depends on the split
  (``vocab="train"``, ``min_count > 1``): then a first, fast pass counts the lines, unless
  ``day_lines`` gives every day's count. Several inputs: each file is a day, in the order given
  (a folder: ``day_N`` by N), the last one held out and halved the same way (only it is counted
  first). Which line goes where: :mod:`compemb.data.days`.
  Rejected lines are dropped from whichever split their line falls in, so on a clean input the
  split is exactly the reference's.
* Dense: a blank integer is 0, a negative one is clamped to 0, then ``log(1 + x)`` (computed in
  float64, stored as float32). A blank label is 0.
* Categoricals: a blank is a category of its own. Ids are contiguous per feature in first-seen
  order over the enumerated lines (``vocab="all"``: every day; ``"train"``: the train days only).
  With ``vocab="train"`` or ``min_count > 1``, id 0 of every feature is a shared bucket for the
  categories that get no id of their own: those seen fewer than ``min_count`` times in the
  enumerated lines (counted in an extra pass) and, with ``vocab="train"``, those unseen in train.
  ``max_index`` finally takes every id modulo N.
* ``train/counts.npy``: how many training rows hold each final id of each feature.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from compemb.data.criteo import (
    CATEGORICAL_NAMES,
    DENSE_NAMES,
    NUM_CATEGORICAL,
    NUM_DENSE,
    REJECT_REASONS,
    ParsedChunk,
    Reject,
    parse_chunk,
)
from compemb.data.days import (
    DayPlan,
    plan_days,
    resolve_inputs,
    segments,
    split_deferred,
    split_lines,
    train_rows,
)
from compemb.data.reader import InputStream, prefetch, progress_bar
from compemb.data.storage import (
    SPLITS,
    DatasetMetadata,
    SplitWriter,
    atomic_output_dir,
    day_split,
    explicit_day_split,
    write_category_counts,
)
from compemb.data.vocab import CategoryCounter, Vocabulary, add_counts

__all__ = [
    "PreprocessOptions",
    "PreprocessSummary",
    "parse_days",
    "preprocess_criteo",
    "resolve_inputs",
]


@dataclass(frozen=True)
class PreprocessOptions:
    """Options of :func:`preprocess_criteo`; everything but ``strict`` and ``chunk_bytes`` is
    recorded in the metadata, as those two never change the output.

    Attributes:
        max_index: take every categorical id modulo this (the reference's "max index range").
        min_count: categories seen fewer times share the bucket id 0 (1 = keep every category).
        days: number of equal-count days one input is cut into (the last is held out); None:
            7 for one input; with several inputs every file is a day (``days`` may only repeat
            their number).
        day_lines: line count of every day of one input, instead of ``days`` (skips the
            line-counting pass).
        vocab: "all" enumerates categories over every day (the reference), "train" over the
            train days only, mapping unseen ones to the bucket id 0.
        strict: stop at the first bad line instead of rejecting it.
        chunk_bytes: size of the blocks the input is parsed in.
    """

    max_index: int | None = None
    min_count: int = 1
    days: int | None = None
    day_lines: tuple[int, ...] | None = None
    vocab: str = "all"
    strict: bool = False
    chunk_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if self.max_index is not None and self.max_index < 1:
            raise ValueError(f"max_index must be at least 1, got {self.max_index}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {self.min_count}")
        if self.vocab not in ("all", "train"):
            raise ValueError(f"vocab must be 'all' or 'train', got {self.vocab!r}")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        if self.day_lines is not None:
            if self.days is not None:
                raise ValueError("give days or day_lines, not both")
            explicit_day_split(self.day_lines)
        elif self.days is not None:
            day_split(0, self.days)

    @property
    def bucket(self) -> bool:
        """Whether id 0 of every feature is the shared rare/unseen bucket."""
        return self.vocab == "train" or self.min_count > 1

    def recorded(self) -> dict[str, Any]:
        """The options that determine the output, for the metadata."""
        out = asdict(self)
        del out["strict"], out["chunk_bytes"]
        out["day_lines"] = None if self.day_lines is None else list(self.day_lines)
        return out


@dataclass(frozen=True)
class PreprocessSummary:
    """What :func:`preprocess_criteo` did."""

    output_dir: Path
    rows: dict[str, int]
    lines_read: int
    rejected: dict[str, int]
    input_bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        """Input megabytes (as stored) per second of the whole run, every pass included."""
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)


def parse_days(text: str) -> dict[str, Any]:
    """``--days`` as PreprocessOptions fields: "7" (a number of days) or "a,b,...,z" (the line
    count of every day, which skips the line-counting pass)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"--days {text!r}: expected a number of days or comma-separated counts")
    if len(parts) == 1:
        return {"days": int(parts[0])}
    return {"day_lines": tuple(int(p) for p in parts)}


def _blocks(
    plan: DayPlan, chunk_bytes: int, bar: Any, records: list[dict[str, Any]]
) -> Iterator[tuple[int, ParsedChunk]]:
    """(input number, parsed block) over every input; appends each input's record when read."""
    for i, path in enumerate(plan.paths):
        lines = 0
        with InputStream(path, bar=bar) as stream:
            # reading (a gzip's decompression above all) runs a block ahead of parsing
            for chunk in prefetch(stream.chunks(chunk_bytes)):
                parsed = parse_chunk(chunk, lines)
                lines += parsed.num_lines
                yield i, parsed
            expected = plan.expected_lines[i]
            if expected is not None and lines != expected:
                raise ValueError(f"{path} has {lines} lines, but {plan.counted_by} {expected}")
            records.append(stream.record(lines))


def _check_rejects(rejects: tuple[Reject, ...], options: PreprocessOptions, path: Path) -> None:
    if options.strict and rejects:
        first = rejects[0]
        raise ValueError(f"{path}:{first.line}: {first.reason}: {first.detail} (--strict)")


def _count_categories(
    plan: DayPlan, options: PreprocessOptions, progress: bool | None
) -> list[CategoryCounter]:
    """Occurrences of each feature's keys over the enumerated lines (train only, or all)."""
    counters = [CategoryCounter() for _ in range(NUM_CATEGORICAL)]
    total = sum(p.stat().st_size for p in plan.paths)
    with progress_bar(total, "count categories", progress) as bar:
        for i, parsed in prefetch(_blocks(plan, options.chunk_bytes, bar, [])):
            _check_rejects(parsed.rejects, options, plan.paths[i])
            rows = len(parsed.lines)
            if options.vocab == "train":
                rows = train_rows(parsed, plan.bounds[i])
            for f, counter in enumerate(counters):
                counter.add(parsed.keys[f][:rows])
    return counters


def _encode(
    vocabs: list[Vocabulary], keys: tuple[np.ndarray, ...], rows: slice, grow: bool
) -> list[np.ndarray]:
    return [vocab.encode(k[rows], grow=grow) for vocab, k in zip(vocabs, keys, strict=True)]


def preprocess_criteo(
    input_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    options: PreprocessOptions | None = None,
    *,
    progress: bool | None = None,
) -> PreprocessSummary:
    """Preprocess Criteo Kaggle/Terabyte TSV input (plain or gzip) into a dataset folder.

    Args:
        input_path: one file, the day files in order, or a folder of ``day_N[.gz]`` files.
        output_dir: the folder to create; hidden leftovers of a killed run into it are removed.
        options: the protocol (default: the reference's).
        progress: progress bars over all the input bytes; None shows them only on a terminal.

    Raises:
        FileNotFoundError: an input does not exist.
        FileExistsError: ``output_dir`` exists already.
        ValueError: empty input, corrupt gzip, a bad line under ``strict``, a ``day_lines``
            total that does not match the input, or no valid line at all. No folder is left.
    """
    options = options or PreprocessOptions()
    started = time.perf_counter()
    paths = resolve_inputs(input_path)
    if Path(output_dir).exists():
        raise FileExistsError(f"output {output_dir} already exists; remove it or choose another")
    plan = plan_days(
        paths,
        days=options.days,
        day_lines=options.day_lines,
        deferrable=not options.bucket,
        progress=progress,
    )
    if options.day_lines is None:
        options = replace(options, days=plan.days)

    if options.min_count > 1:
        counters = _count_categories(plan, options, progress)
        vocabs = [Vocabulary.frequent(c, options.min_count) for c in counters]
        del counters
    else:
        vocabs = [Vocabulary(bucket=options.bucket) for _ in range(NUM_CATEGORICAL)]
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    lines_read = 0
    counts = [np.zeros(0, dtype=np.int64) for _ in range(NUM_CATEGORICAL)]
    records: list[dict[str, Any]] = []
    reject_lines: list[np.ndarray] = []  # 0-based, for a deferred split
    total_bytes = sum(p.stat().st_size for p in paths)
    # one encode per block where growth does not depend on the split
    whole_blocks = options.vocab == "all" or options.min_count > 1

    with (
        atomic_output_dir(output_dir) as tmp,
        progress_bar(total_bytes, "preprocess", progress) as bar,
    ):
        writers = {name: SplitWriter(tmp / name, NUM_CATEGORICAL, NUM_DENSE) for name in SPLITS}
        with open(tmp / "rejects.tsv", "w", encoding="utf-8") as rejects_file:
            rejects_file.write("file\tline\treason\tdetail\n")
            # two parsed blocks may wait: a dictionary that doubles holds up one block
            for i, parsed in prefetch(_blocks(plan, options.chunk_bytes, bar, records), depth=2):
                lines_read += parsed.num_lines
                _check_rejects(parsed.rejects, options, paths[i])
                for r in parsed.rejects:
                    rejected[r.reason] += 1
                    rejects_file.write(f"{paths[i].name}\t{r.line}\t{r.reason}\t{r.detail}\n")
                if plan.deferred and parsed.rejects:
                    reject_lines.append(np.array([r.line - 1 for r in parsed.rejects]))
                block = _encode(vocabs, parsed.keys, slice(None), True) if whole_blocks else None
                for name, rows in segments(parsed, plan.bounds[i]):
                    if block is None:
                        columns = _encode(vocabs, parsed.keys, rows, name == "train")
                    else:
                        columns = [column[rows] for column in block]
                    ids = np.empty((rows.stop - rows.start, NUM_CATEGORICAL), dtype=np.int32)
                    for f, column in enumerate(columns):
                        if options.max_index is not None:
                            column = column % options.max_index
                        if name == "train":
                            counts[f] = add_counts(counts[f], column)
                        ids[:, f] = column
                    writers[name].append(ids, parsed.dense[rows], parsed.labels[rows])
        if plan.deferred:
            plan = split_deferred(plan, writers, counts, lines_read, reject_lines)
        for writer in writers.values():
            writer.close()
        rows = {name: writers[name].rows for name in ("train", "val", "test")}
        kept = sum(rows.values())
        if kept == 0:
            names = ", ".join(str(p) for p in paths)
            raise ValueError(f"{names}: none of the {lines_read} lines is valid ({rejected})")
        sizes = tuple(v.size for v in vocabs)
        cap = options.max_index
        cardinalities = tuple(size if cap is None else min(size, cap) for size in sizes)
        sized = zip(counts, cardinalities, strict=True)
        write_category_counts(tmp, [np.pad(c[:n], (0, max(n - len(c), 0))) for c, n in sized])
        DatasetMetadata(
            name="criteo",
            feature_names=CATEGORICAL_NAMES,
            dense_names=DENSE_NAMES,
            cardinalities=cardinalities,
            vocabulary_sizes=sizes,
            bucket_id=0 if options.bucket else None,
            rows=rows,
            split_lines=split_lines(plan, records),
            counts=True,
            lines={
                "read": lines_read,
                "kept": kept,
                "rejected": sum(rejected.values()),
                "rejected_by_reason": rejected,
            },
            inputs=tuple(records),
            options=options.recorded(),
        ).write(tmp)
    return PreprocessSummary(
        output_dir=Path(output_dir),
        rows=rows,
        lines_read=lines_read,
        rejected=rejected,
        input_bytes=total_bytes,
        seconds=time.perf_counter() - started,
    )
