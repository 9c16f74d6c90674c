"""Mixed-dimension embeddings (Ginart et al., 2019; the reference repository's ``--md-flag``).

A feature of n categories gets a table of width w <= D and a bias-free projection w -> D, so
rarer-per-row features spend fewer parameters. Widths come from the *alpha power rule*:

    x_i = n_i / f_i                  (f_i: the feature's mean queries per sample, default 1)
    w_i = max(1, round(lam * x_i ** -alpha))

with lam fixed either by a base width d0 given to the feature of fewest categories
(lam = d0 * x_0 ** alpha, and that feature gets d0 itself) or by a parameter budget B
(lam = B / sum_i x_i ** (1 - alpha), so sum_i n_i w_i is about B before rounding).
Rounding is half to even (as torch.round). Optionally each width is then rounded to the power
of 2 nearest in log scale, and up to a multiple of ``multiple_of``: FBGEMM's kernels shard only
tables whose width is a multiple of 4, so ``multiple_of=4`` keeps a 10 M-row MD table
row-wise shardable at a counted cost (:func:`md_parameters`).

Letters: B bags, N ids, n categories, w table width, D output width, F features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings.base import BagModule
from compemb.operations import full_table_bound
from compemb.partitions import RelabeledPartitions, _iroot_ceil, frequency_rank, remainder

__all__ = [
    "INITS",
    "BlockMixedDimEmbeddingBag",
    "MixedDimEmbeddingBag",
    "block_widths",
    "frequency_blocks",
    "init_bias",
    "init_projection",
    "projection_rule",
    "md_base_width_for_budget",
    "md_parameters",
    "md_table_bounds",
    "md_widths",
    "projection_pays",
    "size_block_widths",
]

INITS = ("reference", "xavier", "unit_norm", "ldim")


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def _round_pow2(width: int) -> int:
    """The power of 2 nearest ``width`` in log scale, exactly: 2^(m+1) when width > 2^m * sqrt 2,
    i.e. width^2 > 2^(2m+1) (no integer sits on the tie)."""
    m = width.bit_length() - 1
    return 2 ** (m + 1) if width * width > 2 ** (2 * m + 1) else 2**m


def _finish(width: int, round_pow2: bool, multiple_of: int) -> int:
    if round_pow2:
        width = _round_pow2(width)
    return -(-width // multiple_of) * multiple_of


def md_widths(
    cardinalities: Sequence[int],
    alpha: float,
    *,
    base_width: int | None = None,
    budget: float | None = None,
    frequencies: Sequence[float] | None = None,
    round_pow2: bool = False,
    multiple_of: int = 1,
) -> list[int]:
    """Each feature's table width by the alpha power rule (module docstring).

    Equals the reference's ``md_solver(n, alpha, d0=base_width, B=budget, round_dim=round_pow2,
    k=frequencies)`` (with ``multiple_of=1``). Ties in cardinality keep the input order (the
    first of the smallest features sets lam in base-width mode).

    Args:
        cardinalities: (F,) categories per feature.
        alpha: >= 0; 0 gives every feature the same width.
        base_width: d0, the width of the feature of fewest categories; or
        budget: B, the target sum of n_i w_i (give exactly one of the two).
        frequencies: (F,) mean queries per sample of each feature (> 0), default all 1.
        round_pow2: round each width to the power of 2 nearest in log scale.
        multiple_of: round each width up to a multiple of this (after ``round_pow2``).

    >>> md_widths([10, 1000, 100_000], 0.5, base_width=16)
    [16, 2, 1]
    >>> md_widths([10, 1000, 100_000], 0.5, base_width=16, multiple_of=4)
    [16, 4, 4]
    """
    ns = [_positive_int(n, f"cardinalities[{i}]") for i, n in enumerate(cardinalities)]
    if not ns:
        raise ValueError("cardinalities must not be empty")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    if (base_width is None) == (budget is None):
        raise ValueError(f"give base_width or budget, exactly one (base_width={base_width!r}, "
                         f"budget={budget!r})")
    multiple_of = _positive_int(multiple_of, "multiple_of")
    fs = [1.0] * len(ns) if frequencies is None else [float(f) for f in frequencies]
    if len(fs) != len(ns) or not all(f > 0 for f in fs):
        raise ValueError(f"frequencies must be {len(ns)} numbers > 0, got {frequencies!r}")
    x = [n / f for n, f in zip(ns, fs, strict=True)]
    first = min(range(len(ns)), key=lambda i: ns[i])
    if base_width is not None:
        d0 = _positive_int(base_width, "base_width")
        lam = d0 * x[first] ** alpha
    else:
        if not isinstance(budget, (int, float)) or not budget > 0:
            raise ValueError(f"budget must be a number > 0, got {budget!r}")
        lam = budget / sum(v ** (1 - alpha) for v in x)
    widths = [max(1, round(lam * v**-alpha)) for v in x]
    if base_width is not None:
        widths[first] = d0
    return [_finish(w, round_pow2, multiple_of) for w in widths]


def md_parameters(cardinalities: Sequence[int], widths: Sequence[int], embedding_dim: int
                  ) -> int:
    """Parameters of mixed-dimension tables: sum of n_i w_i, plus w_i D for each projection
    (none where w_i == D).

    >>> md_parameters([10, 1000], [16, 2], 16)
    2192
    """
    if len(widths) != len(cardinalities):
        raise ValueError(f"{len(widths)} widths for {len(cardinalities)} cardinalities")
    bad = [w for w in widths if not 1 <= w <= embedding_dim]
    if bad:
        raise ValueError(f"widths must be in [1, embedding_dim={embedding_dim}], got {bad}")
    return sum(n * w + (w * embedding_dim if w != embedding_dim else 0)
               for n, w in zip(cardinalities, widths, strict=True))


def md_base_width_for_budget(
    cardinalities: Sequence[int],
    alpha: float,
    embedding_dim: int,
    budget: int,
    *,
    frequencies: Sequence[float] | None = None,
    round_pow2: bool = False,
    multiple_of: int = 1,
) -> int:
    """The largest base width d0 <= D whose tables and projections (:func:`md_parameters`)
    fit ``budget``: the exact-count counterpart of ``md_widths(budget=...)``, whose lam only
    aims at sum n_i w_i. A width above D (possible with ``frequencies``) is counted as D: pass
    ``min(w, D)`` to the modules.

    Raises:
        ValueError: if even d0 = 1 exceeds the budget.

    >>> md_base_width_for_budget([10, 1000, 100_000], 0.5, 16, 250_000)
    16
    >>> md_base_width_for_budget([10, 1000, 100_000], 0.0, 16, 250_000)
    2
    """
    embedding_dim = _positive_int(embedding_dim, "embedding_dim")

    def size(d0: int) -> int:
        widths = md_widths(cardinalities, alpha, base_width=d0, frequencies=frequencies,
                           round_pow2=round_pow2, multiple_of=multiple_of)
        return md_parameters(cardinalities, [min(w, embedding_dim) for w in widths],
                             embedding_dim)

    fits = [d0 for d0 in range(1, embedding_dim + 1) if size(d0) <= budget]
    if not fits:
        raise ValueError(f"budget {budget:,} is below the smallest mixed-dimension layout of "
                         f"these features ({size(1):,} parameters at base width 1)")
    return fits[-1]


def md_table_bounds(init: str, num_categories: int, width: int) -> tuple[float, float]:
    """U(-b, b) of an (n, w) mixed-dimension table under rule ``init`` (class docstring of
    :class:`MixedDimEmbeddingBag`): the full table's a = sqrt(1/n) (``reference``), Xavier's
    sqrt(6 / (n + w)) (``xavier``), sqrt(3/w) (``unit_norm``) or 1/sqrt(w) (``ldim``)."""
    if init == "reference":  # the DLRM script: the full table's U(-a, a)
        b = full_table_bound(num_categories)
    elif init == "xavier":  # PrEmbeddingBag's own constructor
        b = math.sqrt(6.0 / (num_categories + width))
    elif init == "unit_norm":  # rows of norm about 1
        b = math.sqrt(3.0 / width)
    else:  # ldim: the CCE authors' LowDimensionalEmbedding
        b = 1.0 / math.sqrt(width)
    return -b, b


def projection_rule(init: str) -> str:
    """The name of the projection's draw under rule ``init``, as plans record it."""
    return {"reference": "xavier_uniform", "xavier": "xavier_uniform"}.get(init, init)


