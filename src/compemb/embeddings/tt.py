"""TT-Rec embeddings (Yin et al., MLSys 2021): the n x D table as a tensor train.

n is covered by a mixed radix n_1 * ... * n_K >= n (compemb's
:func:`~compemb.partitions.balanced_mixed_radix`, least significant digit first) and D is split
as d_1 * ... * d_K. Core k is a table of n_k rows, each row a (r_{k-1}, d_k, r_k) block
(r_0 = r_K = 1), so the cores are ordinary row tables (TorchRec and FBGEMM hold them as stock
tables). Category i with digits (i_1, ..., i_K) gets

    E[i] = G_1[i_1] G_2[i_2] ... G_K[i_K]        (a chain of small matrix products)

reshaped from (1, d_1, ..., d_K, 1) to (D,). No float touches an id: the digits are
:class:`~compemb.partitions.MixedRadixPartitions`' exact integer arithmetic.

Letters: B bags, N ids, K cores, n categories, D output width, r TT ranks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from compemb import _kernels
from compemb.embeddings._fused import compose_lookup
from compemb.embeddings.base import BagModule
from compemb.operations import get_operation
from compemb.optim.fused import gradient_sink
from compemb.partitions import MixedRadixPartitions, balanced_mixed_radix, mixed_radix

__all__ = ["TT_INITS", "GaussianInit", "TTEmbeddingBag", "balanced_factors", "tt_chain",
           "tt_init_std", "tt_lookup"]

TT_INITS = ("paper", "unit_norm")
_ONE = get_operation("add")  # one table: its rows as they are


def balanced_factors(embedding_dim: int, k: int) -> tuple[int, ...]:
    """D split into k integer factors (d_k = 1 allowed) for the K cores.

    The factor multiset is the most balanced one: sorted from largest down, the smallest in
    lexicographic order (so 16 -> 4, 2, 2 rather than 4, 4, 1; a prime D -> D, 1, 1). The
    largest factors go to the end cores and the smallest to the middle ones, whose rows hold
    r^2 d_k values: the arrangement with the fewest parameters.

    >>> balanced_factors(16, 3), balanced_factors(32, 3), balanced_factors(7, 3)
    ((4, 2, 2), (4, 2, 4), (7, 1, 1))
    """
    for value, what in ((embedding_dim, "embedding_dim"), (k, "k")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    divisors = [f for f in range(1, embedding_dim + 1) if embedding_dim % f == 0]
    best = min(tuple(sorted(c, reverse=True))
               for c in itertools.combinations_with_replacement(divisors, k)
               if math.prod(c) == embedding_dim)
    ends_inward = sorted(range(k), key=lambda j: min(j, k - 1 - j))  # 0, K-1, 1, K-2, ...
    dims = [0] * k
    for f, j in zip(best, ends_inward, strict=True):
        dims[j] = f
    return tuple(dims)


def _chain_bmm(rows: Sequence[torch.Tensor], dims: Sequence[int], ranks: Sequence[int]
               ) -> torch.Tensor:
    n = rows[0].shape[0]
    v = rows[0].reshape(n, dims[0], ranks[1])
    for g, d, r, s in zip(rows[1:], dims[1:], ranks[1:-1], ranks[2:], strict=True):
        # (N, P, r) @ (N, r, d s) -> (N, P d, s): the output's digits stay row-major
        v = torch.bmm(v, g.reshape(n, r, d * s))
        v = v.reshape(n, v.shape[1] * d, s)  # sizes spelled out: n may be 0 (no ids)
    return v.reshape(n, v.shape[1] * v.shape[2])


class _Chain(torch.autograd.Function):
    """The compiled chain (``csrc/tt_chain.c``) over gathered rows."""

    @staticmethod
    def forward(ctx, dims: tuple[int, ...], ranks: tuple[int, ...], *rows: torch.Tensor):
        ctx.dims, ctx.ranks = dims, ranks
        ctx.save_for_backward(*rows)
        return _kernels.tt_forward(dims, ranks, rows, [None] * len(rows), rows[0].shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows = ctx.saved_tensors
        outputs = [r.new_empty(r.shape) if ctx.needs_input_grad[2 + j] else None
                   for j, r in enumerate(rows)]  # fmt: skip
        _kernels.tt_backward(ctx.dims, ctx.ranks, rows, [None] * len(rows), grad, outputs,
                             [False] * len(rows))  # fmt: skip
        return (None, None, *outputs)


def tt_chain(rows: Sequence[torch.Tensor], dims: Sequence[int], ranks: Sequence[int]
             ) -> torch.Tensor:
    """The chained product of K core rows: rows[k] (N, r_k d_k r_{k+1}) -> (N, prod d_k).

    ``ranks`` are r_0 .. r_K with r_0 = r_K = 1. The compiled kernel runs where built
    (``csrc/tt_chain.c``), batched matmuls otherwise.
    """
    rows = [r.contiguous() for r in rows]
    if _kernels.tt_applies(rows, [None] * len(rows)):
        return _Chain.apply(tuple(dims), tuple(ranks), *rows)
    return _chain_bmm(rows, dims, ranks)


class _Lookup(torch.autograd.Function):
    """The compiled chain reading each core's rows from its table: no (N, w_j) gathered copy,
    and small tables' gradients added straight into a dense gradient."""

    @staticmethod
    def forward(ctx, dims: tuple[int, ...], ranks: tuple[int, ...], sparse: tuple[bool, ...],
                sinks: tuple, *tensors: torch.Tensor):
        k = len(dims)
        flat, tables = tensors[:k], tensors[k:]
        ctx.dims, ctx.ranks, ctx.sparse, ctx.sinks = dims, ranks, sparse, sinks
        ctx.save_for_backward(*flat, *tables)
        return _kernels.tt_forward(dims, ranks, tables, flat, flat[0].numel())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = len(ctx.dims)
        saved = ctx.saved_tensors
        flat, tables = saved[:k], saved[k:]
        need = [ctx.needs_input_grad[4 + k + j] for j in range(k)]
        n = flat[0].numel()
        outputs = [None if not need[j] else
                   (t.new_empty(n, t.shape[1]) if ctx.sparse[j] else torch.zeros_like(t))
                   for j, t in enumerate(tables)]  # fmt: skip
        _kernels.tt_backward(ctx.dims, ctx.ranks, tables, flat, grad, outputs,
                             [not s for s in ctx.sparse])  # fmt: skip
        grads: list[torch.Tensor | None] = []
        for j in range(k):
            sink = ctx.sinks[j]
            if not need[j] or not ctx.sparse[j]:
                grads.append(outputs[j])
            elif sink is not None:
                sink(flat[j], outputs[j])  # the optimizer updates these rows: no gradient
                grads.append(None)
            else:
                grads.append(torch.sparse_coo_tensor(flat[j].unsqueeze(0), outputs[j],
                                                     tables[j].shape, check_invariants=False))
        return (None, None, None, None, *([None] * k), *grads)


