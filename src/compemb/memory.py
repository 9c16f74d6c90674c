"""A memory budget for the embedding layer, as a config writes it (``model.embedding.budget``).

Three forms, told apart by how they are written:

- a compression ratio, ``16x``: the full tables' embedding parameters (sum of n x D over the
  features) over the layer's, the frontier's compression column; id maps are not counted;
- a parameter count, ``2000000`` or ``2e6``: the layer's trained parameters (tables and
  path functions or MLPs), id maps not counted;
- bytes, ``200MB``, ``1.5GB``, ``300KiB`` (kB/KB, MB, GB, TB are powers of 1000; KiB, MiB,
  GiB, TiB powers of 1024; ``B`` alone is bytes): what the built layer holds, its parameters
  (float32) and its id maps (frequency order, hot ids, learned assignments).

:func:`compemb.embeddings.budget.resolve_budget` turns a budget into the scheme's knob.

>>> MemoryBudget.parse("16x").target(full_parameters=160_000)
10000
>>> MemoryBudget.parse("1.5GB").amount, MemoryBudget.parse("300KiB").amount
(1500000000, 307200)
>>> MemoryBudget.parse("2e6") == MemoryBudget.parse(2_000_000)
True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["BYTE_UNITS", "KINDS", "MemoryBudget"]

KINDS = ("ratio", "parameters", "bytes")
BYTE_UNITS = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"
_FORM = re.compile(rf"{_NUMBER}\s*([A-Za-z]*)")
_EXPECTED = ("a compression ratio ('16x'), a parameter count ('2000000' or '2e6') or bytes "
             f"('200MB', '1.5GB', '300KiB'; units {', '.join(BYTE_UNITS)})")


@dataclass(frozen=True)
class MemoryBudget:
    """A target size of the embedding layer.

    Attributes:
        kind: ``ratio``, ``parameters`` or ``bytes`` (module docstring).
        amount: the ratio (a float >= 1), or the parameters or bytes (an int >= 1).
        text: as the config wrote it (what ``config.yaml`` keeps); not compared.
    """

    kind: str
    amount: float | int
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"budget kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "ratio" and not (isinstance(self.amount, float)
                                         and 1 <= self.amount < math.inf):
            raise ValueError(f"a compression ratio must be a number >= 1 (1x: the full tables' "
                             f"size), got {self.amount!r}")
        if self.kind != "ratio" and (isinstance(self.amount, bool)
                                     or not isinstance(self.amount, int) or self.amount < 1):
            raise ValueError(f"a budget of {self.kind} must be an int >= 1, got {self.amount!r}")
        if not self.text:
            object.__setattr__(self, "text", _format(self.kind, self.amount))

    @classmethod
    def parse(cls, value: Any) -> MemoryBudget:
        """A budget from a config value: a string in one of the three forms, or a whole number
        of parameters (an int, or a float with no fraction, as YAML reads ``2.0e+6``)."""
        if isinstance(value, MemoryBudget):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"budget {value!r}: expected {_EXPECTED}")
        if isinstance(value, (int, float)):
            return cls("parameters", _whole(value, value, "parameter count"), str(value))
        text = value.strip()
        match = _FORM.fullmatch(text)
        if match is None:
            raise ValueError(f"budget {value!r}: expected {_EXPECTED}")
        digits, exponent, unit = match.groups()
        number = Decimal(f"{digits}e{exponent or 0}")  # exact: 1.1MB is 1,100,000 bytes
        if unit == "x":
            if not 1 <= float(number) < math.inf:
                raise ValueError(f"budget {value!r}: a compression ratio must be a finite number "
                                 f">= 1 (1x: the full tables' size), e.g. '16x'")
            return cls("ratio", float(number), text)
        if unit == "":
            return cls("parameters", _whole(number, value, "parameter count"), text)
        if unit not in BYTE_UNITS:
            near = [u for u in (*BYTE_UNITS, "x") if u.lower() == unit.lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"budget {value!r}: unknown unit {unit!r}{hint}; expected "
                             f"{_EXPECTED}")
        return cls("bytes", _whole(number * BYTE_UNITS[unit], value, "number of bytes"), text)

    def target(self, full_parameters: int) -> int:
        """The parameters (ratio, parameters) or bytes the layer may hold; ``full_parameters``:
        the full tables' sum of n x D, which a ratio divides."""
        if self.kind == "ratio":
            return int(full_parameters / self.amount)
        return int(self.amount)

    @property
    def unit(self) -> str:
        """What :meth:`target` counts: ``parameters`` or ``bytes``."""
        return "bytes" if self.kind == "bytes" else "parameters"

    def to_config(self) -> str:
        """The form ``config.yaml`` keeps: the text as written (a string, even for a count)."""
        return self.text

    def __str__(self) -> str:
        return self.text


def _whole(number: float | Decimal, value: Any, what: str) -> int:
    """``number`` as an int >= 1, or an error naming the ``value`` written."""
    if isinstance(number, float) and not math.isfinite(number) or not (
            number >= 1 and number == int(number)):
        raise ValueError(f"budget {value!r}: a {what} must be a whole number >= 1; expected "
                         f"{_EXPECTED}")
    return int(number)


def _format(kind: str, amount: float | int) -> str:
    if kind == "ratio":
        return f"{amount:g}x"
    return f"{amount}B" if kind == "bytes" else str(amount)