def init_projection(projection: torch.Tensor, init: str, embedding_dim: int) -> None:
    """Draw a (D, w) projection in place: Xavier uniform; U(-b, b), b = sqrt(3/D), that keeps
    the expected norm (``unit_norm``); or U(-b, b), b = sqrt(w/D) (``ldim``, the CCE authors'
    ``LowDimensionalEmbedding``)."""
    with torch.no_grad():
        if init == "unit_norm":
            b = math.sqrt(3.0 / embedding_dim)
            projection.uniform_(-b, b)
        elif init == "ldim":
            b = math.sqrt(projection.shape[1] / embedding_dim)
            projection.uniform_(-b, b)
        else:
            nn.init.xavier_uniform_(projection)


def init_bias(bias: torch.Tensor, width: int) -> None:
    """Draw a projection's (D,) bias in place: U(-b, b), b = 1/sqrt(w), ``nn.Linear``'s own
    draw for a layer of w inputs (what the CCE authors' ``LowDimensionalEmbedding`` keeps),
    whatever the init rule."""
    with torch.no_grad():
        b = 1.0 / math.sqrt(width)
        bias.uniform_(-b, b)


def _init_table(weight: torch.Tensor, projection: torch.Tensor | None, init: str,
                num_categories: int, embedding_dim: int) -> None:
    """Draw one table (n, w) and its projection (D, w) in place by rule ``init``."""
    lo, hi = md_table_bounds(init, num_categories, weight.shape[1])
    with torch.no_grad():
        weight.uniform_(lo, hi)
    if projection is not None:
        init_projection(projection, init, embedding_dim)


