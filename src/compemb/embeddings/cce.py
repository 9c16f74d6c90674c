"""CCE (Tsang and Ahle, "Clustering the Sketch: Dynamic Compression for Embedding Tables",
NeurIPS 2023): clustered compositional embeddings.

An id's D-wide vector is c chunks of width W = D / c. Chunk i of id x is

    T_i[a_i(x)] + H_i[h_i(x)]

with T_i and H_i tables of R rows each, ``a_i`` a learned id-to-row assignment (it starts as a
seeded hash) and ``h_i`` a seeded hash (``compemb.embeddings._universal``). Both tables of a
chunk are one table of 2R rows (T_i the first R, H_i the last R), so a TorchRec table-wise
plan puts a whole chunk on one rank.

On the run's schedule (the authors': at epoch ends up to 75 % of the run;
:func:`compemb.training.recluster.recluster_steps`) :meth:`CCEEmbeddingBag.recluster` runs
k-means with k = R over each chunk's current vectors of the ids seen in training, points every
seen id's ``a_i`` at its nearest centroid and makes T_i the centroids: ids whose vectors agree
come to share a row. As the authors' ``CCEmbedding.cluster`` (github.com/thomasahle/cce,
``cce/cce.py``) it then draws a new hash ``h_i`` and sets each row of H_i to the mean residual
(vector before, minus its new centroid) of the ids hashed to it, so the vectors change little.
Where this differs from that code, and why:

- Only ids seen in training are clustered and reassigned (the code clusters every id of the
  vocabulary): an unseen id's vector is its untrained init, which would pull centroids, and
  assigning every id costs n R W per chunk. An unseen id keeps its row index (its first hash),
  so its vector stays defined: a centroid plus a residual row.
- k-means is Lloyd's (the code uses faiss's): at most ``kmeans_iters`` rounds (the code:
  100), stopping early once no label changes (a further round would change nothing), on a
  seeded sample of at most ``kmeans_samples`` points per centroid (the code: 200; faiss keeps
  256). A centroid left without points keeps its place. Two paths by R
  (:mod:`compemb.embeddings.kmeans`):

  - R <= ``kmeans_exact_rows`` (4,096), exact, in torch: greedy k-means++ (over at most 8R of
    the points) rather than faiss's uniform sample of points: ids that share both rows have
    equal vectors, so a uniform sample often starts two centroids on one point, and faiss's
    repair (splitting a large cluster) is not reproduced here. Cost per chunk: about
    ``kmeans_iters`` x ``kmeans_samples`` x R^2 distances, plus R per seen id.
  - Larger R (a 10x CCE on Criteo Kaggle has R = 280,696: greedy k-means++ alone would be
    280 k sequential steps), every nearest centroid still exact but found by a KD-tree:
    started from one seen id of each current row of T_i (the previous reclustering's
    clusters; at the first, the hash's groups), Lloyd's rounds on a sample growing from 2R
    points, doubling each round, within ``kmeans_max_queries`` points assigned in all, then
    every seen id's nearest centroid. Cost per chunk: about (kmeans_max_queries
    + seen ids) log R. Faiss's k-means is no faster here: its assignment computes every
    distance, m R W products for 4-wide chunks.
- Fewer seen ids than R: each gets a row of its own (its vector, exactly); the other rows keep
  their values (the code fills them with random points).
- Rows of H_i no seen id hashes to are 0 (the code divides 0 by 0 there, giving NaN).

Optimizer state is left as it is, as the authors' training script leaves it (it calls
``cluster`` between epochs and never touches the optimizer): the Adagrad sums of rewritten
rows carry on.

Letters: N ids, n categories, D width, c chunks, W = D / c, R rows of T_i (and of H_i).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._universal import PRIME, check_hashable, hash_coefficients, universal_hash
from compemb.embeddings.base import BagModule, full_table_bound
from compemb.embeddings.kmeans import kmeans, kmeans_tree, nearest

__all__ = ["CCEEmbeddingBag", "assignment_dtype", "check_cce"]


def assignment_dtype(rows: int) -> torch.dtype:
    """The smallest integer type holding rows 0..R-1: uint8 up to R = 256, uint16 up to
    65,536, else int32. torch has no ``index_put`` for uint16: the assignment is written
    through int32 (:meth:`CCEEmbeddingBag.recluster_table`), and gloo, which has no 16-bit
    integers, sends it as bytes.

    >>> assignment_dtype(256), assignment_dtype(257), assignment_dtype(65_537)
    (torch.uint8, torch.uint16, torch.int32)
    """
    if rows <= 2**8:
        return torch.uint8
    return torch.uint16 if rows <= 2**16 else torch.int32


def _generator(*words: int) -> torch.Generator:
    """A CPU generator seeded from several integers (a reclustering's seed, a chunk)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class CCEEmbeddingBag(BagModule):
    """``nn.EmbeddingBag``'s interface over clustered compositional embeddings.

    Args:
        num_categories: n.
        embedding_dim: D, a multiple of ``chunks``.
        rows: R, rows of each chunk's learned table T_i (and of its hashed table H_i).
        chunks: c, chunks of width D / c.
        seed: seeds the first assignment and the first hashes.
        kmeans_iters: most Lloyd rounds per chunk when reclustering.
        kmeans_samples: most points per centroid k-means is fitted on.
        kmeans_exact_rows: most rows R clustered by the exact path; above, the KD-tree path
            (module docstring). 0: the tree path at every R.
        kmeans_max_queries: the tree path's cap on the points its Lloyd rounds assign, summed
            over the rounds, per chunk.
        mode, sparse, include_last_offset, validate, device, dtype: as ``nn.EmbeddingBag``.

    Tables ``tables.<i>`` (2R, W) hold T_i then H_i, each entry drawn U(-a / sqrt(2), a /
    sqrt(2)) with a = sqrt(1/n) the full table's bound: a chunk is the sum of two entries, so
    vectors start with the full table's variance. Buffers (saved in checkpoints):
    ``assignment`` (n, c), the rows a_i(x) of T_i, in the smallest integer type that holds R
    rows (:func:`assignment_dtype`); ``hash_coefficients`` (2, c) int64,
    the hashes h_i; ``seen`` (n,) bool, the ids a training-mode forward has embedded.

    Forward: ``(input, offsets=None, per_sample_weights=None) -> (B, D)``.

    >>> bag = CCEEmbeddingBag(10_000, 16, rows=32, chunks=4)
    >>> bag(torch.tensor([[1, 2], [3, 9999]])).shape, bag.num_parameters
    (torch.Size([2, 16]), 1024)
    >>> bag.recluster(seed=0)  # nothing seen yet: nothing to cluster
    >>> _ = bag.train()(torch.tensor([[1, 2], [3, 9999]]))
    >>> int(bag.seen.sum())
    4
    """

    def __init__(self, num_categories: int, embedding_dim: int, rows: int, chunks: int = 4,
                 seed: int = 0, mode: str = "sum", *, kmeans_iters: int = 100,
                 kmeans_samples: int = 200, kmeans_exact_rows: int = 4096,
                 kmeans_max_queries: int = 2**25, sparse: bool = False,
                 include_last_offset: bool = False, validate: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        check_cce(embedding_dim, rows, chunks, type(self).__name__)
        check_hashable(num_categories, type(self).__name__)
        self.rows, self.chunks, self.sparse = rows, chunks, sparse
        self.kmeans_iters, self.kmeans_samples = kmeans_iters, kmeans_samples
        self.kmeans_exact_rows, self.kmeans_max_queries = kmeans_exact_rows, kmeans_max_queries
        width = embedding_dim // chunks
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(2 * rows, width, device=device, dtype=dtype))
            for _ in range(chunks))
        first = hash_coefficients(2 * chunks, seed)  # the first assignment, then h_i
        ids = torch.arange(num_categories, device=device)
        self.register_buffer("assignment", universal_hash(ids, first[:, :chunks], rows).to(
            assignment_dtype(rows)))
        self.register_buffer("hash_coefficients", first[:, chunks:].clone().to(device))
        # each rank marks the ids of its own share of the batches (DDP broadcasts no buffer of
        # the embedding layer), merged over the ranks by merge_seen (before reclustering and
        # checkpoints)
        self.register_buffer("seen", torch.zeros(num_categories, dtype=torch.bool, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        b = full_table_bound(self.num_categories) / 2**0.5
        with torch.no_grad():
            for table in self.tables:
                table.uniform_(-b, b)

    @property
    def num_rows(self) -> int:
        """Table rows: 2R per chunk."""
        return 2 * self.rows * self.chunks

    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The two rows each id reads from each chunk's table, as a TorchRec route's ``lookup``:
        ids (N,) -> c tensors (N, 2): [a_i(x), R + h_i(x)]. In training mode, marks the ids
        seen."""
        if self.training:
            self.seen[ids] = True
        learned = self.assignment[ids].long()  # (N, c)
        hashed = universal_hash(ids, self.hash_coefficients, self.rows) + self.rows
        return list(torch.stack([learned, hashed], dim=2).unbind(1))

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.lookup(ids)
        parts = [F.embedding(r, t, sparse=self.sparse).sum(1)
                 for r, t in zip(rows, self.tables, strict=True)]
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def recluster(self, seed: int,
                  all_reduce: Callable[[torch.Tensor], None] | None = None) -> None:
        """Cluster each chunk's vectors of the seen ids and rewrite the chunk (module docstring).

        Deterministic given ``seed`` and the module's state: chunk i draws from a generator
        seeded with (``seed``, i). With no id seen yet there is nothing to fit, and nothing
        changes.

        Args:
            seed: seeds the k-means samples and starts and the new hashes.
            all_reduce: sums a tensor over the ranks in place, when each rank has trained on
                its own share of the batches: the ranks' seen ids are merged first, so every
                rank (holding the same tables) computes the same clustering.
        """
        if self.tables is None:
            raise ValueError(f"{self._where()} holds no tables (a TorchRec route's module): "
                             f"the ranks that own the chunk tables recluster them "
                             f"(recluster_table)")
        self.merge_seen(all_reduce)
        for i, table in enumerate(self.tables):
            self.recluster_table(i, table, seed)

    @torch.no_grad()
    def merge_seen(self, all_reduce: Callable[[torch.Tensor], None] | None) -> None:
        """Make ``seen`` the union of every rank's (``all_reduce`` sums over the ranks in
        place; None: one rank, nothing to merge)."""
        if all_reduce is not None:
            merged = self.seen.to(torch.int32)
            all_reduce(merged)
            self.seen.copy_(merged > 0)

    @torch.no_grad()
    def recluster_table(self, i: int, table: torch.Tensor, seed: int) -> None:
        """Recluster chunk i, its table (2R, W) given (this module's own, or a TorchRec shard
        holding it whole): rewrites ``table`` in place and column i of ``assignment`` and
        ``hash_coefficients`` (:meth:`table_maps`)."""
        ids = self.seen.nonzero().squeeze(1).to(table.device)
        m, r = ids.shape[0], self.rows
        if m == 0:
            return
        gen = _generator(seed, i)
        learned = self.assignment[ids, i].long().to(table.device)
        coefficients = self.hash_coefficients[:, i:i + 1]
        hashed = universal_hash(ids, coefficients, r)[:, 0] + r
        vectors = table[learned] + table[hashed]  # (m, W)
        centroids = table[:r].clone()
        if m <= r:  # a row for each seen id
            centroids[:m] = vectors
            labels = torch.arange(m, device=table.device)
        elif r > self.kmeans_exact_rows:
            centroids, labels = kmeans_tree(
                vectors, r, iters=self.kmeans_iters, samples=self.kmeans_samples,
                max_queries=self.kmeans_max_queries, generator=gen, strata=learned)
        else:
            points = vectors
            if m > self.kmeans_samples * r:
                pick = torch.randperm(m, generator=gen)[: self.kmeans_samples * r]
                points = vectors[pick.to(table.device)]
            centroids = kmeans(points, r, self.kmeans_iters, gen)
            labels = nearest(vectors, centroids)
        a = torch.randint(1, PRIME, (1,), generator=gen)
        b = torch.randint(0, PRIME, (1,), generator=gen)
        coefficients = torch.stack([a, b])
        rehashed = universal_hash(ids, coefficients, r)[:, 0]
        residuals = vectors - centroids[labels]
        sums = torch.zeros_like(centroids).index_add_(0, rehashed, residuals)
        counts = torch.bincount(rehashed, minlength=r).clamp(min=1)
        table[:r] = centroids
        table[r:] = sums / counts[:, None].to(sums.dtype)
        assignment, hashes = self.table_maps(i)
        column = assignment.int()  # written through int32: uint16 has no index_put
        column[ids.to(column.device)] = labels.to(column)
        assignment.copy_(column)
        hashes.copy_(coefficients[:, 0])

    def table_maps(self, i: int) -> list[torch.Tensor]:
        """Views of what reclustering table i rewrites besides it: column i of
        ``assignment`` and of ``hash_coefficients`` (what the rank owning a TorchRec shard of
        table i broadcasts to the others)."""
        return [self.assignment[:, i], self.hash_coefficients[:, i]]


def check_cce(embedding_dim: int, rows: int, chunks: int, where: str) -> None:
    """c >= 1 divides D; R >= 1."""
    for name, v in (("rows", rows), ("chunks", chunks)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {v!r}")
    if embedding_dim % chunks:
        raise ValueError(f"{where}: embedding_dim={embedding_dim} must be a multiple of "
                         f"chunks={chunks}")