def tt_lookup(buckets: Sequence[torch.Tensor], tables: Sequence[torch.Tensor],
              sparse: Sequence[bool], dims: Sequence[int], ranks: Sequence[int]
              ) -> torch.Tensor:
    """The chain of each id's core rows ``tables[j][buckets[j]]``: K int64 tensors of N ids
    (any shape, flattened) -> (N, prod d_k).

    ``sparse[j]``: whether core j's gradient is sparse (or sent to a fused optimizer's sink,
    :func:`~compemb.optim.fused.gradient_sink`) rather than dense. The compiled kernel reads the
    rows where it is built (``csrc/tt_chain.c``); otherwise each core's rows are gathered and
    chained with batched matmuls.
    """
    flat = [b.reshape(-1) for b in buckets]
    if _kernels.tt_applies(tables, flat):
        sinks = tuple(gradient_sink(t) if s and torch.is_grad_enabled() and t.requires_grad
                      else None for t, s in zip(tables, sparse, strict=True))  # fmt: skip
        return _Lookup.apply(tuple(dims), tuple(ranks), tuple(sparse), sinks, *flat, *tables)
    rows = [compose_lookup(_ONE, [b], [t], [s]) for b, t, s in zip(flat, tables, sparse,
                                                                     strict=True)]
    return _chain_bmm(rows, dims, ranks)


def tt_init_std(num_categories: int, ranks: Sequence[int], embedding_dim: int,
                init: str = "paper") -> float:
    """The std sigma of the Gaussian every core starts from.

    A coordinate of the chain is a sum of R = r_1 ... r_{K-1} products of K independent
    zero-mean entries, so its variance is R sigma^(2K). ``paper``: the full table's variance
    a^2 / 3 (U(-a, a), a = sqrt(1/n)), TT-Rec's sampled-Gaussian rule; ``unit_norm``: 1/D,
    vectors of norm about 1. sigma = (target / R)^(1 / 2K).

    >>> round(tt_init_std(10_000, (1, 8, 8, 1), 16), 6)
    0.089698
    """
    if init not in TT_INITS:
        raise ValueError(f"init must be one of {TT_INITS}, got {init!r}")
    target = 1.0 / (3 * num_categories) if init == "paper" else 1.0 / embedding_dim
    k = len(ranks) - 1
    return (target / math.prod(ranks[1:-1])) ** (1.0 / (2 * k))