def _check_init(init: str, where: str) -> str:
    if init not in INITS:
        raise ValueError(f"{where}: init must be one of {INITS}, got {init!r}")
    return init


class MixedDimEmbeddingBag(BagModule):
    """One feature's mixed-dimension embedding: a table (n, w), then a bias-free projection
    ``P`` (D, w), so category i gets ``P @ T[i]`` (just ``T[i]`` when w == D); with ``bias``,
    ``P @ T[i] + b`` (b (D,); none when w == D).

    Pooling is linear in the vectors, so sum and mean pool the table rows first and project
    once per bag; max projects every id first, and so does a bias (a bag of L ids holds L
    times b under sum pooling, its weights' sum times b with per-sample weights).

    Init (``init``): ``reference`` (default) is what the reference DLRM trains with: the table
    at the full table's U(-a, a), a = sqrt(1/n), the projection Xavier uniform (its module's
    own constructor draws the table Xavier uniform too: ``xavier``); ``unit_norm`` gives rows
    of norm about 1 (U(-c, c), c = sqrt(3/w)) and a projection U(-b, b), b = sqrt(3/D), that
    keeps the expected norm; ``ldim`` is the CCE authors' ``LowDimensionalEmbedding``
    (github.com/thomasahle/cce): the table U(-1/sqrt(w), 1/sqrt(w)), the projection
    U(-sqrt(w/D), sqrt(w/D)). The bias is always ``nn.Linear``'s U(-1/sqrt(w), 1/sqrt(w)).

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> bag = MixedDimEmbeddingBag(1000, 16, width=4)
    >>> bag(torch.tensor([[3, 999]])).shape, bag.num_parameters
    (torch.Size([1, 16]), 4064)
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        width: int,
        mode: str = "sum",
        *,
        init: str = "reference",
        bias: bool = False,
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= \
                embedding_dim:
            raise ValueError(f"{where}: width must be an int in [1, embedding_dim="
                             f"{embedding_dim}], got {width!r}")
        self.width = width
        self.init = _check_init(init, where)
        self.sparse = sparse
        self.weight = nn.Parameter(torch.empty(num_categories, width, device=device,
                                               dtype=dtype))
        self.projection = None if width == embedding_dim else nn.Parameter(
            torch.empty(embedding_dim, width, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(embedding_dim, device=device, dtype=dtype)) \
            if bias and self.projection is not None else None
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return self.num_categories

    def reset_parameters(self) -> None:
        """Draw the table, projection and bias by rule ``init`` (class docstring)."""
        _init_table(self.weight, self.projection, self.init, self.num_categories,
                    self.embedding_dim)
        if self.bias is not None:
            init_bias(self.bias, self.width)

    def _project(self, values: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return values
        if self.bias is None:
            return values @ self.projection.t()
        return torch.addmm(self.bias, values, self.projection.t())

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's projected vector: (N,) int64 -> (N, D), no range check."""
        return self._project(F.embedding(ids, self.weight, sparse=self.sparse))

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed bags: input (B, L) or (N,) with offsets -> (B, D)."""
        if self.mode == "max" or self.bias is not None:
            return super().forward(input, offsets, per_sample_weights)
        bags = self._bags(input, offsets, per_sample_weights)
        ids = bags.ids if bags.length is None else bags.ids.view(bags.batch, bags.length)
        pooled = F.embedding_bag(
            ids, self.weight, bags.offsets, mode=self.mode, sparse=self.sparse,
            per_sample_weights=per_sample_weights, include_last_offset=self.include_last_offset,
        )  # fmt: skip
        return self._project(pooled)

    def extra_repr(self) -> str:
        return (f"{self.num_categories}, {self.embedding_dim}, width={self.width}, "
                f"mode={self.mode!r}, init={self.init!r}, bias={self.bias is not None}")


def frequency_blocks(num_categories: int, num_blocks: int) -> tuple[int, ...]:
    """Block starts over frequency ranks: 0 = s_0 < s_1 < ... < s_K = n, s_b = ceil(n^(b/K))
    in exact integer arithmetic, so block sizes grow geometrically (a small head of the most
    frequent categories, a long tail). Starts that coincide for small n are merged.

    >>> frequency_blocks(1000, 4)
    (0, 6, 32, 178, 1000)
    """
    n = _positive_int(num_categories, "num_categories")
    k = _positive_int(num_blocks, "num_blocks")
    inner = sorted({_iroot_ceil(n**b, k) for b in range(1, k)} - {n})
    return (0, *inner, n)


def block_widths(counts: np.ndarray, starts: Sequence[int], embedding_dim: int, alpha: float,
                 multiple_of: int = 1) -> list[int]:
    """Widths of frequency-ranked blocks by the alpha power rule on their mean count m_b (the
    rule of :func:`md_widths` with x_b = size_b / count_b and the head block at width D):
    w_b = max(1, round(D * (m_b / m_0) ** alpha)), then up to a multiple of ``multiple_of``
    (at most D). A block never seen gets width 1 (D when alpha = 0).

    Args:
        counts: (n,) counts sorted from most to least frequent.

    >>> block_widths(np.array([40, 40, 10, 10, 0, 0]), (0, 2, 4, 6), 16, 0.5)
    [16, 8, 1]
    """
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    means = [float(counts[a:b].sum()) / (b - a) for a, b in zip(starts[:-1], starts[1:],
                                                                  strict=True)]
    if means[0] <= 0:
        raise ValueError("counts are all zero: no block is more frequent than another")
    widths = []
    for m in means:
        ratio = (m / means[0]) ** alpha if m > 0 else float(alpha == 0)
        widths.append(min(embedding_dim, _finish(max(1, round(embedding_dim * ratio)), False,
                                                 _positive_int(multiple_of, "multiple_of"))))
    return widths


def projection_pays(rows: int, width: int, embedding_dim: int) -> bool:
    """Whether storing ``rows`` rows at ``width`` < D plus a (D, width) projection holds fewer
    parameters than the rows at D: rows * w + D * w < rows * D. A block where it does not is
    kept at D, which also makes a layout's size grow with its widths (``fit_budget`` searches
    a monotone size).

    >>> projection_pays(7, 8, 16), projection_pays(100, 8, 16)
    (False, True)
    """
    return width < embedding_dim and rows * width + embedding_dim * width < rows * embedding_dim


def size_block_widths(starts: Sequence[int], embedding_dim: int, alpha: float,
                      base_width: int | None = None, multiple_of: int = 1) -> list[int]:
    """Widths of frequency-ranked blocks by the alpha power rule on their sizes alone: the head
    block (the most frequent) gets d0 = ``base_width`` (default D), block b
    w_b = max(1, round(d0 * (size_0 / size_b) ** alpha)), then up to a multiple of
    ``multiple_of``, at most D, and D wherever its projection would not pay
    (:func:`projection_pays`).

    This is the rule of :func:`md_widths` with every block given the same query mass, which
    is what geometric blocks (:func:`frequency_blocks`) carry under a Zipf law of exponent 1
    (the ranks in [a, b) draw about ln(b / a) of the queries). It needs no counts, so a layout
    is sized (and fitted to a budget) before the training split is read; the counts only
    decide which category sits in which block.

    >>> size_block_widths(frequency_blocks(1682, 4), 16, 0.3)  # sizes 7, 35, 221, 1419
    [16, 10, 6, 3]
    """
    d = _positive_int(embedding_dim, "embedding_dim")
    d0 = d if base_width is None else min(_positive_int(base_width, "base_width"), d)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    sizes = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"starts must rise strictly from 0, got {tuple(starts)}")
    widths = []
    for j, size in enumerate(sizes):
        w = d0 if j == 0 else max(1, round(d0 * (sizes[0] / size) ** alpha))
        w = min(d, _finish(w, False, _positive_int(multiple_of, "multiple_of")))
        widths.append(w if projection_pays(size, w, d) else d)
    return widths


class BlockMixedDimEmbeddingBag(BagModule):
    """Mixed dimensions inside one feature: categories ranked by frequency, cut into blocks of
    ranks [s_b, s_(b+1)), block b a table (size_b, w_b) with its own projection (D, w_b) (none
    where w_b == D), so category i of rank r in block b gets ``P_b @ T_b[r - s_b]``.

    :meth:`from_counts` ranks by training counts, cuts geometric blocks
    (:func:`frequency_blocks`) and sets the widths by the alpha power rule on the blocks' mean
    counts (:func:`block_widths`); the ``md_block`` scheme uses the same blocks with widths
    from their sizes (:func:`size_block_widths`) and the ranks of ``order: frequency``.

    The rank of every category is the buffer ``relabel`` ((n,) int64, saved with the module,
    as every frequency-renumbered module keeps it); ``ranks`` reads it. Init as
    :class:`MixedDimEmbeddingBag`, per block.

    Args:
        ranks: (n,) the rank of each category, a permutation of [0, n) (0: the most frequent).
        starts: (K + 1,) block starts over the ranks, 0 first and n last.
        widths: (K,) each block's width, in [1, D].

    Shapes: input (B, L) or (N,) with offsets (B,); output (B, D).

    >>> counts = 10_000 // np.arange(1, 1001)  # Zipf-like
    >>> bag = BlockMixedDimEmbeddingBag.from_counts(1000, 16, counts, alpha=0.5, num_blocks=4)
    >>> bag.widths, bag.num_parameters
    ((16, 6, 3, 1), 1672)
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        ranks: np.ndarray | torch.Tensor,
        starts: Sequence[int],
        widths: Sequence[int],
        mode: str = "sum",
        *,
        init: str = "reference",
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        where = self._where()
        starts = tuple(int(s) for s in starts)
        if starts[0] != 0 or starts[-1] != num_categories or any(
                a >= b for a, b in zip(starts[:-1], starts[1:], strict=False)):
            raise ValueError(f"{where}: starts must rise strictly from 0 to {num_categories}, "
                             f"got {starts}")
        if len(widths) != len(starts) - 1 or not all(
                isinstance(w, int) and 1 <= w <= embedding_dim for w in widths):
            raise ValueError(f"{where}: widths must be {len(starts) - 1} ints in [1, "
                             f"embedding_dim={embedding_dim}], got {tuple(widths)}")
        self.widths = tuple(widths)
        self.init = _check_init(init, where)
        self.sparse = sparse
        # ranks are a relabelling of the identity partition; RelabeledPartitions checks that
        # they are a permutation
        ranks = ranks.cpu() if isinstance(ranks, torch.Tensor) else torch.as_tensor(ranks)
        self._keep_partitions(RelabeledPartitions(remainder(num_categories, num_categories),
                                                  ranks.long()))
        self.register_buffer("starts", torch.tensor(starts), persistent=False)
        kw = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(b - a, w, **kw))
            for a, b, w in zip(starts[:-1], starts[1:], self.widths, strict=True))
        self.projections = nn.ParameterDict({
            str(j): nn.Parameter(torch.empty(embedding_dim, w, **kw))
            for j, w in enumerate(self.widths) if w != embedding_dim})
        self.reset_parameters()
        if device is not None:
            self.to(device)  # the id maps and block starts join the tables

    @classmethod
    def from_counts(
        cls,
        num_categories: int,
        embedding_dim: int,
        counts: np.ndarray | Sequence[int],
        mode: str = "sum",
        *,
        alpha: float,
        num_blocks: int = 4,
        multiple_of: int = 1,
        **kwargs: Any,
    ) -> BlockMixedDimEmbeddingBag:
        """Ranks by ``counts`` (ties by id), geometric blocks, widths by the alpha rule on the
        blocks' mean counts with the head block at D; ``kwargs`` as the constructor's."""
        counts = np.asarray(counts)
        if counts.shape != (num_categories,) or (counts < 0).any():
            raise ValueError(f"BlockMixedDimEmbeddingBag(num_categories={num_categories}): "
                             f"counts must be ({num_categories},) non-negative, got shape "
                             f"{counts.shape}")
        ranks = frequency_rank(counts)
        by_count = np.empty_like(counts)
        by_count[ranks] = counts  # counts from the most frequent category down
        starts = frequency_blocks(num_categories, num_blocks)
        widths = block_widths(by_count, starts, embedding_dim, alpha, multiple_of)
        return cls(num_categories, embedding_dim, ranks, starts, widths, mode, **kwargs)

    @property
    def ranks(self) -> torch.Tensor:
        """(n,) the rank of each category (the ``relabel`` buffer)."""
        return self.relabel

    @property
    def num_rows(self) -> int:
        return self.num_categories

    def reset_parameters(self) -> None:
        for j, w in enumerate(self.weights):
            _init_table(w, self.projections.get(str(j)), self.init, self.num_categories,
                        self.embedding_dim)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's projected vector: (N,) int64 -> (N, D), no range check."""
        (rank,) = self.partitions.buckets(ids)
        block = torch.bucketize(rank, self.starts[1:-1], right=True)
        where, values = [], []
        for j, w in enumerate(self.weights):
            at = (block == j).nonzero().squeeze(1)
            v = F.embedding(rank[at] - self.starts[j], w, sparse=self.sparse)
            p = self.projections.get(str(j))
            where.append(at)
            values.append(v if p is None else v @ p.t())
        out = values[0].new_empty(ids.shape[0], self.embedding_dim)
        return out.index_copy(0, torch.cat(where), torch.cat(values))

    def extra_repr(self) -> str:
        return (f"{self.num_categories}, {self.embedding_dim}, widths={self.widths}, "
                f"mode={self.mode!r}, init={self.init!r}")
