"""The dataset folder: layout, streaming ``.npy`` writers, atomic publication, metadata.

Layout written by the Criteo preprocessor and the synthetic generator alike::

    OUTPUT_DIR/
        metadata.json            row counts, feature names, cardinalities, options, provenance
        train/ val/ test/
            categorical.npy      (rows, F) int32
            dense.npy            (rows, num_dense) float32
            labels.npy           (rows,) uint8 in {0, 1}
        rejects.tsv              (Criteo only) line, reason, detail of every rejected line

The folder is built under a hidden sibling name and renamed when complete, so an interrupted run
never leaves a folder that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SPLITS",
    "METADATA_FILE",
    "FORMAT",
    "NpyAppender",
    "SplitWriter",
    "atomic_output_dir",
    "day_split",
    "explicit_day_split",
    "write_metadata",
    "read_metadata",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
METADATA_FILE = "metadata.json"
FORMAT = "compemb-dataset-v1"
# Room for any shape: the header is rewritten in place once the row count is known.
_HEADER_BYTES = 128


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    descr = np.lib.format.dtype_to_descr(dtype)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    body_len = _HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    body = text.ljust(body_len - 1).encode("latin1") + b"\n"
    if len(body) != body_len:
        raise ValueError(f"npy header for shape {shape} does not fit in {_HEADER_BYTES} bytes")
    return np.lib.format.magic(1, 0) + body_len.to_bytes(2, "little") + body


class NpyAppender:
    """Writes a ``.npy`` file row block by row block, without knowing the row count in advance.

    Args:
        path: file to create.
        dtype: element type.
        row_shape: shape of one row (``()`` for a vector).
    """

    def __init__(self, path: Path, dtype: np.dtype | type, row_shape: tuple[int, ...] = ()) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(_npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        """Append ``block`` of shape (n, *row_shape)."""
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: block shape {block.shape}, rows {self.row_shape}")
        self._file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        """Write the final shape into the header and close the file."""
        self._file.seek(0)
        self._file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()


class SplitWriter:
    """The three arrays of one split (categorical, dense, labels), appended together."""

    def __init__(self, directory: Path, num_categorical: int, num_dense: int) -> None:
        directory.mkdir()
        self.categorical = NpyAppender(directory / "categorical.npy", np.int32, (num_categorical,))
        self.dense = NpyAppender(directory / "dense.npy", np.float32, (num_dense,))
        self.labels = NpyAppender(directory / "labels.npy", np.uint8)

    @property
    def rows(self) -> int:
        return self.labels.rows

    def append(self, categorical: np.ndarray, dense: np.ndarray, labels: np.ndarray) -> None:
        """Append rows: categorical (n, F), dense (n, num_dense), labels (n,)."""
        self.categorical.append(categorical)
        self.dense.append(dense)
        self.labels.append(labels)

    def close(self) -> None:
        for appender in (self.categorical, self.dense, self.labels):
            appender.close()


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh hidden sibling directory; rename it to ``output_dir`` on success.

    On any exception the partial directory is removed. Raises FileExistsError when
    ``output_dir`` already exists (checked before and at the rename).
    """
    final = Path(output_dir)
    if final.exists():
        raise FileExistsError(f"output {final} already exists; remove it or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes it private) so the folder gets the usual permissions.
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            raise FileExistsError(f"output {final} appeared while it was being written")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def day_split(total: int, days: int = 7) -> dict[str, tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of the reference protocol over ``total`` rows cut into ``days``.

    Every day but the last holds ``total // days`` rows; the last holds the rest. The first
    ``days - 1`` days are train; the last day is split like ``np.array_split(day, 2)``: its first
    half (one row larger when odd) is test, its second half validation.
    """
    if days < 2:
        raise ValueError(f"days must be at least 2 (train days + one held-out day), got {days}")
    train_end = (total // days) * (days - 1)
    return _bounds(train_end, total)


def explicit_day_split(day_lines: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Like :func:`day_split`, with the length of every day given (the last is held out)."""
    if len(day_lines) < 2 or min(day_lines) < 0:
        raise ValueError(f"--days needs at least 2 non-negative line counts, got {day_lines}")
    return _bounds(sum(day_lines[:-1]), sum(day_lines))


def _bounds(train_end: int, total: int) -> dict[str, tuple[int, int]]:
    test_end = train_end + (total - train_end + 1) // 2
    return {"train": (0, train_end), "test": (train_end, test_end), "val": (test_end, total)}


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata.json`` deterministically (sorted keys, fixed formatting)."""
    text = json.dumps({"format": FORMAT, **metadata}, indent=2, sort_keys=True)
    (directory / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``metadata.json`` of a dataset folder."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a dataset folder: {path} is missing")
    metadata = json.loads(path.read_text(encoding="utf-8"))
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata
