"""Mixed dimensions combined with the quotient-remainder trick: a frequent head of private rows
and a QR-composed tail, each at its own width and projected to D.

Letters: B bags, N ids, n categories, h head categories, c collisions, D output width.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.base import BagModule
from compemb.embeddings.mixed_dim import INITS, init_projection, md_table_bounds
from compemb.embeddings.operation import CompositionalEmbeddingBag
from compemb.operations import Operation, get_operation
from compemb.partitions import RelabeledPartitions, quotient_remainder, remainder

__all__ = ["HeadTailEmbeddingBag"]


class HeadTailEmbeddingBag(BagModule):
    """MD + QR in one feature: category i of frequency rank r gets

        r < h:   P_h @ H[r]                                  (a private row, width w_h)
        r >= h:  P_t @ omega(Q[(r - h) // c], R[(r - h) % c])  (QR-composed, width w_t)

    so the h most frequent categories keep rows of their own and the long tail shares the
    rows of a quotient table (ceil((n - h) / c), w_t) and a remainder table (c, w_t), composed
    by the operation omega (``tail``, a
    :class:`~compemb.embeddings.operation.CompositionalEmbeddingBag` over the tail's ranks).
    The projections P_h (D, w_h) and P_t (D, w_t) are bias-free; none where a width is D.

    The ranks are the buffer ``relabel`` ((n,) int64). Init: the head and its projection as
    :class:`~compemb.embeddings.mixed_dim.MixedDimEmbeddingBag` (``init``, with the feature's
    n), the tail's tables by the operation's own rule over its n - h categories, P_t as P_h.

    Args:
        ranks: (n,) the rank of each category, a permutation of [0, n) (0: the most frequent).
        head: h, 1 <= h <= n - 2.
        head_width: w_h in [1, D].
        tail_width: w_t in [1, D] (the composed width: concat splits it among its tables).
        collisions: c, the tail categories that share each row of the quotient table.
        operation: the tail's composition (``mult``, ``add``, ``concat``).

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> bag = HeadTailEmbeddingBag(1000, 16, np.arange(1000), head=32, head_width=16,
    ...                            tail_width=4, collisions=8)
    >>> bag(torch.tensor([[3, 999]])).shape, bag.num_parameters  # 32*16 + (121+8)*4 + 16*4
    (torch.Size([1, 16]), 1092)
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        ranks: np.ndarray | torch.Tensor,
        *,
        head: int,
        head_width: int,
        tail_width: int,
        collisions: int,
        operation: str | Operation = "mult",
        mode: str = "sum",
        init: str = "reference",
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        n, d = num_categories, embedding_dim
        if isinstance(head, bool) or not isinstance(head, int) or not 1 <= head <= n - 2:
            raise ValueError(f"{where}: head must be an int in [1, {n - 2}] (a tail of at "
                             f"least 2 categories), got {head!r}")
        for name, w in (("head_width", head_width), ("tail_width", tail_width)):
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= d:
                raise ValueError(f"{where}: {name} must be an int in [1, embedding_dim={d}], "
                                 f"got {w!r}")
        if init not in INITS:
            raise ValueError(f"{where}: init must be one of {INITS}, got {init!r}")
        self.head = head
        self.init = init
        self.sparse = sparse
        ranks = ranks.cpu() if isinstance(ranks, torch.Tensor) else torch.as_tensor(ranks)
        self._keep_partitions(RelabeledPartitions(remainder(n, n), ranks.long()))
        kw = {"device": device, "dtype": dtype}
        self.head_weight = nn.Parameter(torch.empty(head, head_width, **kw))
        self.head_projection = None if head_width == d else nn.Parameter(
            torch.empty(d, head_width, **kw))
        op = operation if isinstance(operation, Operation) else get_operation(operation)
        self.tail = CompositionalEmbeddingBag(
            n - head, tail_width, quotient_remainder(n - head, collisions), op, sparse=sparse,
            validate=False, **kw)  # fmt: skip
        self.tail_projection = None if tail_width == d else nn.Parameter(
            torch.empty(d, tail_width, **kw))
        self.reset_parameters()
        if device is not None:
            self.to(device)  # the ranks join the tables

    @property
    def num_rows(self) -> int:
        return self.head + self.tail.num_rows

    def reset_parameters(self) -> None:
        """Draw the head, the tail's tables and the projections (class docstring)."""
        lo, hi = md_table_bounds(self.init, self.num_categories, self.head_weight.shape[1])
        with torch.no_grad():
            self.head_weight.uniform_(lo, hi)
        self.tail.reset_parameters()
        for p in (self.head_projection, self.tail_projection):
            if p is not None:
                init_projection(p, self.init, self.embedding_dim)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's projected vector: (N,) int64 -> (N, D), no range check."""
        (rank,) = self.partitions.buckets(ids)
        in_head = rank < self.head
        at_head, at_tail = in_head.nonzero().squeeze(1), (~in_head).nonzero().squeeze(1)
        head = F.embedding(rank[at_head], self.head_weight, sparse=self.sparse)
        tail = self.tail.compose(rank[at_tail] - self.head)
        if self.head_projection is not None:
            head = head @ self.head_projection.t()
        if self.tail_projection is not None:
            tail = tail @ self.tail_projection.t()
        out = head.new_empty(ids.shape[0], self.embedding_dim)
        return out.index_copy(0, torch.cat([at_head, at_tail]), torch.cat([head, tail]))

    def extra_repr(self) -> str:
        return (f"{self.num_categories}, {self.embedding_dim}, head={self.head}, "
                f"head_width={self.head_weight.shape[1]}, tail={self.tail.partitions.sizes}, "
                f"tail_width={self.tail.embedding_dim}, operation={self.tail.operation!r}, "
                f"mode={self.mode!r}, init={self.init!r}")
