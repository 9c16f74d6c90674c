"""Path-based compositional embeddings (paper section 4.1, eq. 7).

Letters: B bags, N ids in all, m buckets of a partition, D width, H hidden width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.base import BagModule, full_table_bound
from compemb.embeddings.operation import _check_partitions
from compemb.partitions import PartitionSet

__all__ = ["TRANSFORMS", "BucketedLinear", "PathEmbeddingBag", "apply_paths", "init_path_layer_"]

TRANSFORMS = ("linear", "mlp")


def init_path_layer_(weight: torch.Tensor, bias: torch.Tensor, transform: str, first: bool
                     ) -> None:
    """Draw one layer of per-bucket maps, weight (..., out, in) and bias (..., out), in place,
    so the path keeps its input's scale: linear ``A = I, c = 0``; mlp hidden layer
    U(-sqrt(6/in), sqrt(6/in)) (He), output layer U(-sqrt(3/in), sqrt(3/in)), biases 0; then the
    output's second moment equals the input's in expectation."""
    with torch.no_grad():
        bias.zero_()
        if transform == "linear":
            weight.copy_(torch.eye(weight.shape[-1], dtype=weight.dtype).expand_as(weight))
        else:
            bound = math.sqrt((6.0 if first else 3.0) / weight.shape[-1])
            weight.uniform_(-bound, bound)


def _apply_every(z: torch.Tensor, bucket: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """Each row through its own bucket's map by running all m: z (B, G, in) -> (B, G, out).
    Shapes stay static (for torch.export); costs m times the necessary multiply-adds."""
    every = torch.einsum("bgi,gmoi->bgmo", z, weight)
    out = weight.shape[2]
    picked = every.gather(2, bucket[..., None, None].expand(*bucket.shape, 1, out))
    flat = torch.arange(bias.shape[0], device=z.device) * bias.shape[1] + bucket
    return picked.squeeze(2) + F.embedding(flat, bias.reshape(-1, out))


def _apply_segments(z: torch.Tensor, bucket: torch.Tensor,
                    layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Rows sorted into one zero-padded segment per (feature, bucket), each segment through its
    maps by one batched matmul per layer: no wasted multiply-adds beyond the padding to the
    fullest segment."""
    b, g, d = z.shape
    m = layers[0][0].shape[1]
    key = (torch.arange(g, device=z.device) * m + bucket).reshape(-1)
    order = torch.argsort(key, stable=True)
    skey = key[order]
    counts = torch.bincount(skey, minlength=g * m)
    width = max(int(counts.max()), 1) if skey.numel() else 1
    # Each row's slot in the padded (G*m, width) layout, in the rows' own order.
    slot = torch.empty_like(order)
    ranks = torch.arange(skey.numel(), device=z.device) - (counts.cumsum(0) - counts)[skey]
    slot[order] = skey * width + ranks
    x = z.new_zeros(g * m * width, d).index_copy(0, slot, z.reshape(-1, d))
    x = x.view(g * m, width, d)
    for i, (weight, bias) in enumerate(layers):
        out, inp = weight.shape[2], weight.shape[3]
        x = torch.baddbmm(bias.reshape(g * m, 1, out), x,
                          weight.reshape(g * m, out, inp).transpose(1, 2))
        if i + 1 < len(layers):
            x = x.relu_()
    return x.reshape(-1, x.shape[-1]).index_select(0, slot).view(b, g, x.shape[-1])  # b may be 0


def apply_paths(z: torch.Tensor, bucket: torch.Tensor,
                layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-bucket maps of G features: every row through its own bucket's layers, with ReLU
    between layers.

    Shapes: z (B, G, D_in), bucket (B, G) int64 in [0, m), layers [(weight (G, m, out, in),
    bias (G, m, out))] -> (B, G, D_out). The one implementation of a path's functions, used by
    :class:`PathEmbeddingBag` (G = 1) and the stacked collection.
    """
    if not torch.compiler.is_compiling():
        return _apply_segments(z, bucket, layers)
    for i, (weight, bias) in enumerate(layers):
        z = _apply_every(z, bucket, weight, bias)
        if i + 1 < len(layers):
            z = torch.relu(z)
    return z


class BucketedLinear(nn.Module):
    """The parameters of one affine map per bucket, ``A[b] z + c[b]``: weight (m, out, in),
    bias (m, out). Applied by :func:`apply_paths`."""

    def __init__(self, num_buckets: int, in_features: int, out_features: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_buckets, out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_buckets, out_features, **kw))


class PathEmbeddingBag(BagModule):
    """Path-based compositional embedding (eq. 7).

    Category i starts from row ``p_1(i)`` of one table ``W`` (the first partition's), then goes
    through one function per further partition, chosen by its bucket:
    ``x = M_{k, p_k(i)}( ... M_{2, p_2(i)}(W[p_1(i)]))``. Each function is ``linear``
    (``A z + c``) or an ``mlp`` with one hidden layer of ``hidden`` units and ReLU. Composed per
    category, then pooled over the bag.

    Initialization: ``W`` is U(-a, a) with a = sqrt(1/n), the full table's scale; the functions
    keep that scale (:func:`init_path_layer_`).

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
        self._keep_partitions(partitions)
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
        self.reset_paths()

    def reset_paths(self) -> None:
        """Draw the per-bucket functions alone (a backend that holds the first table itself,
        such as the TorchRec collection, initializes that table)."""
        for layers in self.paths:
            for i, layer in enumerate(layers):
                init_path_layer_(layer.weight, layer.bias, self.transform, first=i == 0)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """The composed vector of every id: (N,) int64 -> (N, D), no range check."""
        first, *rest = self.partitions.buckets(ids)
        return self.transform_rows(F.embedding(first, self.weight, sparse=self.sparse), rest)

    def transform_rows(self, z: torch.Tensor, buckets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Looked-up first-table rows through the per-bucket functions of the further
        partitions: z (N, D), buckets k - 1 tensors (N,) -> (N, D). (A backend that looks up
        the first table itself, such as the TorchRec collection, composes with this.)"""
        z = z.unsqueeze(1)
        for bucket, layers in zip(buckets, self.paths, strict=True):
            params = [(layer.weight.unsqueeze(0), layer.bias.unsqueeze(0)) for layer in layers]
            z = apply_paths(z, bucket.unsqueeze(1), params)
        return z.squeeze(1)

    def extra_repr(self) -> str:
        return (
            f"{self.num_categories}, {self.embedding_dim}, sizes={self.partitions.sizes}, "
            f"transform={self.transform!r}, hidden={self.hidden}, mode={self.mode!r}"
        )
