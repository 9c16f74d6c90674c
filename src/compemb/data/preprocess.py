"""Criteo TSV -> dataset folder (see :mod:`compemb.data.storage` for the layout).

Why polars: the CSV reader takes an explicit schema and parses multi-threaded in Rust at
400-560 MB/s on two cores, and its string expressions (regex validation, base-10/base-16 integer
parsing) run column-wise without a Python call per value. Every column is read as a string and
validated here, because a schema-less read infers a hex column of digits only as an integer.

The input is streamed in blocks of whole lines (raw bytes cut at a newline); each block's field
count is checked per line on the bytes with NumPy before polars parses it, so a bad line is
counted and reported with its number instead of failing the read. Memory is the block being
parsed plus the per-feature category dictionaries; the output arrays are appended to disk.

The protocol (the reference one by default):

* The input's lines (all lines read, valid or not) are cut into ``days`` equal-count days, the
  remainder going to the last. Days 1..days-1 are train; the last day's first half is test, its
  second half validation. Rejected lines are dropped from whichever split their line number falls
  in, so on a clean file the split is exactly the reference's. Counting the lines takes a first,
  fast pass, unless ``day_lines`` gives every day's line count.
* Dense: a blank integer is 0, a negative one is clamped to 0, then ``log(1 + x)`` (computed in
  float64, stored as float32). A blank label is 0.
* Categoricals: a blank is a category of its own. Ids are contiguous per feature in first-seen
  order over the enumerated lines (``vocab="all"``: every day; ``"train"``: the train days only).
  With ``vocab="train"`` or ``min_count > 1``, id 0 of every feature is a shared bucket for the
  categories that get no id of their own: those seen fewer than ``min_count`` times in the
  enumerated lines (counted in an extra pass) and, with ``vocab="train"``, those unseen in train.
  ``max_index`` finally takes every id modulo N.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
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
from compemb.data.reader import InputStream, count_lines
from compemb.data.storage import (
    DatasetMetadata,
    SplitWriter,
    atomic_output_dir,
    day_split,
    explicit_day_split,
    write_category_counts,
)
from compemb.data.vocab import CategoryCounter, Vocabulary

__all__ = ["PreprocessOptions", "PreprocessSummary", "parse_days", "preprocess_criteo"]

# Splits in file order: ids are handed out in first-seen order, so blocks are encoded in it.
_FILE_ORDER = ("train", "test", "val")


@dataclass(frozen=True)
class PreprocessOptions:
    """Options of :func:`preprocess_criteo`; everything but ``strict`` and ``chunk_bytes`` is
    recorded in the metadata, as those two never change the output.

    Attributes:
        max_index: take every categorical id modulo this (the reference's "max index range").
        min_count: categories seen fewer times share the bucket id 0 (1 = keep every category).
        days: number of equal-count days the lines are cut into (the last is held out).
        day_lines: line count of every day, instead of ``days`` (skips the line-counting pass).
        vocab: "all" enumerates categories over every day (the reference), "train" over the
            train days only, mapping unseen ones to the bucket id 0.
        strict: stop at the first bad line instead of rejecting it.
        chunk_bytes: size of the blocks the input is parsed in.
    """

    max_index: int | None = None
    min_count: int = 1
    days: int = 7
    day_lines: tuple[int, ...] | None = None
    vocab: str = "all"
    strict: bool = False
    chunk_bytes: int = 64 << 20

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
            explicit_day_split(self.day_lines)
        else:
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


def _segments(parsed: ParsedChunk, bounds: dict[str, tuple[int, int]]):
    """(split, row slice) of the parsed rows falling in each split, in file order."""
    for name in _FILE_ORDER:
        lo, hi = bounds[name]
        a, b = np.searchsorted(parsed.lines, [lo, hi])
        if b > a:
            yield name, slice(int(a), int(b))


def _check_rejects(rejects: tuple[Reject, ...], options: PreprocessOptions, path: Path) -> None:
    if options.strict and rejects:
        first = rejects[0]
        raise ValueError(f"{path}:{first.line}: {first.reason}: {first.detail} (--strict)")


def _count_categories(
    path: Path, options: PreprocessOptions, train_end: int, progress: bool | None
) -> list[np.ndarray]:
    """Sorted keys of each feature seen at least ``min_count`` times in the enumerated lines."""
    counters = [CategoryCounter() for _ in range(NUM_CATEGORICAL)]
    first_line = 0
    with InputStream(path, desc="count categories", progress=progress) as stream:
        for chunk in stream.chunks(options.chunk_bytes):
            parsed = parse_chunk(chunk, first_line)
            first_line += parsed.num_lines
            _check_rejects(parsed.rejects, options, path)
            rows = len(parsed.lines)
            if options.vocab == "train":
                rows = int(np.searchsorted(parsed.lines, train_end))
            for f, counter in enumerate(counters):
                counter.add(parsed.keys[f][:rows])
    return [counter.frequent(options.min_count) for counter in counters]


def _add_counts(counts: list[np.ndarray], ids: np.ndarray) -> None:
    """Add the occurrences of each id of ``ids`` ((n, F)) to ``counts`` (grown as needed)."""
    for f in range(ids.shape[1]):
        block = np.bincount(ids[:, f])
        if len(block) > len(counts[f]):
            counts[f] = np.pad(counts[f], (0, len(block) - len(counts[f])))
        counts[f][: len(block)] += block


def preprocess_criteo(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    options: PreprocessOptions | None = None,
    *,
    progress: bool | None = None,
) -> PreprocessSummary:
    """Preprocess a Criteo Kaggle/Terabyte TSV (plain or gzip) into a dataset folder.

    Raises:
        FileNotFoundError: the input does not exist.
        FileExistsError: ``output_dir`` exists already.
        ValueError: empty input, corrupt gzip, a bad line under ``strict``, a ``day_lines``
            total that does not match the input, or no valid line at all. No folder is left.
    """
    options = options or PreprocessOptions()
    path = Path(input_path)
    started = time.perf_counter()
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist or is not a file")
    if Path(output_dir).exists():
        raise FileExistsError(f"output {output_dir} already exists; remove it or choose another")
    if options.day_lines is None:
        total = count_lines(path, progress=progress)
        bounds = day_split(total, options.days)
    else:
        total = sum(options.day_lines)
        bounds = explicit_day_split(options.day_lines)
    if total == 0:
        raise ValueError(f"{path} is empty: there are no lines to preprocess")

    allowed: list[np.ndarray | None] = [None] * NUM_CATEGORICAL
    if options.min_count > 1:
        allowed = list(_count_categories(path, options, bounds["train"][1], progress))
    vocabs = [Vocabulary(bucket=options.bucket, allowed=keys) for keys in allowed]
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    lines_read = 0
    train_counts = [np.zeros(0, dtype=np.int64) for _ in range(NUM_CATEGORICAL)]

    with atomic_output_dir(output_dir) as tmp, InputStream(path, progress=progress) as stream:
        writers = {name: SplitWriter(tmp / name, NUM_CATEGORICAL, NUM_DENSE) for name in bounds}
        with open(tmp / "rejects.tsv", "w", encoding="utf-8") as rejects_file:
            rejects_file.write("line\treason\tdetail\n")
            for chunk in stream.chunks(options.chunk_bytes):
                parsed = parse_chunk(chunk, lines_read)
                lines_read += parsed.num_lines
                _check_rejects(parsed.rejects, options, path)
                for r in parsed.rejects:
                    rejected[r.reason] += 1
                    rejects_file.write(f"{r.line}\t{r.reason}\t{r.detail}\n")
                for name, rows in _segments(parsed, bounds):
                    grow = name == "train" or options.vocab == "all"
                    ids = np.empty((rows.stop - rows.start, NUM_CATEGORICAL), dtype=np.int32)
                    for f, vocab in enumerate(vocabs):
                        ids[:, f] = vocab.encode(parsed.keys[f][rows], grow=grow)
                    if options.max_index is not None:
                        ids %= options.max_index
                    if name == "train":
                        _add_counts(train_counts, ids)
                    writers[name].append(ids, parsed.dense[rows], parsed.labels[rows])
        for writer in writers.values():
            writer.close()
        if lines_read != total:
            raise ValueError(
                f"{path} has {lines_read} lines, but "
                + ("the --days counts add up to" if options.day_lines else "a first pass counted")
                + f" {total}"
            )
        rows = {name: writers[name].rows for name in ("train", "val", "test")}
        kept = sum(rows.values())
        if kept == 0:
            raise ValueError(f"{path}: none of its {lines_read} lines is valid ({rejected})")
        sizes = [v.size for v in vocabs]
        cap = options.max_index
        cardinalities = tuple(size if cap is None else min(size, cap) for size in sizes)
        padded = zip(train_counts, cardinalities, strict=True)
        write_category_counts(tmp, [np.pad(c, (0, n - len(c))) for c, n in padded])
        DatasetMetadata(
            name="criteo",
            feature_names=CATEGORICAL_NAMES,
            dense_names=DENSE_NAMES,
            cardinalities=cardinalities,
            vocabulary_sizes=tuple(sizes),
            bucket_id=0 if options.bucket else None,
            rows=rows,
            split_lines={name: bounds[name] for name in bounds},
            counts=True,
            lines={
                "read": lines_read,
                "kept": kept,
                "rejected": sum(rejected.values()),
                "rejected_by_reason": rejected,
            },
            inputs=(
                {
                    "name": path.name,
                    "bytes": stream.size,
                    "sha256": stream.sha256,
                    "gzip": stream.compressed,
                },
            ),
            options=options.recorded(),
        ).write(tmp)
    return PreprocessSummary(
        output_dir=Path(output_dir),
        rows=rows,
        lines_read=lines_read,
        rejected=rejected,
        input_bytes=stream.size,
        seconds=time.perf_counter() - started,
    )
