"""The Criteo Display Advertising Challenge ("Kaggle") / Terabyte TSV format, and a chunk parser.

A line holds ``label, I1..I13, C1..C26`` separated by tabs (40 fields, 39 tabs); any field may be
blank. Integers are decimal; categoricals are at most 8 hex digits, parsed as unsigned 32-bit
(values >= 0x80000000 exist, so signed parsing would overflow).

:func:`parse_chunk` turns a block of whole lines into arrays, and reports every line it rejects
with its 1-based line number and a reason from :data:`REJECT_REASONS`.
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
_HEX = r"^[0-9a-fA-F]{1,8}$"

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
        keys: (N, 26) int64, categorical values in [0, 2**32), or BLANK_KEY for a blank.
        rejects: the rejected lines, in line order.
        num_lines: how many lines the chunk held (kept + rejected).
    """

    lines: np.ndarray
    labels: np.ndarray
    dense: np.ndarray
    keys: np.ndarray
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


def parse_chunk(chunk: bytes, first_line: int) -> ParsedChunk:
    """Parse a block of whole lines (the last may lack its newline).

    Args:
        chunk: raw bytes of complete lines.
        first_line: 0-based index, in the whole input, of the chunk's first line.
    """
    buf = np.frombuffer(chunk, dtype=np.uint8)
    starts, ends = _line_bounds(buf)
    num_lines = len(ends)
    tabs = np.flatnonzero(buf == 9)
    tab_counts = np.diff(np.searchsorted(tabs, ends), prepend=0)
    good = tab_counts == _NUM_TABS
    rejects = [
        Reject(first_line + int(i) + 1, "field_count", f"{tab_counts[i] + 1} fields, expected 40")
        for i in np.flatnonzero(~good)
    ]
    good_idx = np.flatnonzero(good)
    if len(good_idx) == num_lines:
        text = chunk
    else:
        text = b"".join(chunk[starts[i] : ends[i] + 1] for i in good_idx)
        if text and not text.endswith(b"\n"):
            text += b"\n"
    if len(good_idx) == 0:
        return _empty(rejects, num_lines)

    raw = pl.read_csv(
        text,
        has_header=False,
        separator="\t",
        schema=_SCHEMA,
        quote_char=None,
        encoding="utf8-lossy",
    )
    if raw.height != len(good_idx):
        raise RuntimeError(f"polars read {raw.height} rows from {len(good_idx)} lines")

    label = pl.col("label")
    ints = [pl.col(c).str.to_integer(base=10, strict=False) for c in DENSE_NAMES]
    checks = [label.is_not_null() & ~label.is_in(["0", "1"])]
    checks += [
        pl.col(c).is_not_null() & v.is_null() for c, v in zip(DENSE_NAMES, ints, strict=True)
    ]
    checks += [pl.col(c).is_not_null() & ~pl.col(c).str.contains(_HEX) for c in CATEGORICAL_NAMES]
    bad = raw.select(checks).to_numpy()  # (n, 40) bool, one column per field
    bad_rows = np.flatnonzero(bad.any(axis=1))
    for row in bad_rows:
        col = int(np.argmax(bad[row]))
        kind = 0 if col == 0 else 1 if col <= NUM_DENSE else 2
        reason = ("bad_label", "bad_integer", "bad_category")[kind]
        expected = ("0, 1 or blank", "a decimal integer", "1 to 8 hex digits")[kind]
        detail = f"{_COLUMNS[col]}={_short(raw[int(row), col])} is not {expected}"
        rejects.append(Reject(first_line + int(good_idx[row]) + 1, reason, detail))
    rejects.sort(key=lambda r: r.line)

    keep = np.ones(raw.height, dtype=bool)
    keep[bad_rows] = False
    if len(bad_rows):
        raw = raw.filter(pl.Series(keep))
    dense = [v.clip(lower_bound=0).fill_null(0).cast(pl.Float64).log1p() for v in ints]
    hexes = [pl.col(c).str.to_integer(base=16, strict=False) for c in CATEGORICAL_NAMES]
    values = raw.select(
        (label == "1").fill_null(False).cast(pl.UInt8).alias("label"),
        *[d.cast(pl.Float32) for d in dense],
        *[h.fill_null(BLANK_KEY) for h in hexes],
    )
    dense_columns = values.columns[1 : 1 + NUM_DENSE]
    return ParsedChunk(
        lines=(first_line + good_idx[keep]).astype(np.int64),
        labels=values.get_column("label").to_numpy(),
        dense=values.select(dense_columns).to_numpy().astype(np.float32, copy=False),
        keys=values.select(values.columns[1 + NUM_DENSE :]).to_numpy().astype(np.int64, copy=False),
        rejects=tuple(rejects),
        num_lines=num_lines,
    )


def _empty(rejects: list[Reject], num_lines: int) -> ParsedChunk:
    return ParsedChunk(
        lines=np.empty(0, np.int64),
        labels=np.empty(0, np.uint8),
        dense=np.empty((0, NUM_DENSE), np.float32),
        keys=np.empty((0, NUM_CATEGORICAL), np.int64),
        rejects=tuple(rejects),
        num_lines=num_lines,
    )
