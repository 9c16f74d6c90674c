import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb import partitions as P


def _distinct_tuples(parts: P.PartitionSet) -> bool:
    """Brute force: every category's bucket tuple is distinct."""
    idx = torch.arange(parts.num_categories)
    rows = torch.stack(parts.buckets(idx), dim=1)
    return torch.unique(rows, dim=0).shape[0] == parts.num_categories


def _buckets_in_range(parts: P.PartitionSet) -> bool:
    idx = torch.arange(parts.num_categories)
    return all(
        int(b.min()) >= 0 and int(b.max()) < s
        for b, s in zip(parts.buckets(idx), parts.sizes, strict=True)
    )


# --- exactness -------------------------------------------------------------------------------


def test_quotient_exact_above_float32_range():
    i = 2**24 + 3
    qr = P.quotient_remainder(2**25, 4)
    q, r = qr.buckets(torch.tensor([i]))
    assert int(q) == i // 4 == 4194304 + 0
    assert int(r) == i % 4
    # float32 would round 2**24 + 3 to 2**24 + 4 and give quotient 4194305
    assert int(q) != int(torch.tensor(i, dtype=torch.float32) // 4)


@pytest.mark.parametrize("family", ["qr", "mixed", "crt"])
def test_exact_near_2_pow_62(family):
    n = 2**62 + 12345
    ids = [0, 1, 2**62 - 1, 2**62, 2**62 + 7, n - 1]
    if family == "qr":
        c = 1_000_003
        parts, expect = P.quotient_remainder(n, c), lambda i: (i // c, i % c)
    elif family == "mixed":
        radices = (97, 10_007, 2**30, 2**20)
        parts = P.mixed_radix(n, radices)

        def expect(i):
            out, place = [], 1
            for r in radices[:-1]:
                out.append(i // place % r)
                place *= r
            return (*out, i // place)
    else:
        moduli = (2**31 - 1, 2**31 - 19, 2**5)
        assert math.prod(moduli) >= n
        parts = P.chinese_remainder(n, moduli)

        def expect(i):
            return tuple(i % m for m in moduli)

    got = parts.buckets(torch.tensor(ids, dtype=torch.int64))
    for pos, i in enumerate(ids):
        assert tuple(int(b[pos]) for b in got) == expect(i)


def test_buckets_keep_shape_and_dtype():
    parts = P.quotient_remainder(100, 7)
    idx = torch.randint(0, 100, (3, 5), dtype=torch.int32)
    for b in parts.buckets(idx):
        assert b.shape == (3, 5) and b.dtype == torch.int64


def test_float_indices_rejected():
    with pytest.raises(TypeError, match="integer tensor"):
        P.quotient_remainder(100, 7).buckets(torch.tensor([1.0]))


# --- sizes -----------------------------------------------------------------------------------


def test_quotient_remainder_sizes_quotient_first():
    assert P.quotient_remainder(10, 4).sizes == (3, 4)
    assert P.quotient_remainder(10131227, 4).sizes == (2532807, 4)


def test_remainder_is_hashing_trick():
    parts = P.remainder(10, 4)
    (b,) = parts.buckets(torch.arange(10))
    assert b.tolist() == [i % 4 for i in range(10)]
    assert not parts.is_complementary()
    assert P.remainder(10, 10).is_complementary()


def test_mixed_radix_rejects_small_product():
    with pytest.raises(ValueError, match="product 24 < num_categories 25"):
        P.mixed_radix(25, (2, 3, 4))


def test_mixed_radix_trims_most_significant_digit():
    parts = P.mixed_radix(25, (5, 2, 10))
    assert parts.sizes == (5, 2, 3)
    assert _buckets_in_range(parts) and _distinct_tuples(parts)


def test_chinese_remainder_rejections_name_the_problem():
    with pytest.raises(ValueError, match=r"moduli\[0\]=6 and moduli\[1\]=9 share the factor 3"):
        P.chinese_remainder(50, (6, 9, 5))
    with pytest.raises(ValueError, match="product 15 < num_categories 16"):
        P.chinese_remainder(16, (3, 5))


def test_bad_counts_rejected():
    with pytest.raises(ValueError, match="collisions"):
        P.quotient_remainder(10, 0)
    with pytest.raises(TypeError, match="num_categories"):
        P.quotient_remainder(10.0, 2)


@pytest.mark.parametrize("n,k", [(10131227, 2), (10131227, 3), (1460, 4), (7, 2), (2, 5)])
def test_balanced_mixed_radix_is_minimal(n, k):
    parts = P.balanced_mixed_radix(n, k)
    r = parts.radices
    assert math.prod(r) >= n and max(r) - min(r) <= 1
    # no radix can drop by one and still cover n
    assert all(math.prod(r[:j] + (r[j] - 1,) + r[j + 1 :]) < n for j in range(k))


@pytest.mark.parametrize("n,k", [(10131227, 2), (10131227, 3), (1460, 3), (100, 2)])
def test_balanced_chinese_remainder(n, k):
    parts = P.balanced_chinese_remainder(n, k)
    m = parts.moduli
    assert len(m) == k and math.prod(m) >= n
    assert all(math.gcd(a, b) == 1 for a, b in itertools.combinations(m, 2))
    root = n ** (1 / k)
    assert max(m) < 1.2 * root + 3
    assert parts.is_complementary()


@pytest.mark.parametrize("family", ["qr", "crt"])
def test_for_collisions(family):
    parts = P.for_collisions(10_000, 7, family)
    assert parts.is_complementary() and _distinct_tuples(parts)
    assert max(parts.sizes) in range(-(-10_000 // 7), -(-10_000 // 7) + 10)


# --- complementarity (hypothesis) --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), c=st.integers(1, 80))
def test_quotient_remainder_complementary(n, c):
    parts = P.quotient_remainder(n, c)
    assert parts.is_complementary() and _distinct_tuples(parts) and _buckets_in_range(parts)
    assert parts.sizes == (-(-n // c), min(c, n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), radices=st.lists(st.integers(1, 30), min_size=1, max_size=4))
def test_mixed_radix_complementary(n, radices):
    if math.prod(radices) < n:
        with pytest.raises(ValueError):
            P.mixed_radix(n, radices)
        return
    parts = P.mixed_radix(n, radices)
    assert parts.is_complementary() and _distinct_tuples(parts) and _buckets_in_range(parts)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), moduli=st.lists(st.integers(1, 60), min_size=1, max_size=4))
def test_modulo_complementarity_is_exact(n, moduli):
    parts = P.ModuloPartitions(n, moduli)
    assert parts.is_complementary() == _distinct_tuples(parts)
    assert _buckets_in_range(parts)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 5000), k=st.integers(1, 4))
def test_balanced_helpers_complementary(n, k):
    for parts in (P.balanced_mixed_radix(n, k), P.balanced_chinese_remainder(n, k)):
        assert parts.is_complementary() and _distinct_tuples(parts) and _buckets_in_range(parts)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 2)), min_size=1,
        max_size=60,
    )
)
def test_explicit_complementarity_matches_brute_force(data):
    cols = [np.array(c) for c in zip(*data, strict=True)]
    parts = P.explicit(*cols)
    assert parts.is_complementary() == (len(set(data)) == len(data))
    assert parts.is_complementary() == _distinct_tuples(parts)


