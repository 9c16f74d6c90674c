"""Streaming a plain or gzip text file as blocks of whole lines, hashing it as it is read."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

__all__ = ["InputStream", "count_lines"]

_GZIP_MAGIC = b"\x1f\x8b"


class _RawCounter:
    """The file as stored on disk: counts bytes and updates a sha256 as they are read."""

    def __init__(self, file: BinaryIO, bar: tqdm) -> None:
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
        self._bar.update(len(data))
        return data


class InputStream:
    """Opens ``path`` (gzip detected by its magic bytes) for one pass over its lines.

    Use as a context manager; :meth:`chunks` yields blocks of whole lines. Every decompression
    error (a truncated or corrupt gzip) becomes a ValueError naming the file. After a full pass,
    ``sha256`` and ``size`` describe the file as stored on disk.

    Args:
        path: the input file.
        desc: progress bar label; the bar shows MB/s and the ETA from the stored bytes read.
        progress: show the bar; ``None`` shows it only on a terminal.
    """

    def __init__(self, path: str | Path, *, desc: str = "read", progress: bool | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input {self.path} does not exist or is not a file")
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as probe:
            self.compressed = probe.read(2) == _GZIP_MAGIC
        self._desc = desc
        self._progress = progress

    def __enter__(self) -> InputStream:
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by __exit__
        disable = None if self._progress is None else not self._progress
        self._bar = tqdm(
            total=self.size, unit="B", unit_scale=True, desc=self._desc, disable=disable
        )
        self._raw = _RawCounter(self._file, self._bar)
        self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.compressed else self._raw
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
        self._raw.close()
        self._file.close()

    @property
    def sha256(self) -> str:
        return self._raw.hexdigest()

    def read(self, size: int) -> bytes:
        """Up to ``size`` decompressed bytes; b"" at the end."""
        try:
            return self._stream.read(size)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{self.path}: corrupt or truncated gzip input ({err})") from err

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """Blocks of about ``chunk_bytes`` holding whole lines; the last may lack a newline."""
        rest = b""
        while True:
            block = self.read(chunk_bytes)
            if not block:
                if rest:
                    yield rest
                return
            data = rest + block if rest else block
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block: keep reading
                rest = data
                continue
            rest = data[cut:]
            yield data[:cut]


def count_lines(path: str | Path, *, progress: bool | None = None) -> int:
    """Number of lines of ``path`` (plain or gzip); a last line without a newline counts."""
    lines = 0
    last = b"\n"
    with InputStream(path, desc="count lines", progress=progress) as stream:
        while block := stream.read(16 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")
