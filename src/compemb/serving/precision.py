"""Row-wise precisions of served tables: FBGEMM's inference formats, one registered object each.

A row of width W is stored as FBGEMM's inference TBE reads it: float32 or float16 values, or
8- or 4-bit codes behind a float16 scale and bias of the row (4 bytes), so that a value is
``code * scale + bias``. An int8 row of width 16 takes 20 bytes where float32 takes 64 (3.2x
fewer), an int4 row 12 (5.3x).

>>> [PRECISIONS.lookup(p).row_bytes(16) for p in ("fp32", "fp16", "int8", "int4")]
[64, 32, 20, 12]
>>> PRECISIONS.lookup("int8").shrinks(1)  # 5 bytes for a 4-byte float32 value
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compemb.registry import Registry

__all__ = ["FLOAT32", "PRECISIONS", "Precision", "require_fbgemm", "table_precision"]

FBGEMM_HINT = ("quantized serving runs on FBGEMM's inference kernels: pip install -c "
               "constraints.txt fbgemm-gpu-cpu==1.8.0 (part of the `torchrec` extra)")
SCALE_BIAS_BYTES = 4  # float16 scale and bias in front of each quantized row


def require_fbgemm() -> Any:
    """The ``fbgemm_gpu`` package (which registers ``torch.ops.fbgemm``), or an ImportError
    that says what to install."""
    try:
        import fbgemm_gpu
    except ImportError as err:  # also "undefined symbol" on a mismatched torch
        raise ImportError(f"{FBGEMM_HINT} ({err})") from err
    return fbgemm_gpu


@dataclass(frozen=True)
class Precision:
    """How a served table stores a row.

    Attributes:
        name: the name users give (``--quantize int8``).
        bits: bits per value.
        sparse_type: FBGEMM's ``SparseType`` value for it.
        width_multiple: FBGEMM's row-wise quantizer packs a row into whole pairs of bytes (its
            scale and bias are float16-aligned), so a quantized width is a multiple of this.
    """

    name: str
    bits: int
    sparse_type: str
    width_multiple: int = 1

    @property
    def scaled(self) -> bool:
        """Rows carry a scale and a bias (integer codes)."""
        return self.bits < 16

    def row_bytes(self, width: int) -> int:
        """Bytes of one row of ``width`` values, scale and bias included."""
        return (width * self.bits + 7) // 8 + (SCALE_BIAS_BYTES if self.scaled else 0)

    def shrinks(self, width: int) -> bool:
        """Whether a row of ``width`` takes fewer bytes than in float32."""
        return self.row_bytes(width) < 4 * width

    def quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A float table (R, W) as FBGEMM's rows: (R, W bits / 8) uint8 codes and, for the
        integer formats, (R, 4) uint8 scale and bias (two float16 values)."""
        weight = weight.detach().float().contiguous()
        if not self.scaled:
            kind = torch.float32 if self.bits == 32 else torch.float16
            return weight.to(kind).view(torch.uint8), None
        require_fbgemm()
        fused = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(weight, self.bits)
        return fused[:, :-SCALE_BIAS_BYTES], fused[:, -SCALE_BIAS_BYTES:]

    def dequantize(self, codes: torch.Tensor, scale_bias: torch.Tensor | None, width: int
                   ) -> torch.Tensor:
        """The float32 rows (R, W) FBGEMM reads from ``codes`` and ``scale_bias`` (as
        :meth:`quantize` makes them): ``code * scale + bias`` in float32."""
        if not self.scaled:
            kind = torch.float32 if self.bits == 32 else torch.float16
            return codes.contiguous().view(kind)[:, :width].float()
        per_byte = 8 // self.bits
        mask = (1 << self.bits) - 1
        parts = [(codes >> (self.bits * j)) & mask for j in range(per_byte)]  # low bits first
        values = torch.stack(parts, dim=-1).reshape(codes.shape[0], -1)[:, :width].float()
        sb = scale_bias.contiguous().view(torch.float16).float()
        return values * sb[:, :1] + sb[:, 1:2]


PRECISIONS: Registry[Precision] = Registry("precision")
FLOAT32 = PRECISIONS.register("fp32", Precision("fp32", 32, "fp32"))
PRECISIONS.register("fp16", Precision("fp16", 16, "fp16"))
PRECISIONS.register("int8", Precision("int8", 8, "int8", width_multiple=2))
PRECISIONS.register("int4", Precision("int4", 4, "int4", width_multiple=4))


def table_precision(precision: Precision, width: int, table: str) -> Precision:
    """The precision a table of ``width`` gets when ``precision`` is asked for: float32 where
    the precision would not shrink it (int8 and int4 at width 1), else the precision itself.

    Raises:
        ValueError: naming the table, where FBGEMM cannot pack the width (int8 at an odd
            width, int4 at one not a multiple of 4).
    """
    if not precision.shrinks(width):
        return FLOAT32
    if width % precision.width_multiple:
        raise ValueError(
            f"table {table} of width {width} cannot be stored in {precision.name}: FBGEMM "
            f"packs {precision.name} rows in widths that are multiples of "
            f"{precision.width_multiple}; give this feature fp16 (a per-feature precision) or "
            f"another width"
        )
    return precision