def test_paper_example_is_complementary():
    # S = {0..4}: {{0},{1,3,4},{2}}, {{0,1,3},{2,4}}, {{0,3},{1,2,4}}
    parts = P.explicit([0, 1, 2, 1, 1], [0, 0, 1, 0, 1], [0, 1, 1, 0, 1])
    assert parts.sizes == (3, 2, 2) and parts.is_complementary()


def test_explicit_checks_millions_quickly():
    n = 3_000_000
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    parts = P.explicit(perm // 2000, perm % 2000, sizes=(1500, 2000))
    assert parts.is_complementary()
    collide = perm.copy()
    collide[17] = collide[18]
    assert not P.explicit(collide // 2000, collide % 2000).is_complementary()


def test_explicit_validation():
    with pytest.raises(ValueError, match="has 2 entries"):
        P.explicit([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="< 0"):
        P.explicit([0, -1])
    with pytest.raises(ValueError, match="sizes\\[0\\] is 2"):
        P.explicit([0, 2], sizes=(2,))
    with pytest.raises(TypeError, match="integers"):
        P.explicit([0.5, 1.0])


def test_explicit_buckets_follow_device_and_values():
    parts = P.explicit([3, 1, 2, 0], [0, 0, 1, 1])
    b0, b1 = parts.buckets(torch.tensor([[0, 3], [2, 1]]))
    assert b0.tolist() == [[3, 0], [2, 1]] and b1.tolist() == [[0, 1], [1, 0]]
