"""Operation-based compositional embeddings (paper section 4, eq. 6), feature generation, and
the hashing trick.

Letters: B bags, N ids in all, k partitions, D output width, n categories.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.base import BagModule
from compemb.operations import (
    OPERATIONS,
    Operation,
    full_table_bound,
    get_operation,
)
from compemb.partitions import PartitionSet, remainder
from compemb.spec import compose_bounds

__all__ = ["OPERATIONS", "CompositionalEmbeddingBag", "FeatureEmbeddingBag", "HashEmbeddingBag"]


def _check_partitions(where: str, num_categories: int, partitions: PartitionSet) -> None:
    if not isinstance(partitions, PartitionSet):
        raise TypeError(
            f"{where}: partitions must be a compemb.partitions.PartitionSet (e.g. "
            f"quotient_remainder(n, 4)), got {type(partitions).__name__}"
        )
    if partitions.num_categories != num_categories:
        raise ValueError(
            f"{where}: partitions cover {partitions.num_categories} categories, the module "
            f"{num_categories}; build them with the same n"
        )


class CompositionalEmbeddingBag(BagModule):
    """Operation-based compositional embedding over complementary partitions (eq. 6).

    Category i gets ``omega(W_1[p_1(i)], ..., W_k[p_k(i)])`` with omega a registered
    :class:`~compemb.operations.Operation`: ``concat``, ``add`` (element-wise sum) or ``mult``
    (element-wise product). Each category's vector is composed first, then the bag is pooled
    (sum, mean or max); a per-sample weight multiplies its category's composed vector once.

    Initialization (n = num_categories, a = sqrt(1/n); the full table is U(-a, a)) follows the
    init rule ``init`` (:func:`compemb.operations.table_bounds`); the ``default`` rule is each
    operation's own: concat U(-a, a) per table; add U(-a/sqrt(k), a/sqrt(k)), so the k terms add
    up to the full table's variance; mult U(-a, a) per table, zero mean, chosen by measurement
    (``compemb experiment init``, docs/movielens/init; see :class:`~compemb.operations.Mult`).
    A product of small zero-mean factors starts near a saddle: very short runs (tens of steps)
    may not leave it.

    Args:
        num_categories: n.
        embedding_dim: D, the width of the composed vector.
        partitions: a complementary :class:`~compemb.partitions.PartitionSet` over n.
        operation: a registered operation's name (``"concat"``, ``"add"``, ``"mult"``) or an
            :class:`~compemb.operations.Operation`.
        mode: ``"sum"``, ``"mean"`` or ``"max"`` pooling over each bag.
        dims: the width of each table (the operation's own split by default: concat divides D
            as equally as possible, the others use D for every table).
        init: the init rule's name (:data:`compemb.operations.INIT_RULES`).
        sparse: sparse gradients for the tables (``torch.optim.Adagrad``/``SGD`` take them).
        validate: check ids and offsets on every call (off for speed once inputs are trusted).

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> from compemb.partitions import quotient_remainder
    >>> bag = CompositionalEmbeddingBag(10_000, 16, quotient_remainder(10_000, 4))
    >>> bag(torch.tensor([[3, 9_999]])).shape, bag.num_parameters
    (torch.Size([1, 16]), 40064)
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        partitions: PartitionSet,
        operation: str | Operation = "mult",
        mode: str = "sum",
        *,
        dims: Sequence[int] | None = None,
        init: str = "default",
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        _check_partitions(where, num_categories, partitions)
        op = operation if isinstance(operation, Operation) else get_operation(operation)
        k = partitions.k
        default = op.table_widths(embedding_dim, k, where)
        dims = default if dims is None else tuple(dims)
        if len(dims) != k or min(dims) < 1 or not op.accepts_widths(dims, embedding_dim):
            raise ValueError(
                f"{where}: dims {dims} must be {k} positive widths that {op.name} makes "
                f"embedding_dim={embedding_dim} from (default {default})"
            )
        compose_bounds(op, partitions, num_categories, init, embedding_dim)  # unknown rule fails
        if not partitions.is_complementary():
            warnings.warn(
                f"{where}: the partitions {partitions} are not complementary; some categories "
                f"share one vector",
                stacklevel=2,
            )
        self._keep_partitions(partitions)
        self.op = op
        self.init = init
        self.dims = tuple(dims)
        self.sparse = sparse
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, width, device=device, dtype=dtype))
            for rows, width in zip(partitions.sizes, self.dims, strict=True)
        )
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return self.partitions.num_buckets

    def reset_parameters(self) -> None:
        """Draw the tables by the rule in the class docstring."""
        bounds = compose_bounds(self.op, self.partitions, self.num_categories, self.init,
                                self.embedding_dim)
        with torch.no_grad():
            for w, (lo, hi) in zip(self.weights, bounds, strict=True):
                w.uniform_(lo, hi)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """The composed vector of every id: (N,) int64 -> (N, D), no range check."""
        parts = [
            F.embedding(b, w, sparse=self.sparse)
            for b, w in zip(self.partitions.buckets(ids), self.weights, strict=True)
        ]
        return self.op.combine(parts)

    @property
    def operation(self) -> str:
        """The operation's registry name."""
        return self.op.name

    def extra_repr(self) -> str:
        return (
            f"{self.num_categories}, {self.embedding_dim}, sizes={self.partitions.sizes}, "
            f"operation={self.operation!r}, mode={self.mode!r}"
        )


