"""CCE's k-means: the KD-tree path's nearest centroids equal the brute force's, its Lloyd
rounds respect their cap, and its codebook error on a 50 k-id feature is no worse than the
exact path's; the exact path stays what it was below ``kmeans_exact_rows``."""

from __future__ import annotations

import doctest

import pytest
import torch

from compemb.embeddings import EmbeddingSpec
from compemb.embeddings import cce as cce_module
from compemb.embeddings import kmeans as kmeans_module
from compemb.embeddings.cce import CCEEmbeddingBag
from compemb.embeddings.kmeans import kmeans_tree, nearest, nearest_tree, spatial_order


def test_nearest_tree_equals_the_brute_force():
    gen = torch.Generator().manual_seed(0)
    points, centroids = torch.randn(5000, 4, generator=gen), torch.randn(300, 4, generator=gen)
    assert nearest_tree(points, centroids).equal(nearest(points, centroids))
    shuffled = torch.randperm(5000, generator=gen)  # the order changes the speed, not the answer
    assert nearest_tree(points, centroids, shuffled).equal(nearest(points, centroids))


def test_spatial_order_is_a_permutation_that_keeps_neighbours_together():
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(4096, 4, generator=gen)
    order = spatial_order(points)
    assert order.sort().values.equal(torch.arange(4096))
    step = (points[order[1:]] - points[order[:-1]]).norm(dim=1).mean()
    assert step < 0.5 * (points[1:] - points[:-1]).norm(dim=1).mean()


def test_kmeans_tree_labels_are_the_nearest_final_centroids_and_the_cap_holds():
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(3000, 4, generator=gen)
    centroids, labels = kmeans_tree(points, 50, iters=100, samples=200, max_queries=10**9,
                                    generator=torch.Generator().manual_seed(0))
    assert labels.equal(nearest(points, centroids))
    # a cap below the second round's 200 points: one round on the first 2k = 100 points
    capped, _ = kmeans_tree(points, 50, iters=100, samples=200, max_queries=150,
                            generator=torch.Generator().manual_seed(0))
    one, _ = kmeans_tree(points, 50, iters=1, samples=200, max_queries=10**9,
                         generator=torch.Generator().manual_seed(0))
    assert capped.equal(one) and not capped.equal(centroids)
    with pytest.raises(ValueError, match="at least k=50 points, got 3"):
        kmeans_tree(points[:3], 50, iters=1, samples=1, max_queries=1,
                    generator=torch.Generator())


def _trained_like(exact_rows: int, seed: int, n: int) -> tuple[CCEEmbeddingBag, torch.Tensor]:
    """A feature of n ids, every id seen, R = 512, c = 4, in the state a reclustering meets
    after an earlier one: T rows in groups (64 centres, 8 rows each, spread 0.2), H rows small
    residuals; its vectors before reclustering (N, 16)."""
    torch.manual_seed(seed)
    r = 512
    bag = CCEEmbeddingBag(n, 16, rows=r, chunks=4, kmeans_exact_rows=exact_rows)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in bag.tables:
            centres = torch.randn(r // 8, 4, generator=gen)
            table[:r] = centres[torch.randint(r // 8, (r,), generator=gen)]
            table[:r] += 0.2 * torch.randn(r, 4, generator=gen)
            table[r:] *= 10
        bag.seen.fill_(True)
        return bag, bag.eval().compose(torch.arange(n))


def _codebook_error(bag: CCEEmbeddingBag, vectors: torch.Tensor) -> float:
    """Mean squared distance of each id's chunk vector to its assigned centroid (T row)."""
    w = bag.embedding_dim // bag.chunks
    return sum(float(((vectors[:, w * i:w * (i + 1)] - t.detach()[bag.assignment[:, i].long()])
                      ** 2).sum(1).mean()) for i, t in enumerate(bag.tables)) / bag.chunks


@pytest.mark.parametrize("seed", [0, 1])
def test_the_tree_path_clusters_no_worse_than_the_exact_path(seed: int):
    errors = {}
    for exact_rows in (4096, 0):  # R = 512: the exact path by default; 0 forces the tree
        bag, vectors = _trained_like(exact_rows, seed, n=10_000)
        bag.recluster(seed=seed)
        errors[exact_rows] = _codebook_error(bag, vectors)
    assert errors[0] <= errors[4096]


@pytest.mark.parametrize(("exact_rows", "path"), [(4096, "exact"), (512, "exact"),
                                                  (511, "tree"), (0, "tree")])
def test_the_path_is_chosen_by_rows(exact_rows: int, path: str,
                                    monkeypatch: pytest.MonkeyPatch):
    """R = 512: the exact path up to kmeans_exact_rows = 512 (so every R run before the tree
    path existed, at most 1,964, keeps it under the default 4,096), the tree path above."""
    taken = []
    real = {"exact": cce_module.kmeans, "tree": cce_module.kmeans_tree}

    def spy(name):
        def run(*args, **kwargs):
            taken.append(name)
            return real[name](*args, **kwargs)
        return run

    monkeypatch.setattr(cce_module, "kmeans", spy("exact"))
    monkeypatch.setattr(cce_module, "kmeans_tree", spy("tree"))
    bag, _ = _trained_like(exact_rows, 0, n=4096)  # the path depends on R alone
    bag.kmeans_iters = 2
    bag.recluster(seed=0)
    assert taken == [path] * 4


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="kmeans_exact_rows must be an int >= 0, got -1"):
        EmbeddingSpec("cce", rows=4, kmeans_exact_rows=-1)
    with pytest.raises(ValueError, match="kmeans_max_queries must be an int >= 1, got 0"):
        EmbeddingSpec("cce", rows=4, kmeans_max_queries=0)


def test_docstring_examples_run():
    result = doctest.testmod(kmeans_module)
    assert result.failed == 0 and result.attempted > 0
