"""k-means for CCE's reclustering (:class:`~compemb.embeddings.cce.CCEEmbeddingBag`), two ways
by size of the codebook.

- **Exact** (:func:`kmeans`, :func:`nearest`): greedy k-means++ and Lloyd rounds with every
  point-to-centroid distance computed, in torch. Its cost grows as k^2: k sequential seeding
  steps over 8k points, and m k distances per round. At k = 280,696 (a 10x CCE on Criteo
  Kaggle) the seeding alone is 280 k sequential steps.
- **Tree** (:func:`kmeans_tree`), for narrow chunks and large k: every nearest centroid is
  found exactly by a KD-tree over the centroids (``scipy.spatial.cKDTree``), queried in a
  space-filling-curve order of the points (:func:`spatial_order`; about 2x faster than in
  random order for 4-wide points), so a round costs about m log k. The start is one point of
  each stratum (for CCE, of each current row), and Lloyd's rounds run on a growing sample
  (2k points, doubling each round, up to the fitted set), within a cap on the points assigned
  in all.

Letters: m points, k centroids, W width.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = ["kmeans", "kmeans_plus_plus", "kmeans_tree", "nearest", "nearest_tree",
           "spatial_order"]

# Points per centroid of the tree path's first Lloyd round: measured at k = 28,070 on 1 M
# points, a first round on 2k, 4k or 8k points ended within 0.5 % of one another in codebook
# error at equal cost.
_TREE_START = 2
# Points per block of tree queries: bounds the float64 copies scipy makes.
_QUERY_BLOCK = 2**20


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The nearest centroid (squared Euclidean) of each point: (m, W), (k, W) -> (m,) int64.

    Computed in blocks of about 2^22 distances, so memory stays bounded whatever m.

    >>> nearest(torch.tensor([[0.0], [0.9], [2.2]]), torch.tensor([[0.0], [1.0], [2.0]])).tolist()
    [0, 1, 2]
    """
    block = max(1, 2**22 // max(centroids.shape[0], 1))
    sq = (centroids * centroids).sum(1)
    labels = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], block):
        x = points[start:start + block]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every c. One fused
        # pass (addmm) and the argmin: with narrow chunks the passes over the (m, k) block,
        # not the products, take the time
        labels[start:start + block] = torch.addmm(sq, x, centroids.T, alpha=-2).argmin(1)
    return labels


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k starting centroids by greedy k-means++ (Arthur and Vassilvitskii 2007; greedy as
    scikit-learn's default): the first a uniform draw; for each next one, 2 + ln k candidates
    drawn with probability proportional to their squared distance to the nearest centroid so
    far (uniform once every point coincides with one), keeping the candidate that lowers the
    sum of those distances most. (m, W) -> (k, W).

    >>> pts = torch.tensor([[0.0], [0.0], [0.0], [9.0]])
    >>> kmeans_plus_plus(pts, 2, torch.Generator().manual_seed(0)).sort(0).values.flatten()
    tensor([0., 9.])
    """
    m = points.shape[0]
    tries = 2 + int(math.log(k))
    sq = (points * points).sum(1)

    def distances(rows: torch.Tensor) -> torch.Tensor:
        """Squared distances of the points ``rows`` to every point: (r,) -> (r, m)."""
        near = torch.addmm(sq[rows][:, None] + sq[None], points[rows], points.T, alpha=-2)
        return near.clamp_(min=0)  # rounding leaves tiny negatives

    chosen = [int(torch.randint(m, (1,), generator=generator))]
    dist = distances(torch.tensor(chosen, device=points.device))[0]
    for _ in range(1, k):
        weights = dist if dist.sum() > 0 else torch.ones_like(dist)
        picks = torch.multinomial(weights.double().cpu(), tries, replacement=True,
                                  generator=generator).to(points.device)
        candidates = torch.minimum(distances(picks), dist)  # (tries, m)
        best = int(candidates.sum(1).argmin())
        chosen.append(int(picks[best]))
        dist = candidates[best]
    return points[chosen].clone()


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator
           ) -> torch.Tensor:
    """Lloyd's k-means: (m, W) points, m >= k -> (k, W) centroids.

    Starts from :func:`kmeans_plus_plus` (greedy) over a random 8k of the points (all of them
    when fewer); runs at most ``iters`` rounds, stopping once no label changes. A centroid
    without points keeps its place.

    >>> pts = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
    >>> kmeans(pts, 2, 10, torch.Generator().manual_seed(0)).sort(0).values.flatten()
    tensor([0.0500, 5.1000])
    """
    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {points.shape[0]}")
    # the start is k sequential draws: taken from at most 8k points, so its cost stays O(k^2 W)
    pool = points
    if points.shape[0] > 8 * k:
        pool = points[torch.randperm(points.shape[0], generator=generator)[:8 * k].to(
            points.device)]
    centroids = kmeans_plus_plus(pool, k, generator)
    labels = None
    for _ in range(iters):
        new = nearest(points, centroids)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(points.dtype)
    return centroids


def spatial_order(points: torch.Tensor) -> torch.Tensor:
    """A permutation of the points along a Z-order (Morton) curve: (m, W) -> (m,) int64.

    Each coordinate is cut into 2^b cells (b = min(10, 62 // W)) and the cells' bits are
    interleaved; points consecutive in this order are near in space, so a KD-tree answers them
    from nodes already in cache.

    >>> spatial_order(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.9, 1.0], [0.1, 0.0]])).tolist()
    [1, 3, 2, 0]
    """
    m, w = points.shape
    bits = max(1, min(10, 62 // max(w, 1)))
    lo, hi = points.min(0).values, points.max(0).values
    scale = (2**bits - 1) / (hi - lo).clamp(min=torch.finfo(points.dtype).tiny)
    code = torch.zeros(m, dtype=torch.long, device=points.device)
    for d in range(w):  # one coordinate at a time: no (m, W) integer copy
        cell = ((points[:, d] - lo[d]) * scale[d]).long()
        for b in range(bits):
            code |= ((cell >> b) & 1) << (b * w + d)
    return code.argsort(stable=True)


def _tree(centroids: torch.Tensor) -> cKDTree:
    return cKDTree(centroids.detach().cpu().double().numpy())


def _query(tree: cKDTree, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's nearest point of ``tree`` and the squared distance to it, in blocks, in
    the points' order: (m, W) -> (m,) int64, (m,) float64."""
    labels = torch.empty(points.shape[0], dtype=torch.long)
    dist = torch.empty(points.shape[0], dtype=torch.float64)
    for start in range(0, points.shape[0], _QUERY_BLOCK):
        block = points[start:start + _QUERY_BLOCK].detach().cpu().double().numpy()
        d, i = tree.query(block)
        labels[start:start + _QUERY_BLOCK] = torch.from_numpy(np.asarray(i, dtype=np.int64))
        dist[start:start + _QUERY_BLOCK] = torch.from_numpy(d * d)
    return labels, dist


