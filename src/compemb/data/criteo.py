"""The Criteo Display Advertising Challenge ("Kaggle") / Terabyte TSV format, and a chunk parser.

A line holds ``label, I1..I13, C1..C26`` separated by tabs (40 fields, 39 tabs); any field may be
blank. Integers are decimal; categoricals are at most 8 hex digits, parsed as unsigned 32-bit
(values >= 0x80000000 exist, so signed parsing would overflow).

:func:`parse_chunk` turns a block of whole lines into arrays, and reports every line it rejects
with its 1-based line number and a reason from :data:`REJECT_REASONS`. A block is first parsed on
the assumption that it is clean, checked with a few column aggregates (null counts, longest
field) instead of one test per field; only a block that fails them is parsed again line by line,
which finds and explains each bad line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = [
    "CRITEO_KAGGLE_CARDINALITIES",
    "NUM_DENSE",
    "NUM_CATEGORICAL",
    "DENSE_NAMES",
    "CATEGORICAL_NAMES",
    "REJECT_REASONS",
    "BLANK_KEY",
    "Reject",
    "ParsedChunk",
    "parse_chunk",
]

# Distinct values of C1..C26 over all 7 days of train.txt (blank counted as a category).
CRITEO_KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

NUM_DENSE = 13
NUM_CATEGORICAL = 26
DENSE_NAMES: tuple[str, ...] = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
CATEGORICAL_NAMES: tuple[str, ...] = tuple(f"C{i}" for i in range(1, NUM_CATEGORICAL + 1))
_COLUMNS: tuple[str, ...] = ("label", *DENSE_NAMES, *CATEGORICAL_NAMES)
_NUM_TABS = len(_COLUMNS) - 1
# Every column is read as a string: polars would infer a hex column of digits only as integers.
_SCHEMA = pl.Schema({name: pl.Utf8 for name in _COLUMNS})
# A clean block reads its integers directly (polars' CSV integers are Rust's, as str.to_integer,
# but for a leading space, which sends a block to the checked path).
_FAST_SCHEMA = pl.Schema({name: pl.Int64 if name in DENSE_NAMES else pl.Utf8 for name in _COLUMNS})

# A blank categorical is its own category; it gets a key outside the 32-bit range of real values.
BLANK_KEY = 1 << 32

# In the order they are checked: the first problem of a line is its reason.
REJECT_REASONS: tuple[str, ...] = ("field_count", "bad_label", "bad_integer", "bad_category")


@dataclass(frozen=True)
class Reject:
    """One rejected input line: its 1-based number, a reason from REJECT_REASONS, and details."""

    line: int
    reason: str
    detail: str


@dataclass(frozen=True)
class ParsedChunk:
    """The valid lines of one chunk, as arrays (N = number of valid lines).

    Attributes:
        lines: (N,) int64, 0-based line index of each kept row in the whole input.
        labels: (N,) uint8 in {0, 1}; a blank label is 0.
        dense: (N, 13) float32, log(1 + max(x, 0)); a blank integer is 0.
        keys: 26 arrays (N,) uint64, one per feature: values in [0, 2**32), or BLANK_KEY for a
            blank.
        rejects: the rejected lines, in line order.
        num_lines: how many lines the chunk held (kept + rejected).
    """

    lines: np.ndarray
    labels: np.ndarray
    dense: np.ndarray
    keys: tuple[np.ndarray, ...]
    rejects: tuple[Reject, ...]
    num_lines: int


def _line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive, excluding the newline) byte offsets of each line."""
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:  # a last line without a newline is still a line
        ends = np.append(ends, len(buf))
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return starts, ends


def _short(value: str | None) -> str:
    text = "" if value is None else value
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _read(text: bytes, *, fast: bool = False) -> pl.DataFrame:
    # strict utf8 decoding is about 1.4x faster; a block that is not valid utf8 is re-read lossy
    return pl.read_csv(
        text,
        has_header=False,
        separator="\t",
        schema=_FAST_SCHEMA if fast else _SCHEMA,
        quote_char=None,
        encoding="utf8" if fast else "utf8-lossy",
    )


