"""The dataset folder: layout, streaming ``.npy`` writers, atomic publication, metadata.

Layout written by the Criteo preprocessor and the synthetic generator alike::

    OUTPUT_DIR/
        metadata.json            a DatasetMetadata: row counts, feature names, cardinalities,
                                 options, provenance (read and written only here)
        train/ val/ test/
            categorical.npy      (rows, F) int32
            dense.npy            (rows, num_dense) float32
            labels.npy           (rows,) uint8 in {0, 1}
        train/counts.npy         (sum of cardinalities,) int64: how many training rows hold each
                                 id, feature after feature (feature f's ids at offset
                                 cardinalities[:f].sum()); see write/read_category_counts
        rejects.tsv              (Criteo only) file, line (1-based, in that file), reason, detail
                                 of every rejected line

The folder is built under a hidden sibling name (``.NAME.partial-PID-HEX``) and renamed when
complete, so an interrupted run never leaves a folder that looks finished; the next run into the
same output removes such leftovers (:func:`partial_leftovers`).

Format history: ``compemb-dataset-v1`` had one ``input`` record, no counts and a rejects.tsv without
the file column; ``v2`` (current) has ``inputs`` (one record per input file, its line count
included) and ``counts``. Both are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    "DatasetMetadata",
    "write_metadata",
    "read_metadata",
    "COUNTS_FILE",
    "write_category_counts",
    "read_category_counts",
    "partial_leftovers",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
METADATA_FILE = "metadata.json"
FORMAT = "compemb-dataset-v2"
_READABLE_FORMATS = ("compemb-dataset-v1", FORMAT)
COUNTS_FILE = "train/counts.npy"
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
        """Append ``block`` of shape ``(n, *row_shape)``."""
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: block shape {block.shape}, rows {self.row_shape}")
        if block.size:
            self._file.write(memoryview(np.ascontiguousarray(block, dtype=self.dtype)).cast("B"))
        self.rows += len(block)

    def tail(self, start: int, block_rows: int) -> Iterator[np.ndarray]:
        """Copies of the rows from ``start`` on, ``block_rows`` at a time."""
        self._file.flush()
        if self.rows <= start:
            return
        data = np.memmap(self.path, dtype=self.dtype, mode="r", offset=_HEADER_BYTES,
                         shape=(self.rows, *self.row_shape))  # fmt: skip
        for lo in range(start, self.rows, block_rows):
            yield np.array(data[lo : lo + block_rows])
        del data

    def truncate(self, rows: int) -> None:
        """Drop every row after the first ``rows``."""
        self._file.flush()
        self._file.truncate(
            _HEADER_BYTES + rows * self.dtype.itemsize * int(np.prod(self.row_shape))
        )
        self._file.seek(0, os.SEEK_END)
        self.rows = min(self.rows, rows)

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

    def pop_tail(
        self, keep: int, block_rows: int = 1 << 18
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield the rows after the first ``keep`` as (categorical, dense, labels) blocks, then
        drop them from the files."""
        yield from zip(
            self.categorical.tail(keep, block_rows),
            self.dense.tail(keep, block_rows),
            self.labels.tail(keep, block_rows),
            strict=True,
        )
        for appender in (self.categorical, self.dense, self.labels):
            appender.truncate(keep)

    def close(self) -> None:
        for appender in (self.categorical, self.dense, self.labels):
            appender.close()


_PARTIAL = ".{name}.partial-"


