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

from compemb import _kernels
from compemb.operations import Mult, Operation, get_operation
from compemb.optim.fused import Sink, gradient_sink

# Ids per chunk: a chunk's gathered rows and products (1 MiB per tensor at D = 16) stay in cache,
# where one pass over the whole batch at once would stream every intermediate through memory.
CHUNK = 16384
# mult keeps the gathered rows of tables above this size for the backward (gathering them again
# would mean random reads again); smaller tables are cache-resident and gathered again.
_KEEP_ROWS = 4096


def _gather(weight: torch.Tensor, index: torch.Tensor, absent: torch.Tensor | None,
            identity: float, columns: int, out: torch.Tensor | None = None) -> torch.Tensor:
    rows = torch.index_select(weight, 0, index, out=out) if out is not None else \
        weight.index_select(0, index)
    if absent is not None:  # columns without this partition contribute the identity
        rows.view(-1, columns, rows.shape[-1]).index_fill_(1, absent, identity)
    return rows


def _spans(n: int, columns: int) -> list[tuple[int, int]]:
    """Chunks of the ids, whole rows of ``columns`` each; one span when exporting (the batch
    size is symbolic then)."""
    if torch.compiler.is_compiling():
        return [(0, n)]
    step = max(1, CHUNK // columns) * columns
    return [(s, min(n, s + step)) for s in range(0, n, step)]


class _ComposeLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, operation: Operation, sparse: tuple[bool, ...], absent: tuple,
                sinks: tuple[Sink | None, ...], *tensors):
        k = len(sparse)
        buckets, weights = tensors[:k], tensors[k:]
        shape = buckets[0].shape
        columns = shape[-1] if len(shape) else 1
        flat = [b.reshape(-1) for b in buckets]
        identity = operation.identity
        n = flat[0].numel()
        widths = [w.shape[1] for w in weights]
        needs_parts = operation.needs_parts_for_backward and k > 1
        # QR mult's two-table product: the compiled kernel where built (compemb._kernels).
        compiled = (k == 2 and type(operation) is Mult and absent[0] is None
                    and _kernels.mult2_applies(weights, flat))  # fmt: skip
        keep = [needs_parts and w.shape[0] > _KEEP_ROWS for w in weights]
        kept = [w.new_empty(n, w.shape[1]) if keep_j else None
                for w, keep_j in zip(weights, keep, strict=True)]  # fmt: skip
        mask = None
        if compiled and absent[1] is not None:
            mask = torch.zeros(columns, dtype=torch.uint8, device=weights[0].device)
            mask[absent[1]] = 1
        if compiled:
            out = _kernels.mult2_forward(weights[0], weights[1], flat[0], flat[1], columns, mask,
                                         kept[0])  # fmt: skip
        elif k == 1 and absent[0] is None:
            out = weights[0].index_select(0, flat[0])
        else:
            out = weights[0].new_empty(n, operation.output_width(widths))
            for s, e in _spans(n, columns):
                parts = [
                    _gather(w, b[s:e], a, identity, columns, None if buf is None else buf[s:e])
                    for w, b, a, buf in zip(weights, flat, absent, kept, strict=True)
                ]
                operation.combine(parts, out=out[s:e])
        ctx.operation, ctx.sparse, ctx.absent, ctx.widths = operation, sparse, absent, widths
        ctx.sinks = sinks
        ctx.columns = columns
        ctx.compiled, ctx.mask = compiled, mask
        ctx.kept = [buf is not None for buf in kept]
        ctx.save_for_backward(*flat, *weights, *(buf for buf in kept if buf is not None))
        return out.view(*shape, out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = len(ctx.sparse)
        saved = ctx.saved_tensors
        flat, weights, rest = saved[:k], saved[k : 2 * k], list(saved[2 * k :])
        kept = [rest.pop(0) if keep_j else None for keep_j in ctx.kept]
        op: Operation = ctx.operation
        identity = op.identity
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        n = g.shape[0]
        need = [ctx.needs_input_grad[4 + k + j] for j in range(k)]
        needs_parts = op.needs_parts_for_backward and k > 1
        # Where the gradient of a table is the incoming gradient itself (add, or one table), its
        # sparse gradient's values are that tensor: no copy.
        passes = k == 1 or op.gradient_is_identity
        values = [
            g if need[j] and ctx.sparse[j] and passes and ctx.absent[j] is None
            else (g.new_empty(n, ctx.widths[j]) if need[j] and ctx.sparse[j] else None)
            for j in range(k)
        ]  # fmt: skip
        dense = [torch.zeros_like(w) if need[j] and not ctx.sparse[j] else None
                 for j, w in enumerate(weights)]  # fmt: skip
        if ctx.compiled:
            _kernels.mult2_backward(
                g, weights[0], kept[0], weights[1], flat[0], flat[1], ctx.columns, ctx.mask,
                [values[j] if values[j] is not None else dense[j] for j in range(k)],
                [dense[j] is not None for j in range(k)],
            )  # fmt: skip
        for s, e in _spans(n, ctx.columns) if not ctx.compiled else ():
            gs = g[s:e]
            parts = None
            if needs_parts:
                parts = [
                    buf[s:e] if buf is not None else
                    _gather(w, b[s:e], a, identity, ctx.columns)
                    for w, b, a, buf in zip(weights, flat, ctx.absent, kept, strict=True)
                ]  # fmt: skip
            for j in range(k):
                if not need[j] or values[j] is g:
                    continue
                rows = values[j][s:e] if values[j] is not None else None
                chunk = gs if k == 1 else op.partial(gs, parts, j, ctx.widths, out=rows)
                a = ctx.absent[j]
                if a is not None:  # no gradient where this table took no part
                    if chunk is gs or not chunk.is_contiguous():
                        chunk = chunk.clone(memory_format=torch.contiguous_format)
                    chunk.view(-1, ctx.columns, chunk.shape[-1]).index_fill_(1, a, 0.0)
                if rows is not None:
                    if chunk.data_ptr() != rows.data_ptr():
                        rows.copy_(chunk)
                else:
                    dense[j].index_add_(0, flat[j][s:e], chunk)
        grads = []
        for j in range(k):
            sink = ctx.sinks[j]
            if need[j] and sink is not None and values[j] is not None:
                sink(flat[j], values[j])  # the optimizer updates these rows: no gradient
                grads.append(None)
            elif not need[j] or dense[j] is not None:
                grads.append(dense[j])
            else:
                grads.append(torch.sparse_coo_tensor(flat[j].unsqueeze(0), values[j],
                                                     weights[j].shape, check_invariants=False))
        return (None, None, None, None, *([None] * k), *grads)


def compose_lookup(
    operation: Operation | str,
    buckets: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    sparse: Sequence[bool],
    absent: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """``omega(W_1[b_1], ..., W_k[b_k])`` for any registered operation omega.

    Args:
        operation: an :class:`~compemb.operations.Operation` or its registered name; tables
            may be absent only if it has an identity.
        buckets: k int64 tensors of one shape S, row indices into each table.
        weights: k tables (R_j, D_j).
        sparse: per table, whether its gradient is sparse.
        absent: per table, None or an int64 tensor of positions along the last dimension of S
            (the features) that have no part from that table: there it contributes the
            operation's identity (1 for mult, 0 for add) and gets no gradient.

    Returns:
        (*S, D) with D = sum D_j for concat, D_j otherwise.
    """
    absent = tuple(absent) if absent is not None else (None,) * len(buckets)
    if not isinstance(operation, Operation):
        operation = get_operation(operation)
    # Sparse tables routed to a fused optimizer (compemb.optim.fused) hand it their row
    # gradients in the backward instead of a sparse gradient tensor.
    sinks = tuple(gradient_sink(w) if s and torch.is_grad_enabled() and w.requires_grad
                  else None for w, s in zip(weights, sparse, strict=True))  # fmt: skip
    return _ComposeLookup.apply(operation, tuple(sparse), absent, sinks, *buckets, *weights)


class _Assemble(torch.autograd.Function):
    @staticmethod
    def forward(ctx, slots: tuple[torch.Tensor, ...], width: int, *pieces: torch.Tensor):
        first = pieces[0]
        out = first.new_empty(first.shape[0], width, *first.shape[2:])
        for index, piece in zip(slots, pieces, strict=True):
            if torch.compiler.is_compiling():
                out.index_copy_(1, index, piece)
                continue
            # runs of consecutive slots as slice copies: index_copy_ along dim 1 moves one
            # element at a time, a slice copy whole (D-wide) rows
            at = index.tolist()
            start = 0
            for i in range(1, len(at) + 1):
                if i == len(at) or at[i] != at[i - 1] + 1:
                    out[:, at[start] : at[i - 1] + 1] = piece[:, start:i]
                    start = i
        ctx.slots = slots
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, None, *(grad.index_select(1, index) for index in ctx.slots))


def assemble(pieces: Sequence[torch.Tensor], slots: Sequence[torch.Tensor], width: int):
    """Place pieces (B, n_i, ...) at output positions ``slots[i]`` (n_i,) of a (B, width, ...)
    tensor: one write per element, one gather per piece in the backward (no cat, no permute)."""
    return _Assemble.apply(tuple(slots), width, *pieces)
