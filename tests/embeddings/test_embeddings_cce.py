"""CCE: forward against a hand-computed sum of rows, gradients (gradcheck), seen ids, and
reclustering: every id keeps a vector, the same seed gives the same result, equal vectors come
to share a row, the reconstruction error falls; settings errors, budget fitting, the TorchRec
route's module."""

from __future__ import annotations

import doctest

import pytest
import torch

from compemb.embeddings import EmbeddingSpec, fit_budget, make_embedding_bag
from compemb.embeddings import cce as cce_module
from compemb.embeddings._universal import PRIME, hash_coefficients
from compemb.embeddings.cce import CCEEmbeddingBag
from compemb.embeddings.kmeans import kmeans, nearest
from compemb.schemes.cce import CCEScheme
from compemb.spec import plan_feature


def _by_hand(bag: CCEEmbeddingBag, x: int) -> torch.Tensor:
    """Id x's vector: per chunk, the row of its assignment plus the row of its hash, written
    out with the hash's formula."""
    parts = []
    for i, table in enumerate(bag.tables):
        a, b = bag.hash_coefficients[:, i].tolist()
        h = (a * x + b) % PRIME % bag.rows
        parts.append(table[int(bag.assignment[x, i])] + table[bag.rows + h])
    return torch.cat(parts).detach()


def _all_vectors(bag: CCEEmbeddingBag) -> torch.Tensor:
    with torch.no_grad():
        return bag.eval().compose(torch.arange(bag.num_categories))


def test_forward_is_the_hand_computed_sum():
    torch.manual_seed(0)
    bag = CCEEmbeddingBag(1000, 8, rows=3, chunks=2, seed=5)
    first = hash_coefficients(4, 5)
    ids = torch.tensor([0, 1, 7, 999, 7])
    for x in ids.tolist():  # the first assignment is the seeded hash
        for i in range(2):
            a, b = first[:, i].tolist()
            assert int(bag.assignment[x, i]) == (a * x + b) % PRIME % 3
    weights = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0])
    out = bag(ids, torch.tensor([0, 2, 2]), weights)  # bags [0, 1], [], [7, 999, 7]
    rows = torch.stack([_by_hand(bag, i) for i in ids.tolist()]) * weights[:, None]
    torch.testing.assert_close(out, torch.stack([rows[:2].sum(0), torch.zeros(8),
                                                 rows[2:].sum(0)]), rtol=0, atol=1e-7)


