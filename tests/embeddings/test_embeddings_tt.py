"""TT-Rec embeddings: the forward against a dense reconstruction of the whole table, gradients,
parameter counts, the factorization of D and the init's variance."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from bagkit import assert_gradcheck, assert_input_conventions

from compemb.embeddings import tt
from compemb.embeddings.tt import GaussianInit, TTEmbeddingBag, balanced_factors, tt_init_std


def _digits(i: int, radices: tuple[int, ...]) -> list[int]:
    """i in the mixed radix, least significant digit first (the top digit unreduced)."""
    out = []
    for r in radices[:-1]:
        i, d = divmod(i, r)
        out.append(d)
    return [*out, i]


def _dense(bag: TTEmbeddingBag) -> torch.Tensor:
    """The whole (n_1, ..., n_K, D) tensor the cores describe, by one einsum."""
    r, d = bag.ranks, bag.dims
    cores = [c.detach().view(c.shape[0], r[j], d[j], r[j + 1]) for j, c in enumerate(bag.cores)]
    rows, outs = "ijkl", "pqst"
    links = "abcde"
    terms = [f"{rows[j]}{links[j]}{outs[j]}{links[j + 1]}" for j in range(len(cores))]
    k = len(cores)
    full = torch.einsum(f"{','.join(terms)}->{rows[:k]}{links[0]}{outs[:k]}{links[k]}", *cores)
    return full.reshape(*full.shape[:k], -1)  # r_0 = r_K = 1 fold into D


@pytest.mark.parametrize(("n", "d", "kwargs"), [
    (50, 6, {"rank": 3}),
    (100, 8, {"rank": (2, 3)}),
    (81, 16, {"rank": 2, "num_cores": 4}),
    (30, 12, {"rank": 4, "num_cores": 2}),
    (60, 6, {"rank": 2, "row_factors": (5, 3, 4), "dim_factors": (1, 3, 2)}),
])
def test_forward_equals_dense_reconstruction(n, d, kwargs):
    torch.manual_seed(0)
    bag = TTEmbeddingBag(n, d, **kwargs, dtype=torch.float64)
    dense = _dense(bag)
    got = bag(torch.arange(n).view(-1, 1))
    want = torch.stack([dense[tuple(_digits(i, bag.row_factors))] for i in range(n)])
    torch.testing.assert_close(got, want)


def test_pooling_and_weights_by_hand():
    torch.manual_seed(1)
    bag = TTEmbeddingBag(50, 6, rank=3)
    ids, offsets, w = torch.tensor([4, 49, 4, 0]), torch.tensor([0, 3]), torch.rand(4)
    v = bag.compose(ids)
    want = torch.stack([(w[:3, None] * v[:3]).sum(0), w[3] * v[3]])
    torch.testing.assert_close(bag(ids, offsets, w), want)


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_tt_drops_in(mode):
    assert_input_conventions(TTEmbeddingBag(50, 6, rank=3, mode=mode), 50)
    assert_gradcheck(TTEmbeddingBag(50, 6, rank=(2, 3), mode=mode, dtype=torch.float64), 50)


def test_parameter_count_by_hand():
    bag = TTEmbeddingBag(10_000, 16, rank=8)
    # radices (21, 22, 22); top digit rows ceil(10000 / 462) = 22; dims (4, 2, 2)
    assert bag.partitions.sizes == (21, 22, 22)
    assert bag.num_parameters == 21 * 1 * 4 * 8 + 22 * 8 * 2 * 8 + 22 * 8 * 2 * 1 == 3840
    big = TTEmbeddingBag(10_131_227, 16, rank=16, device="meta")
    n1, n2, n3 = big.partitions.sizes
    assert big.num_parameters == n1 * 4 * 16 + n2 * 16 * 2 * 16 + n3 * 16 * 2
    assert n1 * n2 * n3 >= 10_131_227 and big.compression_ratio > 1000


def test_balanced_factors_by_hand():
    assert balanced_factors(16, 3) == (4, 2, 2)
    assert balanced_factors(32, 3) == (4, 2, 4)  # largest at the ends, smallest in the middle
    assert balanced_factors(64, 3) == (4, 4, 4)
    assert balanced_factors(12, 3) == (3, 2, 2)
    assert balanced_factors(7, 3) == (7, 1, 1)  # no balanced split: d_k = 1 allowed
    assert balanced_factors(1, 3) == (1, 1, 1)
    assert balanced_factors(16, 2) == (4, 4)
    assert balanced_factors(48, 4) == (4, 2, 2, 3)


@pytest.mark.parametrize("init", ["paper", "unit_norm"])
def test_init_variance(init):
    torch.manual_seed(0)
    n, d = 200_000, 16
    bag = TTEmbeddingBag(n, d, rank=8, init=init)
    with torch.no_grad():
        v = bag(torch.randint(0, n, (20_000, 1)))
    target = 1 / (3 * n) if init == "paper" else 1 / d
    # a wrong scale (R left out: 64x; U(-a, a) taken as variance a^2: 3x) fails by far
    assert float(v.var()) == pytest.approx(target, rel=0.2)
    assert float(v.mean()) == pytest.approx(0.0, abs=0.1 * math.sqrt(target))


def test_init_fn_fills_in_place():
    sigma = tt_init_std(10_000, (1, 8, 8, 1), 16)
    assert sigma == pytest.approx((1 / 30_000 / 64) ** (1 / 6))
    t = torch.zeros(400, 500)
    torch.manual_seed(0)
    out = GaussianInit(sigma)(t)
    assert out is t and float(t.std()) == pytest.approx(sigma, rel=0.01)
    bag = TTEmbeddingBag(10_000, 16, rank=8)
    assert bag.init_fn == GaussianInit(sigma)


def test_sparse_gradients():
    bag = TTEmbeddingBag(100, 8, rank=2, sparse=True)
    bag(torch.tensor([[1, 2]])).sum().backward()
    assert all(c.grad.is_sparse for c in bag.cores)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"rank": 0}, r"rank must be an int >= 1 or 2 ints >= 1, got 0"),
    ({"rank": (2, 0)}, r"rank must be an int >= 1 or 2 ints >= 1, got \(2, 0\)"),
    ({"rank": 2, "num_cores": 1}, "num_cores must be an int >= 2, got 1"),
    ({"rank": 2, "dim_factors": (2, 2, 3)}, "dim_factors must be 3 ints >= 1 with product "
                                            "embedding_dim=8, got"),
    ({"rank": 2, "row_factors": (4, 4, 4)}, r"product 64 < num_categories 100"),
    ({"rank": 2, "row_factors": (10, 10)}, "row_factors must be 3 radices"),
    ({"rank": 2, "init": "xavier"}, "init must be one of"),
])
def test_errors_name_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTEmbeddingBag(100, 8, **kwargs)


def test_init_fn_is_a_torchrec_init_fn():
    torchrec = pytest.importorskip("torchrec")
    bag = TTEmbeddingBag(10_000, 16, rank=8)
    configs = [torchrec.EmbeddingBagConfig(
        name=f"core{j}", embedding_dim=core.shape[1], num_embeddings=core.shape[0],
        feature_names=[f"core{j}"], init_fn=bag.init_fn) for j, core in enumerate(bag.cores)]
    torch.manual_seed(0)
    ebc = torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    drawn = torch.cat([t.weight.detach().reshape(-1) for t in ebc.embedding_bags.values()])
    assert float(drawn.std()) == pytest.approx(bag.init_fn.std, rel=0.05)


def test_docstring_examples_run():
    result = doctest.testmod(tt)
    assert result.attempted > 3 and result.failed == 0