def partial_leftovers(output_dir: str | os.PathLike[str]) -> list[tuple[Path, bool]]:
    """Hidden ``.NAME.partial-PID-HEX`` folders next to ``output_dir`` left by unfinished runs.

    Returns:
        (folder, alive) pairs, sorted by name: ``alive`` when the process that made the folder
        still runs on this machine (it may still be writing it).
    """
    final = Path(output_dir)
    prefix = _PARTIAL.format(name=final.name)
    if not final.parent.is_dir():
        return []
    found = []
    for path in sorted(final.parent.glob(glob.escape(prefix) + "*")):
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        found.append((path, pid_text.isdigit() and _process_alive(int(pid_text))))
    return found


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh hidden sibling directory; rename it to ``output_dir`` on success.

    Leftovers of killed runs into the same output (hidden ``.NAME.partial-PID-*`` folders whose
    process is gone) are removed first, with a warning naming them; those of a process still
    running are left alone, with a warning. On any exception the partial directory is removed.
    Raises FileExistsError when ``output_dir`` already exists (checked before and at the rename).
    """
    final = Path(output_dir)
    if final.exists():
        raise FileExistsError(f"output {final} already exists; remove it or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    for path, alive in partial_leftovers(final):
        if alive:
            warnings.warn(
                f"{path}: a partial output of a process that is still running; left alone",
                stacklevel=3,
            )
        else:
            warnings.warn(f"removing {path}, left by an interrupted run", stacklevel=3)
            shutil.rmtree(path, ignore_errors=True)
    # mkdir (not mkdtemp, which makes it private) so the folder gets the usual permissions.
    tmp = final.parent / f"{_PARTIAL.format(name=final.name)}{os.getpid()}-{secrets.token_hex(4)}"
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


@dataclass(frozen=True)
class DatasetMetadata:
    """What ``metadata.json`` of a dataset folder says (F = number of categorical features).

    Attributes:
        name: the source ("criteo", "synthetic", ...).
        feature_names: (F,) names, single-valued features first, then the bag features.
        cardinalities: (F,) number of ids of each feature (ids are in ``[0, cardinality)``).
        dense_names: names of the dense features, in column order (``num_dense`` of them).
        rows: rows of each split, ``{"train": n, "val": n, "test": n}``.
        num_bag_features: how many of the last features are multi-hot bags.
        split_lines: ``[lo, hi)`` input line range of each split, where the source has lines.
        options: the source's options that determined the output (recorded as given).
        counts: whether ``train/counts.npy`` holds the training split's per-id counts.
        vocabulary_sizes: (F,) ids handed out before any modulus (Criteo).
        bucket_id: the id shared by rare / unseen categories, if any (Criteo).
        lines: line accounting of the input: read, kept, rejected, rejected_by_reason (Criteo).
        inputs: one record per input file: name, bytes, sha256, gzip, lines (Criteo).
        hidden_model: the planted model and its reference losses (synthetic data).
    """

    name: str
    feature_names: tuple[str, ...]
    cardinalities: tuple[int, ...]
    dense_names: tuple[str, ...]
    rows: Mapping[str, int]
    num_bag_features: int = 0
    split_lines: Mapping[str, tuple[int, int]] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    counts: bool = False
    vocabulary_sizes: tuple[int, ...] | None = None
    bucket_id: int | None = None
    lines: Mapping[str, Any] | None = None
    inputs: tuple[Mapping[str, Any], ...] = ()
    hidden_model: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.feature_names) != len(self.cardinalities):
            raise ValueError(
                f"{len(self.feature_names)} feature names but {len(self.cardinalities)} "
                "cardinalities"
            )
        if set(self.rows) != set(SPLITS):
            raise ValueError(f"rows must name the splits {SPLITS}, got {sorted(self.rows)}")
        if not 0 <= self.num_bag_features <= len(self.feature_names):
            raise ValueError(f"num_bag_features {self.num_bag_features} is not in [0, F]")

    @property
    def num_dense(self) -> int:
        return len(self.dense_names)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``metadata.json`` (``format`` and ``num_dense`` included)."""
        out = {"format": FORMAT, "num_dense": self.num_dense, **dataclasses.asdict(self)}
        return json.loads(json.dumps(out))  # tuples -> lists, mappings -> plain dicts

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "metadata") -> DatasetMetadata:
        """Parse the JSON object of ``metadata.json``; ``source`` names it in errors.

        Raises:
            ValueError: unknown format, unknown or missing keys, or inconsistent values.
        """
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt not in _READABLE_FORMATS:
            raise ValueError(f"{source}: format {fmt!r}, expected one of {_READABLE_FORMATS}")
        if fmt == "compemb-dataset-v1" and "input" in data:
            data["inputs"] = [data.pop("input")]
        num_dense = data.pop("num_dense", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; expected some of {sorted(names)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        for key in ("feature_names", "cardinalities", "dense_names", "vocabulary_sizes", "inputs"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if data.get("split_lines") is not None:
            data["split_lines"] = {k: tuple(v) for k, v in data["split_lines"].items()}
        try:
            metadata = cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err
        if num_dense is not None and num_dense != metadata.num_dense:
            raise ValueError(
                f"{source}: num_dense {num_dense} but {metadata.num_dense} dense_names"
            )
        return metadata

    def write(self, directory: str | os.PathLike[str]) -> None:
        """Write ``directory/metadata.json`` deterministically (sorted keys, fixed formatting)."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=True)
        (Path(directory) / METADATA_FILE).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> DatasetMetadata:
        """Read and check ``directory/metadata.json``.

        Raises:
            FileNotFoundError: ``directory`` holds no ``metadata.json``.
            ValueError: the file is not valid JSON or not a dataset metadata (see from_json).
        """
        path = Path(directory) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a dataset folder: {path} is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_json(data, source=str(path))


def write_metadata(directory: str | os.PathLike[str], metadata: DatasetMetadata) -> None:
    """Write ``metadata.json`` (same as ``metadata.write(directory)``)."""
    metadata.write(directory)


def read_metadata(directory: str | os.PathLike[str]) -> DatasetMetadata:
    """Read and check ``metadata.json`` of a dataset folder (same as ``DatasetMetadata.read``)."""
    return DatasetMetadata.read(directory)


def write_category_counts(directory: str | os.PathLike[str], counts: Sequence[np.ndarray]) -> None:
    """Write the training split's per-id counts of every feature to ``directory/train/counts.npy``.

    Args:
        directory: the dataset folder being built (its ``train/`` may already exist).
        counts: one (cardinality_f,) array of non-negative integers per feature, in feature order:
            ``counts[f][i]`` is how many training rows hold id ``i`` of feature ``f`` (for a bag
            feature, how many bag entries). Set ``counts=True`` in the metadata written alongside.
    """
    parts = [np.asarray(c) for c in counts]
    for f, part in enumerate(parts):
        if part.ndim != 1 or (part.size and part.min() < 0):
            raise ValueError(f"counts of feature {f}: expected a 1-d non-negative array")
    path = Path(directory) / COUNTS_FILE
    path.parent.mkdir(exist_ok=True)
    flat = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
    np.save(path, flat)


def read_category_counts(directory: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """The training split's per-id counts: one (cardinality_f,) int64 array per feature.

    Raises:
        FileNotFoundError: the folder records no counts (made before they were recorded).
        ValueError: the file's length does not match the metadata's cardinalities.
    """
    metadata = read_metadata(directory)
    path = Path(directory) / COUNTS_FILE
    if not metadata.counts or not path.is_file():
        raise FileNotFoundError(
            f"{path}: dataset {directory} records no category counts; recreate it with this "
            "version of compemb"
        )
    flat = np.load(path)
    sizes = np.asarray(metadata.cardinalities, dtype=np.int64)
    if flat.ndim != 1 or len(flat) != sizes.sum():
        raise ValueError(
            f"{path}: shape {flat.shape}, expected ({int(sizes.sum())},) = the sum of the "
            "cardinalities in metadata.json"
        )
    return tuple(np.split(flat, np.cumsum(sizes)[:-1]))