def test_gradcheck():
    bag = CCEEmbeddingBag(30, 4, rows=3, chunks=2, dtype=torch.float64)
    ids, offsets = torch.tensor([3, 4, 3, 29]), torch.tensor([0, 1, 3])
    weights = torch.rand(4, dtype=torch.float64)

    def run(t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(bag, {"tables.0": t0, "tables.1": t1},
                                          (ids, offsets, weights))

    assert torch.autograd.gradcheck(run, tuple(t.detach().requires_grad_()
                                               for t in bag.tables))


def test_training_forward_marks_ids_seen_and_evaluation_does_not():
    bag = CCEEmbeddingBag(50, 4, rows=4, chunks=2)
    bag.eval()(torch.tensor([[1, 2]]))
    assert not bag.seen.any()
    bag.train()(torch.tensor([3, 4, 3]), torch.tensor([0, 2]))
    assert bag.seen.nonzero().flatten().tolist() == [3, 4]


def test_recluster_puts_equal_vectors_on_one_row():
    """150 seen ids whose chunk vectors are 3 points (T rows, H zero), two of the 4 rows of T_i
    equal, so ids with equal vectors sit on two rows: afterwards they share one row of T_i,
    and keep their vectors (the residuals are 0)."""
    torch.manual_seed(0)
    bag = CCEEmbeddingBag(300, 8, rows=4, chunks=2, kmeans_iters=50)
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(2, 3, 4, generator=gen) * 10
    seen = torch.arange(0, 300, 2)  # 150 seen ids; the odd ids never seen
    bag.train()(seen[:, None])
    with torch.no_grad():
        for i, table in enumerate(bag.tables):
            table.zero_()
            table[:4] = points[i][[0, 1, 2, 0]]  # rows 0 and 3 equal
            bag.assignment[seen, i] = ((seen // 2 + i) % 4).to(bag.assignment.dtype)
    truth = _all_vectors(bag)[seen]
    bag.recluster(seed=3)
    after = _all_vectors(bag)
    assert torch.isfinite(after).all()
    for i in range(2):
        chunk = truth[:, 4 * i:4 * i + 4]
        rows = bag.assignment[seen, i]
        for v in chunk.unique(dim=0):
            same = (chunk == v).all(1)
            assert rows[same].unique().numel() == 1
        on_both = (chunk == points[i][0]).all(1)
        assert on_both.sum() > 60  # the ids of rows 0 and 3: now one row
    torch.testing.assert_close(after[seen], truth, rtol=0, atol=1e-5)


def _noisy_clusters(seed: int) -> tuple[CCEEmbeddingBag, torch.Tensor]:
    """Seen ids whose vectors are 6 points per chunk plus small noise, read through a hashed
    (uninformed) assignment: T and H both random."""
    torch.manual_seed(seed)
    n, seen = 2000, torch.arange(0, 2000, 3)
    bag = CCEEmbeddingBag(n, 8, rows=6, chunks=2, kmeans_iters=50, kmeans_samples=30)
    bag.train()(seen[:, None])
    return bag, seen


def _t_error(bag: CCEEmbeddingBag, ids: torch.Tensor, vectors: torch.Tensor) -> float:
    """Squared error of the seen ids' vectors against their T rows alone (the codebook)."""
    err = 0.0
    for i, table in enumerate(bag.tables):
        rows = table.detach()[bag.assignment[ids, i].long()]
        err += float(((vectors[:, 4 * i:4 * i + 4] - rows) ** 2).sum())
    return err


def test_recluster_lowers_the_codebook_error_and_keeps_every_vector_defined():
    bag, seen = _noisy_clusters(0)
    with torch.no_grad():  # train-like: random but clustered vectors (6 points per chunk + noise)
        gen = torch.Generator().manual_seed(2)
        for table in bag.tables:
            table[:6] = torch.randn(6, 4, generator=gen)
            table[6:] = 0.05 * torch.randn(6, 4, generator=gen)
    vectors = _all_vectors(bag)[seen]
    error_before = _t_error(bag, seen, vectors)
    unseen = torch.ones(bag.num_categories, dtype=torch.bool)
    unseen[seen] = False
    rows_unseen = bag.assignment[unseen].clone()
    bag.recluster(seed=0)
    after = _all_vectors(bag)
    assert torch.isfinite(after).all() and after.shape == (2000, 8)
    assert _t_error(bag, seen, vectors) < error_before
    # centroid plus mean residual: the seen ids' vectors move less than the noise
    assert ((after[seen] - vectors) ** 2).sum(1).mean() < 0.05
    assert bag.assignment[unseen].equal(rows_unseen)  # unseen ids keep their rows


def test_recluster_is_reproducible_under_its_seed():
    states = []
    for seed in (7, 7, 8):
        bag, _ = _noisy_clusters(0)
        bag.recluster(seed=seed)
        states.append(bag.state_dict())
    for key in states[0]:
        assert states[0][key].equal(states[1][key]), key
    assert not all(states[0][k].equal(states[2][k]) for k in states[0])


def test_fewer_seen_ids_than_rows_each_get_a_row_and_keep_their_vector():
    torch.manual_seed(0)
    bag = CCEEmbeddingBag(100, 8, rows=10, chunks=2)
    seen = torch.tensor([5, 17, 42])
    bag.train()(seen[:, None])
    before = _all_vectors(bag)
    bag.recluster(seed=1)
    after = _all_vectors(bag)
    torch.testing.assert_close(after[seen], before[seen], rtol=0, atol=1e-6)
    assert bag.assignment[seen].tolist() == [[0, 0], [1, 1], [2, 2]]
    assert torch.isfinite(after).all()


def test_nothing_seen_nothing_changes():
    bag = CCEEmbeddingBag(100, 8, rows=10, chunks=2)
    state = {k: v.clone() for k, v in bag.state_dict().items()}
    bag.recluster(seed=0)
    assert all(v.equal(state[k]) for k, v in bag.state_dict().items())


def test_kmeans_and_nearest():
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(50, 3, generator=gen) * 0.01 + c
                        for c in (0.0, 5.0, -5.0)])
    centroids = kmeans(points, 3, 20, torch.Generator().manual_seed(1))
    torch.testing.assert_close(centroids.mean(1).sort().values, torch.tensor([-5.0, 0.0, 5.0]),
                               atol=0.01, rtol=0)
    labels = nearest(points, centroids)
    assert [labels[j * 50:(j + 1) * 50].unique().numel() for j in range(3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="at least k=4 points"):
        kmeans(points[:3], 4, 5, gen)


def test_settings_errors_name_the_value():
    with pytest.raises(ValueError, match="scheme 'cce' needs rows"):
        EmbeddingSpec("cce")
    with pytest.raises(ValueError, match="chunks must be an int >= 1, got 0"):
        EmbeddingSpec("cce", rows=4, chunks=0)
    with pytest.raises(ValueError, match="embedding_dim=6 must be a multiple of chunks=4"):
        make_embedding_bag(1000, 6, EmbeddingSpec("cce", rows=4))


def test_plans_count_the_maps_and_small_features_stay_full():
    plan = plan_feature(1000, 8, EmbeddingSpec("cce", rows=16, chunks=2))
    assert plan.num_parameters == 2 * 16 * 8
    # the assignment in one byte an entry (16 rows), the hashes int64, the seen mask
    assert plan.index_bytes == 1000 * 2 * 1 + 2 * 2 * 8 + 1000
    assert plan_feature(32, 8, EmbeddingSpec("cce", rows=16)).spec.scheme == "full"


@pytest.mark.parametrize(("rows", "dtype"), [(256, torch.uint8), (257, torch.uint16),
                                             (65_536, torch.uint16), (65_537, torch.int32)])
def test_the_assignment_is_stored_in_the_smallest_type_and_reclusters(rows, dtype):
    """Rows 0..R-1 in 1, 2 or 4 bytes; reclustering writes it (through int32 where uint16 has
    no index_put), up to the last row."""
    bag = CCEEmbeddingBag(3 * rows, 4, rows=rows, chunks=1)
    assert bag.assignment.dtype == dtype
    assert plan_feature(3 * rows, 4, EmbeddingSpec("cce", rows=rows, chunks=1)).maps[0].itemsize \
        == dtype.itemsize
    seen = torch.arange(0, 3 * rows, 3)  # R seen ids: each gets a row of its own, in order
    bag.train()(seen[:, None])
    bag.recluster(seed=0)
    assert bag.assignment.dtype == dtype
    assert torch.equal(bag.assignment[seen, 0].long(), torch.arange(rows))


def test_a_checkpoint_with_an_int32_assignment_loads():
    bag = CCEEmbeddingBag(500, 4, rows=8, chunks=2, seed=1)
    old = {k: v.int() if k == "assignment" else v for k, v in bag.state_dict().items()}
    other = CCEEmbeddingBag(500, 4, rows=8, chunks=2, seed=2)
    other.load_state_dict(old)
    assert other.assignment.dtype == torch.uint8 and torch.equal(other.assignment,
                                                                 bag.assignment)


def test_fit_budget_grows_rows():
    cards = [100_000, 5000, 20]
    spec = fit_budget(cards, 16, EmbeddingSpec("cce", chunks=4, rows=1), 40_000)
    r = spec.settings.rows
    assert 2 * r * 16 * 2 + 20 * 16 <= 40_000 < 2 * (r + 1) * 16 * 2 + 20 * 16


def test_torchrec_route_module_holds_no_tables():
    plan = plan_feature(1000, 8, EmbeddingSpec("cce", rows=16, chunks=2))
    route = CCEScheme().torchrec(plan, "cpu")
    assert route.module.tables is None and route.module.num_parameters == 0
    with pytest.raises(ValueError, match="holds no tables"):
        route.module.recluster(seed=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        CCEScheme().torchrec(plan_feature(1000, 8, EmbeddingSpec("cce", rows=16, chunks=4)),
                             "cpu")


def test_docstring_examples_run():
    result = doctest.testmod(cce_module)
    assert result.failed == 0 and result.attempted > 0
