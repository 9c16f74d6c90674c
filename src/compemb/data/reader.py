"""Streaming plain or gzip text files as blocks of whole lines, hashing them as they are read."""

from __future__ import annotations

import gzip
import hashlib
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
from tqdm.auto import tqdm

__all__ = ["InputStream", "count_lines", "progress_bar", "prefetch"]

_GZIP_MAGIC = b"\x1f\x8b"
T = TypeVar("T")


def progress_bar(total: int, desc: str, progress: bool | None) -> tqdm:
    """A bar over ``total`` stored bytes with MB/s and ETA; ``progress=None``: only on a tty."""
    disable = None if progress is None else not progress
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=disable)


class _RawCounter:
    """The file as stored on disk: counts bytes and updates a sha256 as they are read."""

    def __init__(self, file: BinaryIO, bar: tqdm | None) -> None:
        self._file = file
        self._bar = bar
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._pending: deque[Future[None]] = deque()

    def hexdigest(self) -> str:
        """The sha256 of everything read so far."""
        while self._pending:
            self._pending.popleft().result()
        return self.sha256.hexdigest()

    def close(self) -> None:
        self._hasher.shutdown(wait=True)

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        # hashlib releases the GIL: hash on a second core while the caller parses; one worker
        # keeps the updates in order.
        self._pending.append(self._hasher.submit(self.sha256.update, data))
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        self.bytes_read += len(data)
        if self._bar is not None:
            self._bar.update(len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        line = self._file.readline(size)
        self._pending.append(self._hasher.submit(self.sha256.update, line))
        self.bytes_read += len(line)
        if self._bar is not None:
            self._bar.update(len(line))
        return line


class InputStream:
    """Opens ``path`` (gzip detected by its magic bytes) for one pass over its lines.

    Use as a context manager; :meth:`chunks` yields blocks of whole lines. Every decompression
    error (a truncated or corrupt gzip) becomes a ValueError naming the file. After a full pass,
    ``sha256`` and ``size`` describe the file as stored on disk.

    Args:
        path: the input file.
        bar: a progress bar to advance by the stored bytes read (shared by several files).
    """

    def __init__(self, path: str | Path, *, bar: tqdm | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input {self.path} does not exist or is not a file")
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as probe:
            self.compressed = probe.read(2) == _GZIP_MAGIC
        self._bar = bar

    def __enter__(self) -> InputStream:
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by __exit__
        self._raw = _RawCounter(self._file, self._bar)
        self._stream: Any = (
            gzip.GzipFile(fileobj=self._raw, mode="rb") if self.compressed else self._raw
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()
        self._file.close()

    @property
    def sha256(self) -> str:
        return self._raw.hexdigest()

    def record(self, lines: int) -> dict[str, Any]:
        """What the metadata says of this input after a full pass of ``lines`` lines."""
        return {
            "name": self.path.name,
            "bytes": self.size,
            "sha256": self.sha256,
            "gzip": self.compressed,
            "lines": lines,
        }

    def _guard(self, read: Callable[[int], bytes], size: int) -> bytes:
        try:
            return read(size)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{self.path}: corrupt or truncated gzip input ({err})") from err

    def read(self, size: int) -> bytes:
        """Up to ``size`` decompressed bytes; b"" at the end."""
        return self._guard(self._stream.read, size)

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """Blocks of about ``chunk_bytes`` holding whole lines; the last may lack a newline."""
        while block := self.read(chunk_bytes):
            if not block.endswith(b"\n"):
                # finish the line: one copy of the block, instead of cutting it and carrying
                # the rest over (two)
                block += self._guard(self._stream.readline, -1)
            yield block


def count_lines(path: str | Path, *, progress: bool | None = None) -> int:
    """Number of lines of ``path`` (plain or gzip); a last line without a newline counts."""
    lines = 0
    last = b"\n"
    stream = InputStream(path)
    with progress_bar(stream.size, f"count lines of {stream.path.name}", progress) as bar:
        stream._bar = bar
        with stream:
            while block := stream.read(16 << 20):
                lines += int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == 10))
                last = block[-1:]
    return lines + (last != b"\n")


_DONE = object()


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items``, computing up to ``depth`` of them ahead in a background thread.

    Why: parsing (polars, zlib, file reads) releases the GIL, so the next block is read and
    parsed on one core while the caller encodes the current one in NumPy on the other. An
    exception in the producer is raised in the consumer; closing the consumer stops the
    producer.
    """
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item,)):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's open files close in this thread

    worker = threading.Thread(target=produce, name="compemb-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = box.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item[0]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                box.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()
