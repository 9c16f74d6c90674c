"""Small Criteo-format inputs written by the tests (never real data)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

GOOD_LINES = 70  # 7 days of 10 lines


def criteo_line(i: int) -> str:
    """A valid line, varied by ``i``: blanks, negatives, hex values >= 0x80000000."""
    label = ("0", "1", "")[i % 3]
    ints = ["" if (i + j) % 5 == 0 else str((i * 7 + j) % 50 - 3) for j in range(13)]
    cats = [f"{(i * 31 + f * 17) % 9 * 0x11111111 + 0x0FFFFFFF * (f % 2):08x}" for f in range(26)]
    cats[0] = ("00000000", "ffffffff", "80000000", "", "0a1B2c3D")[i % 5]
    cats[1] = "" if i % 4 == 0 else f"{i % 3:x}"
    return "\t".join([label, *ints, *cats])


# 1-based line number -> (malformed line, expected reason)
def malformed(lines: list[str]) -> dict[int, tuple[str, str]]:
    base = lines[0].split("\t")

    def with_field(col: int, value: str) -> str:
        return "\t".join(base[:col] + [value] + base[col + 1 :])

    return {
        5: ("\t".join(base[:-1]), "field_count"),
        12: (with_field(3, "1.5"), "bad_integer"),
        20: (with_field(20, "xyz1"), "bad_category"),
        33: (with_field(39, "123456789"), "bad_category"),
        41: (with_field(0, "2"), "bad_label"),
        50: ("", "field_count"),
        60: ("\t".join(base + ["extra"]), "field_count"),
    }


@pytest.fixture
def write_criteo(tmp_path: Path) -> Callable[..., Path]:
    """``write_criteo(name, n=70, bad=True, compress=False)`` writes an input file."""

    def write(name: str, n: int = GOOD_LINES, bad: bool = True, compress: bool = False) -> Path:
        lines = [criteo_line(i) for i in range(n)]
        if bad:
            for number, (line, _) in malformed(lines).items():
                lines[number - 1] = line
        data = ("\n".join(lines) + "\n").encode()
        path = tmp_path / name
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        return path

    return write
