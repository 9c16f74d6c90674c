"""Tables stored row-wise quantized and looked up by FBGEMM's inference kernel.

:class:`QuantizedTables` holds the buffers of FBGEMM's inference TBE
(``IntNBitTableBatchedEmbeddingBagsCodegen``) and calls its operator
``torch.ops.fbgemm.int_nbit_split_embedding_codegen_lookup_function`` on them directly: the
stock module keeps a ``fbgemm::AtomicCounter`` that ``torch.export`` cannot capture, the
operator alone exports, and the exported program then runs with ``torch`` and ``fbgemm_gpu``.

Letters: T tables, L lookups (each reads one table; several may read the same one), B bags
per lookup, N ids over all lookups, W a table's width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from compemb.serving.precision import Precision, require_fbgemm

__all__ = ["POOLINGS", "QuantizedTables"]

# FBGEMM's PoolingMode values; "none" gives one row per id.
POOLINGS = {"sum": 0, "mean": 1, "none": 2}
_TYPE_LIMITS = ("int2", "int4", "int8", "float16", "float32")  # the operator's max_<type>_D order


class QuantizedTables(nn.Module):
    """T tables, each in its own precision, read by L lookups together in one call (FP32
    output). A table several lookups read (a shared array) is stored once: FBGEMM's
    ``feature_table_map`` points each of those lookups at the same rows.

    Forward: ``(indices (N,), offsets (L B + 1,))`` int64, bags lookup by lookup as FBGEMM
    takes them (bag b of lookup l holds ``indices[offsets[l B + b]:offsets[l B + b + 1]]``) ->
    ``(B, sum of the lookups' W)`` pooled (pooling ``sum`` or ``mean``; an empty bag gives
    zeros) or ``(N, W)`` one row per id (pooling ``none``: every table of one width W).

    Args:
        tables: ``(name, weight (R, W) float, precision)`` of each table; the weights are
            quantized here, one table at a time.
        pooling: ``sum``, ``mean`` or ``none``.
        lookups: the table each lookup reads (indices into ``tables``, each table read at
            least once); one lookup per table, in order, if None.

    >>> from compemb.serving.precision import PRECISIONS
    >>> w = torch.linspace(-1, 1, 40).reshape(10, 4)
    >>> qt = QuantizedTables([("t", w, PRECISIONS.lookup("fp16"))], "none")
    >>> qt(torch.tensor([9]), torch.tensor([0, 1]))
    tensor([[0.8462, 0.8975, 0.9487, 1.0000]])
    >>> qt.table_bytes()
    {'t': 80}

    Two lookups of one table (a bag of lookup 0, then one of lookup 1), stored once:

    >>> qt = QuantizedTables([("t", w, PRECISIONS.lookup("fp16"))], "sum", lookups=[0, 0])
    >>> qt(torch.tensor([9, 0, 9]), torch.tensor([0, 2, 3])).shape, qt.table_bytes()
    (torch.Size([1, 8]), {'t': 80})
    """

    def __init__(self, tables: Sequence[tuple[str, torch.Tensor, Precision]], pooling: str,
                 lookups: Sequence[int] | None = None):
        super().__init__()
        require_fbgemm()
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
            IntNBitTableBatchedEmbeddingBagsCodegen,
        )
        from fbgemm_gpu.tbe.config.embedding_config import EmbeddingLocation, PoolingMode

        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        if not tables:
            raise ValueError("QuantizedTables needs at least one table")
        lookups = tuple(range(len(tables))) if lookups is None else tuple(lookups)
        if sorted(set(lookups)) != list(range(len(tables))):
            raise ValueError(f"lookups {list(lookups)}: each must name one of the {len(tables)} "
                             f"tables (0..{len(tables) - 1}), and each table must be read")
        widths = {int(w.shape[1]) for _, w, _ in tables}
        if pooling == "none" and len(widths) > 1:
            raise ValueError(f"unpooled lookups return one width; these tables have {widths}")
        self.pooling = pooling
        self.names = tuple(name for name, _, _ in tables)
        self.shapes = tuple((int(w.shape[0]), int(w.shape[1])) for _, w, _ in tables)
        self.precisions = tuple(p for _, _, p in tables)
        self.lookups = lookups
        specs = [(name, rows, width, SparseType(p.sparse_type), EmbeddingLocation.HOST)
                 for name, (rows, width), p in zip(self.names, self.shapes, self.precisions,
                                                   strict=True)]  # fmt: skip
        # The stock module lays the tables out in one buffer; its buffers are kept, not it.
        stock = IntNBitTableBatchedEmbeddingBagsCodegen(
            specs, feature_table_map=list(lookups), pooling_mode=PoolingMode(POOLINGS[pooling]),
            device="cpu", output_dtype=SparseType.FP32)  # fmt: skip
        stock.initialize_weights()
        for (codes, scale_bias), (_, weight, precision) in zip(
                stock.split_embedding_weights(), tables, strict=True):
            new_codes, new_sb = precision.quantize(weight)
            codes.copy_(new_codes)
            if scale_bias is not None:
                scale_bias.copy_(new_sb)
        self.register_buffer("weights", stock.weights_host)
        for name in ("weights_offsets", "weights_tys", "D_offsets", "weights_placements"):
            self.register_buffer(name, getattr(stock, name).clone())
        self.register_buffer("uvm", torch.zeros(0, dtype=torch.uint8), persistent=False)
        self.total_width = int(stock.total_D)
        self.max_widths = tuple(int(getattr(stock, f"max_{t}_D")) for t in _TYPE_LIMITS)
        self.row_alignment = int(stock.row_alignment)

    @property
    def lookup_widths(self) -> tuple[int, ...]:
        """W of each lookup, in order: the column blocks of the pooled output."""
        return tuple(self.shapes[t][1] for t in self.lookups)

    def table_bytes(self) -> dict[str, int]:
        """Bytes of each table's rows (codes with their scale and bias), by name; a table
        several lookups read counts once."""
        return {name: rows * self._stride(t)
                for t, (name, (rows, _)) in enumerate(zip(self.names, self.shapes, strict=True))}

    def _stride(self, t: int) -> int:
        p, a = self.precisions[t], self.row_alignment
        return (p.row_bytes(self.shapes[t][1]) + a - 1) // a * a

    def dequantized(self, t: int) -> torch.Tensor:
        """Table t's rows (R, W) in float32 as the kernel reads them."""
        rows, width = self.shapes[t]
        # weights_offsets holds one entry per lookup: the first lookup of t says where t starts
        start = int(self.weights_offsets[self.lookups.index(t)])
        stride, p = self._stride(t), self.precisions[t]
        block = self.weights[start: start + rows * stride].view(rows, stride)
        if not p.scaled:
            return p.dequantize(block, None, width)
        # FBGEMM keeps the scale and bias in front of the codes
        return p.dequantize(block[:, 4: 4 + (width * p.bits + 7) // 8], block[:, :4], width)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return torch.ops.fbgemm.int_nbit_split_embedding_codegen_lookup_function(
            self.weights, self.uvm, self.weights_placements, self.weights_offsets,
            self.weights_tys, self.D_offsets, self.total_width, *self.max_widths, indices,
            offsets, POOLINGS[self.pooling], None, 0, None, None, self.row_alignment)