def nearest_tree(points: torch.Tensor, centroids: torch.Tensor,
                 order: torch.Tensor | None = None) -> torch.Tensor:
    """The nearest centroid (squared Euclidean) of each point, exactly, by a KD-tree over the
    centroids: (m, W), (k, W) -> (m,) int64 on the points' device. ``order``: the order to
    query the points in (default :func:`spatial_order`); it changes the speed, not the answer
    (between centroids at equal distances the tree picks one; :func:`nearest` the first).

    >>> nearest_tree(torch.tensor([[0.0], [0.9], [2.2]]), torch.tensor([[0.0], [1.0], [2.0]]))
    tensor([0, 1, 2])
    """
    if order is None:
        order = spatial_order(points)
    order = order.cpu()
    labels = torch.empty(points.shape[0], dtype=torch.long)
    labels[order] = _query(_tree(centroids), points.cpu()[order])[0]
    return labels.to(points.device)


def _stratified(perm: torch.Tensor, strata: torch.Tensor) -> torch.Tensor:
    """``perm`` reordered to take each stratum's points in turn: every stratum's first point
    (in ``perm``'s order), then every stratum's second, ...: (m,) -> (m,)."""
    s = strata[perm]
    sorted_s, where = torch.sort(s, stable=True)
    counts = torch.bincount(sorted_s)
    rank = torch.empty_like(perm)
    rank[where] = torch.arange(perm.shape[0]) - (counts.cumsum(0) - counts)[sorted_s]
    return perm[torch.sort(rank, stable=True).indices]


def kmeans_tree(points: torch.Tensor, k: int, *, iters: int, samples: int, max_queries: int,
                generator: torch.Generator, strata: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means for large k on narrow points, every nearest centroid exact through KD-trees:
    (m, W) points, m >= k -> (k, W) centroids and (m,) int64 labels, each point's nearest
    final centroid.

    The points are taken in a seeded random order; with ``strata`` (m,) (for CCE: each id's
    current row, so a stratum is a cluster of the previous reclustering), one point of each
    stratum first, then a second of each, and so on. The start is the first k points of that
    order: one of each stratum, so no group the previous clustering found starts without a
    centroid (no k-means++: its k sequential steps are what the tree path avoids). Lloyd
    round j runs on the first 2k 2^j points of the order, capped at ``samples`` k (the fitted
    points), at most ``iters`` rounds, stopping once the fitted points' labels repeat, or
    before a round that would take the points assigned in all past ``max_queries`` (the first
    round always runs). A centroid without points keeps its place. Cost: about
    (min(max_queries, iters m) + m) log k point queries.

    >>> pts = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
    >>> c, labels = kmeans_tree(pts, 2, iters=10, samples=4, max_queries=100,
    ...                         generator=torch.Generator().manual_seed(0))
    >>> c.sort(0).values.flatten(), labels[0] != labels[2]
    (tensor([0.0500, 5.1000]), tensor(True))
    """
    m = points.shape[0]
    if m < k:
        raise ValueError(f"k-means needs at least k={k} points, got {m}")
    device, points = points.device, points.detach().cpu()
    order = spatial_order(points)
    perm = torch.randperm(m, generator=generator)
    if strata is not None:
        perm = _stratified(perm, strata.cpu())
    fitted = min(m, samples * k)

    def ordered(size: int) -> torch.Tensor:
        """The first ``size`` points of the sample, in spatial order: indices (size,)."""
        member = torch.zeros(m, dtype=torch.bool)
        member[perm[:size]] = True
        return order[member[order]]

    centroids = points[perm[:k]].clone()
    queries, previous = 0, None
    for j in range(iters):
        size = min(fitted, _TREE_START * k * 2**j)
        if j > 0 and queries + size > max_queries:
            break
        queries += size
        sample = points[ordered(size)]
        labels = _query(_tree(centroids), sample)[0]
        if size == fitted and previous is not None and torch.equal(labels, previous):
            break
        previous = labels if size == fitted else None
        sums = torch.zeros_like(centroids).index_add_(0, labels, sample)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(points.dtype)
    labels = torch.empty(m, dtype=torch.long)
    labels[order] = _query(_tree(centroids), points[order])[0]
    return centroids.to(device), labels.to(device)