def _split_by_field_count(chunk: bytes, first_line: int) -> tuple[bytes, np.ndarray, list[Reject]]:
    """The lines with 40 fields (as bytes), their indices in the chunk, and the other lines."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    starts, ends = _line_bounds(buf)
    tabs = np.flatnonzero(buf == 9)
    tab_counts = np.diff(np.searchsorted(tabs, ends), prepend=0)
    good = tab_counts == _NUM_TABS
    rejects = [
        Reject(first_line + int(i) + 1, "field_count", f"{tab_counts[i] + 1} fields, expected 40")
        for i in np.flatnonzero(~good)
    ]
    good_idx = np.flatnonzero(good)
    text = b"".join(chunk[starts[i] : ends[i] + 1] for i in good_idx)
    if text and not text.endswith(b"\n"):
        text += b"\n"
    return text, good_idx, rejects


def _field_checks(frame: pl.DataFrame) -> list[pl.Expr]:
    """One bool per field: set where the field is present but invalid (needs the _i/_h columns)."""
    label = pl.col("label")
    checks = [label.is_not_null() & ~label.is_in(["0", "1"])]
    checks += [pl.col(c).is_not_null() & pl.col(f"_i{c}").is_null() for c in DENSE_NAMES]
    for c in CATEGORICAL_NAMES:
        col, value = pl.col(c), pl.col(f"_h{c}")
        # to_integer accepts a sign and more than 8 digits: both are refused here
        valid = value.is_between(0, 0xFFFFFFFF) & (col.str.len_bytes() <= 8)
        valid = valid & ~col.str.starts_with("+") & ~col.str.starts_with("-")
        checks.append(col.is_not_null() & ~valid.fill_null(False))
    return checks


def _parse_clean(chunk: bytes, num_lines: int, first_line: int) -> ParsedChunk | None:
    """The chunk parsed if every line is valid, else None (then nothing is known about which
    line is bad). Same values as the line-by-line path, checked per column instead of per field:
    a category that fails to parse becomes one blank key more than its column had blanks."""
    try:
        raw = _read(chunk, fast=True)  # a bad integer fails the read
    except pl.exceptions.PolarsError:
        return None
    if raw.height != num_lines:
        return None
    label = pl.col("label").str.to_integer(base=10, dtype=pl.UInt8, strict=False)
    checks = raw.select(
        pl.col("label").str.len_bytes().max().alias("longest label"),
        label.max().alias("largest label"),
        label.null_count().alias("label nulls"),
        pl.max_horizontal(pl.col(c).str.len_bytes().max() for c in CATEGORICAL_NAMES),
    ).row(0)
    blanks = raw.null_count().row(0)
    if (checks[0] or 0) > 1 or (checks[1] or 0) > 1 or checks[2] != blanks[0]:
        return None
    if (checks[3] or 0) > 8:
        return None
    # one pass to the final values; unsigned parsing refuses a sign, and a "+" anywhere sent the
    # chunk to the checked path
    values = raw.select(*_final_values(label.fill_null(0), [pl.col(c) for c in DENSE_NAMES], [
        pl.col(c).str.to_integer(base=16, dtype=pl.UInt64, strict=False) for c in CATEGORICAL_NAMES
    ]))  # fmt: skip
    chunk_arrays = _to_numpy(values, np.arange(num_lines), [], num_lines, first_line)
    for keys, blank in zip(chunk_arrays.keys, blanks[1 + NUM_DENSE :], strict=True):
        if np.count_nonzero(keys == BLANK_KEY) != blank:
            return None
    return chunk_arrays


def parse_chunk(chunk: bytes, first_line: int) -> ParsedChunk:
    """Parse a block of whole lines (the last may lack its newline).

    Args:
        chunk: raw bytes of complete lines.
        first_line: 0-based index, in the whole input, of the chunk's first line.
    """
    buf = np.frombuffer(chunk, dtype=np.uint8)
    num_lines = int(np.count_nonzero(buf == 10)) + (len(chunk) > 0 and chunk[-1:] != b"\n")
    # With 39 tabs a line on average, a line with too few fields implies one with too many,
    # which polars refuses; polars' integer parsing accepts a "+" (refused in a category) and a
    # leading space (refused everywhere).
    if (
        int(np.count_nonzero(buf == 9)) == _NUM_TABS * num_lines
        and b"+" not in chunk
        and b" " not in chunk
    ):
        clean = _parse_clean(chunk, num_lines, first_line)
        if clean is not None:
            return clean
    return _parse_checked(chunk, num_lines, first_line)


def _parse_checked(chunk: bytes, num_lines: int, first_line: int) -> ParsedChunk:
    """Parse line by line, rejecting and explaining every bad line."""
    text, good_idx, rejects = _split_by_field_count(chunk, first_line)
    if len(good_idx) == 0:
        return _empty(rejects, num_lines)
    raw = _read(text)
    if raw.height != len(good_idx):
        raise RuntimeError(f"polars read {raw.height} rows from {len(good_idx)} lines")

    frame = raw.with_columns(
        *[pl.col(c).str.to_integer(base=10, strict=False).alias(f"_i{c}") for c in DENSE_NAMES],
        *[
            pl.col(c).str.to_integer(base=16, strict=False).alias(f"_h{c}")
            for c in CATEGORICAL_NAMES
        ],
    )
    checks = _field_checks(frame)
    bad_rows = np.flatnonzero(frame.select(pl.any_horizontal(checks)).to_series().to_numpy())
    if len(bad_rows):
        bad = frame[bad_rows].select(checks).to_numpy()  # (bad rows, 40) bool, one per field
        for row, flags in zip(bad_rows, bad, strict=True):
            col = int(np.argmax(flags))
            kind = 0 if col == 0 else 1 if col <= NUM_DENSE else 2
            reason = ("bad_label", "bad_integer", "bad_category")[kind]
            expected = ("0, 1 or blank", "a decimal integer", "1 to 8 hex digits")[kind]
            detail = f"{_COLUMNS[col]}={_short(raw[int(row), col])} is not {expected}"
            rejects.append(Reject(first_line + int(good_idx[row]) + 1, reason, detail))
        rejects.sort(key=lambda r: r.line)
        keep = np.ones(frame.height, dtype=bool)
        keep[bad_rows] = False
        frame = frame.filter(pl.Series(keep))
        good_idx = good_idx[keep]

    values = frame.select(*_final_values(
        pl.col("label").str.to_integer(base=10, dtype=pl.UInt8, strict=False).fill_null(0),
        [pl.col(f"_i{c}").alias(c) for c in DENSE_NAMES],
        [pl.col(f"_h{c}").alias(c) for c in CATEGORICAL_NAMES],
    ))  # fmt: skip
    return _to_numpy(values, good_idx, rejects, num_lines, first_line)


def _final_values(label: pl.Expr, dense: list[pl.Expr], hex_values: list[pl.Expr]) -> list[pl.Expr]:
    """label (UInt8, blank 0), log(1 + max(x, 0)) of I1..I13 (Int64, blank 0) as Float32, and
    C1..C26 (unsigned) as UInt64 keys, BLANK_KEY for a blank."""
    return [
        label.alias("label"),
        *[
            x.clip(lower_bound=0).fill_null(0).cast(pl.Float64).log1p().cast(pl.Float32)
            for x in dense
        ],
        *[h.cast(pl.UInt64).fill_null(BLANK_KEY) for h in hex_values],
    ]


def _to_numpy(
    values: pl.DataFrame,
    good_idx: np.ndarray,
    rejects: list[Reject],
    num_lines: int,
    first_line: int,
) -> ParsedChunk:
    """The ParsedChunk of a frame of :func:`_final_values`."""
    columns = values.get_columns()
    dense = np.empty((values.height, NUM_DENSE), dtype=np.float32)
    for j, column in enumerate(columns[1 : 1 + NUM_DENSE]):
        dense[:, j] = column.to_numpy()
    return ParsedChunk(
        lines=(first_line + good_idx).astype(np.int64),
        labels=columns[0].to_numpy(),
        dense=dense,
        keys=tuple(c.to_numpy() for c in columns[1 + NUM_DENSE :]),
        rejects=tuple(rejects),
        num_lines=num_lines,
    )


def _empty(rejects: list[Reject], num_lines: int) -> ParsedChunk:
    return ParsedChunk(
        lines=np.empty(0, np.int64),
        labels=np.empty(0, np.uint8),
        dense=np.empty((0, NUM_DENSE), np.float32),
        keys=tuple(np.empty(0, np.uint64) for _ in range(NUM_CATEGORICAL)),
        rejects=tuple(rejects),
        num_lines=num_lines,
    )
