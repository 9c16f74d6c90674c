"""Operation-based compositional embeddings (paper section 4, eq. 6), feature generation, and
the hashing trick.

Letters: B bags, N ids in all, k partitions, D output width, n categories.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.base import BagModule, full_table_bound
from compemb.partitions import PartitionSet, remainder

OPERATIONS = ("concat", "add", "mult")


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


def init_bounds(operation: str, k: int, num_categories: int) -> list[tuple[float, float]]:
    """U(lo, hi) for each of k tables: :class:`CompositionalEmbeddingBag`'s rule.

    k = 1 gives the full table's U(-a, a), a = sqrt(1/n), for every operation.
    """
    a = full_table_bound(num_categories)
    if operation == "add":
        a = a / math.sqrt(k)
    return [(-a, a)] * k


def split_dims(embedding_dim: int, k: int, where: str) -> tuple[int, ...]:
    """Widths of k concatenated tables adding up to D: as equal as possible, wider ones first."""
    if embedding_dim < k:
        raise ValueError(
            f"{where}: concat of {k} tables needs embedding_dim >= {k}, got {embedding_dim}"
        )
    base, extra = divmod(embedding_dim, k)
    return tuple(base + (j < extra) for j in range(k))


class CompositionalEmbeddingBag(BagModule):
    """Operation-based compositional embedding over complementary partitions (eq. 6).

    Category i gets ``omega(W_1[p_1(i)], ..., W_k[p_k(i)])`` with omega one of ``concat``,
    ``add`` (element-wise sum) or ``mult`` (element-wise product). Each category's vector is
    composed first, then the bag is pooled (sum, mean or max); a per-sample weight multiplies
    its category's composed vector once.

    Initialization (n = num_categories, a = sqrt(1/n); the full table is U(-a, a), so each of its
    coordinates has mean 0 and variance a^2/3):

    - concat: every table U(-a, a); each coordinate is one table entry, as in the full table.
    - add: every table U(-a/sqrt(k), a/sqrt(k)); the k terms add up to the full table's variance.
    - mult: every table U(-a, a), zero mean, so the composed vectors start much smaller than the
      full table's (variance (a^2/3)^k) with independent signs for the categories that share a
      row. Chosen by measurement (``compemb experiment init``, docs/movielens/init): it beat
      both a first table at the full scale times U(1/2, 3/2) gates and zero-mean tables scaled
      so the product has the full table's variance, on MovieLens-100k and synthetic data. (The
      reference's all-positive U(sqrt(1/n), 1) was the worst of all.) A product of small
      zero-mean factors starts near a saddle: very short runs (tens of steps) may not leave it.

    Args:
        num_categories: n.
        embedding_dim: D, the width of the composed vector.
        partitions: a complementary :class:`~compemb.partitions.PartitionSet` over n.
        operation: ``"concat"``, ``"add"`` or ``"mult"``.
        mode: ``"sum"``, ``"mean"`` or ``"max"`` pooling over each bag.
        dims: concat only: the width of each table (adding up to D); default as equal as
            possible.
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
        operation: str = "mult",
        mode: str = "sum",
        *,
        dims: Sequence[int] | None = None,
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        _check_partitions(where, num_categories, partitions)
        if operation not in OPERATIONS:
            raise ValueError(f"{where}: operation must be one of {OPERATIONS}, got {operation!r}")
        if operation != "concat" and dims is not None:
            raise ValueError(f"{where}: dims only applies to concat; {operation} tables are D wide")
        k = partitions.k
        if operation == "concat":
            dims = split_dims(embedding_dim, k, where) if dims is None else tuple(dims)
            if len(dims) != k or sum(dims) != embedding_dim or min(dims) < 1:
                raise ValueError(
                    f"{where}: concat dims {dims} must be {k} positive widths adding up to "
                    f"embedding_dim={embedding_dim}"
                )
        else:
            dims = (embedding_dim,) * k
        if not partitions.is_complementary():
            warnings.warn(
                f"{where}: the partitions {partitions} are not complementary; some categories "
                f"share one vector",
                stacklevel=2,
            )
        self.partitions = partitions
        self.operation = operation
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
        bounds = init_bounds(self.operation, len(self.weights), self.num_categories)
        with torch.no_grad():
            for w, (lo, hi) in zip(self.weights, bounds, strict=True):
                w.uniform_(lo, hi)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """The composed vector of every id: (N,) int64 -> (N, D), no range check."""
        parts = [
            F.embedding(b, w, sparse=self.sparse)
            for b, w in zip(self.partitions.buckets(ids), self.weights, strict=True)
        ]
        if self.operation == "concat":
            return torch.cat(parts, dim=-1)
        out = parts[0]
        for p in parts[1:]:
            out = out + p if self.operation == "add" else out * p
        return out

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
        self.partitions = partitions
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
