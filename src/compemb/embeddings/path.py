"""Path-based compositional embeddings (paper section 4.1, eq. 7).

Letters: B bags, N ids in all, m buckets of a partition, D width, H hidden width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.base import BagModule, full_table_bound
from compemb.embeddings.operation import _check_partitions
from compemb.partitions import PartitionSet

TRANSFORMS = ("linear", "mlp")

# Up to this many buckets, every bucket's map is applied to every row and the own one picked:
# one dense matmul beats gathering an (N, out, in) weight per row.
_DENSE_MAX_BUCKETS = 8


class BucketedLinear(nn.Module):
    """One affine map per bucket: row r goes through ``A[b_r] z_r + c[b_r]``.

    Shapes: z (N, in), bucket (N,) int64 in [0, m) -> (N, out).
    """

    def __init__(self, num_buckets: int, in_features: int, out_features: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_buckets, out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_buckets, out_features, **kw))

    def forward(self, z: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        m, out, inp = self.weight.shape
        if m <= _DENSE_MAX_BUCKETS:
            every = (z @ self.weight.reshape(m * out, inp).T).view(-1, m, out)
            picked = every.gather(1, bucket.view(-1, 1, 1).expand(-1, 1, out)).squeeze(1)
        else:
            picked = torch.bmm(self.weight[bucket], z.unsqueeze(-1)).squeeze(-1)
        return picked + F.embedding(bucket, self.bias)


class PathEmbeddingBag(BagModule):
    """Path-based compositional embedding (eq. 7).

    Category i starts from row ``p_1(i)`` of one table ``W`` (the first partition's), then goes
    through one function per further partition, chosen by its bucket:
    ``x = M_{k, p_k(i)}( ... M_{2, p_2(i)}(W[p_1(i)]))``. Each function is ``linear``
    (``A z + c``) or an ``mlp`` with one hidden layer of ``hidden`` units and ReLU. Composed per
    category, then pooled over the bag.

    Initialization: ``W`` is U(-a, a) with a = sqrt(1/n), the full table's scale; the functions
    keep that scale. linear: ``A = I, c = 0``. mlp: the hidden layer He-uniform
    U(-sqrt(6/D), sqrt(6/D)), the output layer U(-sqrt(3/H), sqrt(3/H)), biases 0, so the
    output's second moment equals the input's in expectation.

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> from compemb.partitions import quotient_remainder
    >>> bag = PathEmbeddingBag(10_000, 16, quotient_remainder(10_000, 4), hidden=16)
    >>> bag(torch.tensor([[3]])).shape, bag.num_parameters
    (torch.Size([1, 16]), 42176)
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        partitions: PartitionSet,
        transform: str = "mlp",
        hidden: int = 64,
        mode: str = "sum",
        *,
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        _check_partitions(where, num_categories, partitions)
        if transform not in TRANSFORMS:
            raise ValueError(f"{where}: transform must be one of {TRANSFORMS}, got {transform!r}")
        if partitions.k < 2:
            raise ValueError(f"{where}: a path needs at least 2 partitions, got {partitions.k}")
        if transform == "mlp" and (isinstance(hidden, bool) or not isinstance(hidden, int)
                                   or hidden < 1):
            raise ValueError(f"{where}: hidden must be an int >= 1, got {hidden!r}")
        self.partitions = partitions
        self.transform = transform
        self.hidden = hidden if transform == "mlp" else None
        self.sparse = sparse
        kw = {"device": device, "dtype": dtype}
        d = embedding_dim
        self.weight = nn.Parameter(torch.empty(partitions.sizes[0], d, **kw))
        self.paths = nn.ModuleList()
        for m in partitions.sizes[1:]:
            if transform == "linear":
                self.paths.append(nn.ModuleList([BucketedLinear(m, d, d, **kw)]))
            else:
                self.paths.append(nn.ModuleList(
                    [BucketedLinear(m, d, hidden, **kw), BucketedLinear(m, hidden, d, **kw)]
                ))  # fmt: skip
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return self.partitions.num_buckets

    def reset_parameters(self) -> None:
        """Draw the parameters by the rule in the class docstring."""
        a = full_table_bound(self.num_categories)
        with torch.no_grad():
            self.weight.uniform_(-a, a)
            for layers in self.paths:
                for layer in layers:
                    layer.bias.zero_()
                    if self.transform == "linear":
                        eye = torch.eye(self.embedding_dim, dtype=layer.weight.dtype)
                        layer.weight.copy_(eye.expand_as(layer.weight))
                    else:
                        fan_in = layer.weight.shape[-1]
                        gain = 6.0 if layer is layers[0] else 3.0
                        bound = math.sqrt(gain / fan_in)
                        layer.weight.uniform_(-bound, bound)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """The composed vector of every id: (N,) int64 -> (N, D), no range check."""
        first, *rest = self.partitions.buckets(ids)
        z = F.embedding(first, self.weight, sparse=self.sparse)
        for bucket, layers in zip(rest, self.paths, strict=True):
            if self.transform == "linear":
                z = layers[0](z, bucket)
            else:
                z = layers[1](torch.relu(layers[0](z, bucket)), bucket)
        return z

    def extra_repr(self) -> str:
        return (
            f"{self.num_categories}, {self.embedding_dim}, sizes={self.partitions.sizes}, "
            f"transform={self.transform!r}, hidden={self.hidden}, mode={self.mode!r}"
        )
