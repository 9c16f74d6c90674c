"""Which input line goes to which split: Criteo inputs (one file, or Terabyte's day files) and
the reference's day protocol.

One input is cut into equal-count days (its line count taken first, or found by the pass itself
and the held-out rows moved out of train at the end); several inputs are a day each, the last
held out. The held-out day's first half is test, its second half validation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from compemb.data.criteo import ParsedChunk
from compemb.data.reader import count_lines
from compemb.data.storage import SplitWriter, day_split, explicit_day_split

__all__ = [
    "Bounds",
    "DayPlan",
    "plan_days",
    "resolve_inputs",
    "segments",
    "split_deferred",
    "split_lines",
    "train_rows",
]

#: Each split's ``[lo, hi)`` rows, by split name.
Bounds = dict[str, tuple[int, int]]
# Splits in file order: ids are handed out in first-seen order, so blocks are encoded in it.
_FILE_ORDER = ("train", "test", "val")
_DAY_FILE = re.compile(r"day_(\d+)(\.gz)?")


def resolve_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """The input files: a file, a list of files (days in order), or a folder of Criteo Terabyte
    day files ``day_N`` / ``day_N.gz`` (taken by N; nothing else may match).

    Raises:
        FileNotFoundError: a path that is not there, or a folder without day files.
        ValueError: a folder holding the same day twice (``day_3`` and ``day_3.gz``).
    """
    paths = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input given")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        days: dict[int, Path] = {}
        for path in folder.iterdir():
            match = _DAY_FILE.fullmatch(path.name)
            if match and path.is_file():
                day = int(match.group(1))
                if day in days:
                    raise ValueError(f"{folder}: day {day} is there twice ({days[day].name}, "
                                     f"{path.name}); keep one")  # fmt: skip
                days[day] = path
        if not days:
            raise FileNotFoundError(f"{folder} holds no Criteo day files (day_0, day_1.gz, ...)")
        return [days[d] for d in sorted(days)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"input {path} does not exist or is not a file")
    return paths


def segments(parsed: ParsedChunk, bounds: Bounds) -> Iterator[tuple[str, slice]]:
    """(split, row slice) of the parsed rows falling in each split, in file order."""
    for name in _FILE_ORDER:
        lo, hi = bounds[name]
        a, b = np.searchsorted(parsed.lines, [lo, hi])
        if b > a:
            yield name, slice(int(a), int(b))


def train_rows(parsed: ParsedChunk, bounds: Bounds) -> int:
    """How many of the block's rows are train (train lines come first in a file)."""
    lo, hi = bounds["train"]
    return int(np.searchsorted(parsed.lines, hi)) if lo == 0 else 0


@dataclass(frozen=True)
class DayPlan:
    """Where every line goes: per input, each split's ``[lo, hi)`` range of that input's lines."""

    paths: list[Path]
    bounds: list[Bounds]
    expected_lines: list[int | None]  # a count to check the pass against, where one was taken
    counted_by: str  # where expected_lines come from, for the error
    days: int
    deferred: bool = False  # one input, every row written to train, the held-out tail moved


_EVERYTHING = 1 << 62
_ALL_TRAIN = {"train": (0, _EVERYTHING), "test": (_EVERYTHING,) * 2, "val": (_EVERYTHING,) * 2}


def plan_days(
    paths: list[Path],
    *,
    days: int | None,
    day_lines: tuple[int, ...] | None,
    deferrable: bool,
    progress: bool | None,
) -> DayPlan:
    """The plan for ``paths``: one input cut into ``days`` equal-count days (7 when None) or
    into ``day_lines``; several inputs a day each. ``deferrable``: nothing but the split depends
    on the line count, so one input is not counted first (see :func:`split_deferred`).

    Raises:
        ValueError: an empty input or held-out day, or ``days`` / ``day_lines`` given for
            several inputs.
    """
    if len(paths) == 1 and day_lines is None and deferrable:
        # Nothing but the split depends on the line count: skip the counting pass (a whole
        # decompression for gzip) and move the held-out rows out of train at the end.
        return DayPlan(paths, [_ALL_TRAIN], [None], "", days or 7, deferred=True)
    if len(paths) == 1:
        if day_lines is not None:
            total = sum(day_lines)
            bounds = explicit_day_split(day_lines)
            days = len(day_lines)
        else:
            days = days or 7
            total = count_lines(paths[0], progress=progress)
            bounds = day_split(total, days)
        if total == 0:
            raise ValueError(f"{paths[0]} is empty: there are no lines to preprocess")
        counted_by = "the --days counts add up to" if day_lines else "a first pass counted"
        return DayPlan(paths, [bounds], [total], counted_by, days)
    if day_lines is not None or days not in (None, len(paths)):
        raise ValueError(
            f"{len(paths)} input files are {len(paths)} days (the last held out); "
            "--days does not apply to them"
        )
    last = count_lines(paths[-1], progress=progress)
    if last == 0:
        raise ValueError(f"{paths[-1]} is empty: the held-out day has no lines")
    held_out = explicit_day_split((0, last))  # its first half test, its second validation
    n = len(paths)
    return DayPlan(
        paths,
        [_ALL_TRAIN] * (n - 1) + [held_out],
        [None] * (n - 1) + [last],
        "a first pass counted",
        n,
    )


def split_deferred(
    plan: DayPlan,
    writers: dict[str, SplitWriter],
    counts: list[np.ndarray],
    lines: int,
    reject_lines: list[np.ndarray],
) -> DayPlan:
    """Cut the rows a deferred plan wrote to train by the days of its ``lines`` lines: move the
    held-out rows to test and val, and out of ``counts`` (per feature, by id). ``reject_lines``:
    the 0-based numbers of the rejected lines, in order. Returns the plan with the real bounds."""
    if lines == 0:
        raise ValueError(f"{plan.paths[0]} is empty: there are no lines to preprocess")
    bounds = day_split(lines, plan.days)
    rejects = np.concatenate([np.zeros(0, np.int64), *reject_lines])  # in line order

    def kept_before(line: int) -> int:
        return line - int(np.searchsorted(rejects, line))

    kept_train = kept_before(bounds["train"][1])
    kept_test = kept_before(bounds["test"][1]) - kept_train
    moved = 0
    for categorical, dense, labels in writers["train"].pop_tail(kept_train):
        cut = min(max(kept_test - moved, 0), len(labels))
        writers["test"].append(categorical[:cut], dense[:cut], labels[:cut])
        writers["val"].append(categorical[cut:], dense[cut:], labels[cut:])
        moved += len(labels)
        for f in range(categorical.shape[1]):
            np.subtract.at(counts[f], categorical[:, f], 1)
    return replace(plan, bounds=[bounds], deferred=False)


def split_lines(plan: DayPlan, records: list[dict[str, Any]]) -> Bounds:
    """``[lo, hi)`` of each split in the lines of all inputs one after the other."""
    if len(plan.paths) == 1:
        return plan.bounds[0]
    train = sum(r["lines"] for r in records[:-1])
    test, val = plan.bounds[-1]["test"], plan.bounds[-1]["val"]
    return {
        "train": (0, train),
        "test": (train + test[0], train + test[1]),
        "val": (train + val[0], train + val[1]),
    }