@dataclass(frozen=True)
class GaussianInit:
    """Fills a tensor in place from N(0, std^2): the shape of TorchRec's ``init_fn``
    (``EmbeddingBagConfig(init_fn=GaussianInit(s))``), picklable for torchrun's ranks."""

    std: float

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tensor.normal_(0.0, self.std)


class TTEmbeddingBag(BagModule):
    """A tensor-train (TT-Rec) embedding of one feature, an ``nn.EmbeddingBag`` drop-in.

    Each id's vector is the chain of its digits' core rows (:func:`tt_chain`), then the bag is
    pooled. A module, not a registered :class:`~compemb.operations.Operation`: an operation is
    a parameter-free object whose table widths follow from (D, k) and whose init is U(lo, hi)
    bounds, while the chain's widths r_{k-1} d_k r_k need the ranks and its init is Gaussian.

    Args:
        num_categories: n.
        embedding_dim: D = d_1 ... d_K.
        rank: the inner TT ranks r_1 .. r_{K-1}: one int for all, or K - 1 ints.
        num_cores: K >= 2 (3 in TT-Rec).
        row_factors: the radices n_1 .. n_K (least significant first; product >= n); default
            :func:`~compemb.partitions.balanced_mixed_radix`.
        dim_factors: d_1 .. d_K; default :func:`balanced_factors`.
        init: ``paper`` (the full table's variance) or ``unit_norm`` (:func:`tt_init_std`).

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> bag = TTEmbeddingBag(10_000, 16, rank=8)
    >>> bag.row_factors, bag.dims, bag.num_parameters
    ((21, 22, 22), (4, 2, 2), 3840)
    >>> bag(torch.tensor([[3, 9_999]])).shape
    torch.Size([1, 16])
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        rank: int | Sequence[int],
        mode: str = "sum",
        *,
        num_cores: int = 3,
        row_factors: Sequence[int] | None = None,
        dim_factors: Sequence[int] | None = None,
        init: str = "paper",
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        if isinstance(num_cores, bool) or not isinstance(num_cores, int) or num_cores < 2:
            raise ValueError(f"{where}: num_cores must be an int >= 2, got {num_cores!r}")
        k = num_cores
        inner = [rank] * (k - 1) if isinstance(rank, int) else list(rank)
        if len(inner) != k - 1 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1
                                      for r in inner):
            raise ValueError(f"{where}: rank must be an int >= 1 or {k - 1} ints >= 1, got "
                             f"{rank!r}")
        self.ranks = (1, *inner, 1)
        dims = balanced_factors(embedding_dim, k) if dim_factors is None else tuple(dim_factors)
        if len(dims) != k or min(dims) < 1 or math.prod(dims) != embedding_dim:
            raise ValueError(f"{where}: dim_factors must be {k} ints >= 1 with product "
                             f"embedding_dim={embedding_dim}, got {dim_factors!r}")
        self.dims = dims
        if row_factors is None:
            parts = balanced_mixed_radix(num_categories, k)
        elif len(row_factors) != k:
            raise ValueError(f"{where}: row_factors must be {k} radices, got {row_factors!r}")
        else:
            parts = mixed_radix(num_categories, row_factors)
        self.partitions: MixedRadixPartitions = parts
        self.row_factors = parts.radices
        if init not in TT_INITS:
            raise ValueError(f"{where}: init must be one of {TT_INITS}, got {init!r}")
        self.init = init
        self.sparse = sparse
        r = self.ranks
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(rows, r[j] * dims[j] * r[j + 1], device=device,
                                     dtype=dtype))
            for j, rows in enumerate(parts.sizes))
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return self.partitions.num_buckets

    @property
    def init_fn(self) -> GaussianInit:
        """The cores' init as a TorchRec ``init_fn``."""
        return GaussianInit(tt_init_std(self.num_categories, self.ranks, self.embedding_dim,
                                        self.init))

    def reset_parameters(self) -> None:
        """Draw every core from N(0, sigma^2) (:func:`tt_init_std`)."""
        init = self.init_fn
        for core in self.cores:
            init(core)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's chained vector: (N,) int64 -> (N, D), no range check."""
        return tt_lookup(self.partitions.buckets(ids), list(self.cores),
                         [self.sparse] * len(self.cores), self.dims, self.ranks)

    def extra_repr(self) -> str:
        return (f"{self.num_categories}, {self.embedding_dim}, row_factors={self.row_factors}, "
                f"dims={self.dims}, ranks={self.ranks}, mode={self.mode!r}, init={self.init!r}")
