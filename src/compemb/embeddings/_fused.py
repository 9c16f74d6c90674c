"""Gather-and-compose in one autograd node, with the backward written out.

Autograd's version (``F.embedding`` per table, then ``*``/``+``/``cat``) records k + k - 1 nodes
and gives every table a sparse gradient, even a table of a few rows that every id touches. Here
the backward computes each table's row gradients directly and returns a sparse gradient only for
tables large enough to pay for one; small tables get a dense gradient by one ``index_add_``.

Letters: N looked-up ids (any leading shape flattened), D_j width of table j, D output width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class _ComposeLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, operation: str, sparse: tuple[bool, ...], masks: tuple, *tensors):
        k = len(sparse)
        buckets, weights = tensors[:k], tensors[k:]
        shape = buckets[0].shape
        flat = [b.reshape(-1) for b in buckets]
        parts = [w.index_select(0, b) for w, b in zip(weights, flat, strict=True)]
        masks = tuple(None if m is None else m.reshape(-1, 1) for m in masks)
        identity = 1.0 if operation == "mult" else 0.0
        for j, m in enumerate(masks):
            if m is not None:  # rows without this partition contribute the identity
                parts[j] = torch.where(m, parts[j], identity)
        if operation == "concat":
            out = torch.cat(parts, dim=-1)
            saved: list[torch.Tensor] = []
        elif operation == "add":
            out = parts[0] if k == 1 else parts[0] + parts[1]
            for p in parts[2:]:
                out.add_(p)
            saved = []
        else:
            out = parts[0] if k == 1 else parts[0] * parts[1]
            for p in parts[2:]:
                out.mul_(p)
            saved = parts if k > 1 else []
        ctx.operation, ctx.sparse, ctx.masks = operation, sparse, masks
        ctx.table_shapes = [w.shape for w in weights]
        ctx.widths = [w.shape[1] for w in weights]
        ctx.save_for_backward(*flat, *saved)
        return out.view(*shape, out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = len(ctx.sparse)
        flat, parts = ctx.saved_tensors[:k], ctx.saved_tensors[k:]
        g = grad.reshape(-1, grad.shape[-1])
        grads = []
        start = 0
        for j in range(k):
            if not ctx.needs_input_grad[3 + k + j]:
                grads.append(None)
                continue
            if ctx.operation == "concat":
                rows = g[:, start : start + ctx.widths[j]].contiguous()
            elif ctx.operation == "add" or k == 1:
                rows = g
            else:
                rows = g
                for i, p in enumerate(parts):
                    if i != j:
                        rows = rows * p
            if ctx.masks[j] is not None:
                rows = rows * ctx.masks[j]
            grads.append(_table_grad(rows, flat[j], ctx.table_shapes[j], ctx.sparse[j]))
            start += ctx.widths[j]
        return (None, None, None, *([None] * k), *grads)


def _table_grad(rows: torch.Tensor, index: torch.Tensor, shape: torch.Size, sparse: bool):
    if sparse:
        # Uncoalesced, as nn.Embedding(sparse=True) gives it; the optimizer sums duplicates.
        return torch.sparse_coo_tensor(index.unsqueeze(0), rows, shape, check_invariants=False)
    return torch.zeros(shape, dtype=rows.dtype, device=rows.device).index_add_(0, index, rows)


def compose_lookup(
    operation: str,
    buckets: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    sparse: Sequence[bool],
    masks: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """``omega(W_1[b_1], ..., W_k[b_k])`` for omega in concat, add, mult.

    Args:
        buckets: k int64 tensors of one shape S, row indices into each table.
        weights: k tables (R_j, D_j).
        sparse: per table, whether its gradient is sparse.
        masks: per table, None or a bool tensor of shape S: False where the id has no part from
            that table (it contributes the identity: 1 for mult, 0 for add).

    Returns:
        (*S, D) with D = sum D_j for concat, D_j otherwise.
    """
    masks = tuple(masks) if masks is not None else (None,) * len(buckets)
    return _ComposeLookup.apply(operation, tuple(sparse), masks, *buckets, *weights)


class _Assemble(torch.autograd.Function):
    @staticmethod
    def forward(ctx, slots: tuple[torch.Tensor, ...], width: int, *pieces: torch.Tensor):
        first = pieces[0]
        out = first.new_empty(first.shape[0], width, *first.shape[2:])
        for index, piece in zip(slots, pieces, strict=True):
            out.index_copy_(1, index, piece)
        ctx.slots = slots
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, None, *(grad.index_select(1, index) for index in ctx.slots))


def assemble(pieces: Sequence[torch.Tensor], slots: Sequence[torch.Tensor], width: int):
    """Place pieces (B, n_i, ...) at output positions ``slots[i]`` (n_i,) of a (B, width, ...)
    tensor: one write per element, one gather per piece in the backward (no cat, no permute)."""
    return _Assemble.apply(tuple(slots), width, *pieces)