class HashEmbeddingBag(BagModule):
    """The hashing trick (Algorithm 1): category i uses row ``i mod num_buckets`` of one table.

    Initialized U(-a, a) with a = sqrt(1/n), the full table's scale. Shapes as
    ``nn.EmbeddingBag``: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> HashEmbeddingBag(10_000, 16, num_buckets=2_500)(torch.tensor([[7]])).shape
    torch.Size([1, 16])
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        num_buckets: int,
        mode: str = "sum",
        *,
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        self.partitions = remainder(num_categories, num_buckets)
        self.sparse = sparse
        rows = self.partitions.sizes[0]
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        a = full_table_bound(self.num_categories)
        with torch.no_grad():
            self.weight.uniform_(-a, a)

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed bags: input (B, L) or (N,) with offsets -> (B, D)."""
        bags = self._bags(input, offsets, per_sample_weights)
        # One table: pooling the hashed rows directly is the same as composing then pooling.
        (rows,) = self.partitions.buckets(bags.ids)
        if bags.length is not None:
            rows = rows.view(bags.batch, bags.length)
        return F.embedding_bag(
            rows, self.weight, bags.offsets, mode=self.mode, sparse=self.sparse,
            per_sample_weights=per_sample_weights, include_last_offset=self.include_last_offset,
        )  # fmt: skip


class FeatureEmbeddingBag(BagModule):
    """Feature generation (section 4): the k partition embeddings as k separate features.

    No operation combines them; a model treats them as k sparse features of width D. Each
    table is pooled over the bag on its own. Every table starts U(-a, a), a = sqrt(1/n).

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, k, D).
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        partitions: PartitionSet,
        mode: str = "sum",
        *,
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        _check_partitions(self._where(), num_categories, partitions)
        self._keep_partitions(partitions)
        self.sparse = sparse
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, embedding_dim, device=device, dtype=dtype))
            for rows in partitions.sizes
        )
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        """k: how many features each input feature becomes."""
        return len(self.weights)

    @property
    def num_rows(self) -> int:
        return self.partitions.num_buckets

    def reset_parameters(self) -> None:
        a = full_table_bound(self.num_categories)
        with torch.no_grad():
            for w in self.weights:
                w.uniform_(-a, a)

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed bags: input (B, L) or (N,) with offsets -> (B, k, D)."""
        bags = self._bags(input, offsets, per_sample_weights)
        outs = []
        for b, w in zip(self.partitions.buckets(bags.ids), self.weights, strict=True):
            if bags.length is not None:
                b = b.view(bags.batch, bags.length)
            outs.append(
                F.embedding_bag(
                    b, w, bags.offsets, mode=self.mode, sparse=self.sparse,
                    per_sample_weights=per_sample_weights,
                    include_last_offset=self.include_last_offset,
                )  # fmt: skip
            )
        return torch.stack(outs, dim=1)
