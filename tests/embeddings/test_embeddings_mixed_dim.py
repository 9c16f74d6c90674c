"""Mixed-dimension embeddings: the alpha power rule against a restatement of the reference's
``md_solver``, the budget helpers, and the modules against hand computation."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from bagkit import assert_gradcheck, assert_input_conventions
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.embeddings import mixed_dim
from compemb.embeddings.mixed_dim import (
    BlockMixedDimEmbeddingBag,
    MixedDimEmbeddingBag,
    block_widths,
    frequency_blocks,
    md_base_width_for_budget,
    md_parameters,
    md_widths,
)

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def restated_md_solver(n, alpha, d0=None, budget=None, round_dim=False, k=None):
    """The reference's rule as its paper and code state it, in its float32 arithmetic: sort by
    n, x = n / k, lam from d0 (smallest feature) or from B, d = lam x^-alpha clamped at 1 (the
    smallest keeps d0), rounded half to even, then 2^round(log2 d) if asked."""
    n = np.asarray(n)
    order = np.argsort(n, kind="stable")
    k = np.ones(len(n), np.float32) if k is None else np.asarray(k, np.float32)[order]
    x = n[order].astype(np.float32) / k
    a = np.float32(alpha)
    lam = np.float32(d0) * x[0] ** a if d0 is not None else np.float32(budget) / np.sum(
        x ** (np.float32(1) - a))
    d = np.maximum(np.float32(1), lam * x ** -a)
    if d0 is not None:
        d[0] = d0
    d = np.rint(d)
    if round_dim:
        d = 2 ** np.rint(np.log2(d))
    out = np.empty(len(n), np.int64)
    out[order] = d
    return out.tolist()


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.3])
@pytest.mark.parametrize("round_pow2", [False, True])
def test_criteo_widths_equal_the_restated_reference(alpha, round_pow2):
    got = md_widths(CRITEO, alpha, base_width=16, round_pow2=round_pow2)
    assert got == restated_md_solver(CRITEO, alpha, d0=16, round_dim=round_pow2)


def test_criteo_widths_pinned():
    assert md_widths(CRITEO, 0.0, base_width=16) == [16] * 26
    w2, w3 = md_widths(CRITEO, 0.2, base_width=16), md_widths(CRITEO, 0.3, base_width=16)
    # C9 (n = 3) keeps d0; C20 (n = 4): 16 (3/4)^0.2 = 15.10; C1: 16 (3/1460)^0.2 = 4.64;
    # C6 (n = 24): 16 / 8^0.2 = 10.56; C3 (10 M rows): 0.79 -> clamped to 1
    assert (w2[8], w2[19], w2[0], w2[5], w2[2]) == (16, 15, 5, 11, 1)
    # alpha 0.3: C20 16 (3/4)^0.3 = 14.68; C17 (n = 10): 16 (0.3)^0.3 = 11.15; C3: 0.24 -> 1
    assert (w3[8], w3[19], w3[16], w3[2]) == (16, 15, 11, 1)
    # powers of 2 nearest in log scale: 5 -> 4, 11 -> 8 (11 < 8 sqrt 2), 15 -> 16
    p3 = md_widths(CRITEO, 0.3, base_width=16, round_pow2=True)
    assert (p3[19], p3[16], p3[0]) == (16, 8, 4)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.3, 0.5])
def test_budget_and_frequencies_equal_the_restated_reference(alpha):
    rng = np.random.default_rng(0)
    k = rng.uniform(0.5, 3.0, len(CRITEO)).round(3).tolist()
    budget = 540_201_232 // 20
    assert md_widths(CRITEO, alpha, budget=budget) == restated_md_solver(
        CRITEO, alpha, budget=budget)
    assert md_widths(CRITEO, alpha, base_width=32, frequencies=k) == restated_md_solver(
        CRITEO, alpha, d0=32, k=k)
    assert md_widths(CRITEO, alpha, budget=budget, frequencies=k, round_pow2=True) == \
        restated_md_solver(CRITEO, alpha, budget=budget, round_dim=True, k=k)


def test_budget_mode_spends_about_the_budget():
    # lam = B / sum n^(1 - alpha): before clamping and rounding, sum n w = B exactly
    widths = md_widths([1000, 4000, 16000], 0.5, budget=80_000)
    lam = 80_000 / (1000**0.5 + 4000**0.5 + 16000**0.5)  # 361.4: widths 11.43, 5.71, 2.86
    assert widths == [11, 6, 3]
    assert widths == [round(lam / 1000**0.5), round(lam / 4000**0.5), round(lam / 16000**0.5)]


@given(st.integers(1, 1 << 40))
def test_pow2_rounding_is_nearest_in_log_scale(width):
    got = md_widths([width], 0.0, base_width=width, round_pow2=True)[0]
    m = math.floor(math.log2(width))
    lower, upper = 2**m, 2 ** (m + 1)
    if width < 2**40:  # float log2 is exact enough here to check the exact integer rule
        want = lower if math.log2(width) - m < 0.5 else upper
        assert got == want
    assert got in (lower, upper) or got == width


def test_multiple_of_rounds_up_and_is_counted():
    w = md_widths(CRITEO, 0.3, base_width=16)
    w4 = md_widths(CRITEO, 0.3, base_width=16, multiple_of=4)
    assert w4 == [-(-x // 4) * 4 for x in w] and all(x % 4 == 0 for x in w4)
    extra = md_parameters(CRITEO, w4, 16) - md_parameters(CRITEO, w, 16)
    assert extra == sum(n * (b - a) + 16 * (b - a) * (b != 16) - 16 * a * (a != 16 and b == 16)
                        for n, a, b in zip(CRITEO, w, w4, strict=True))
    assert extra > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"base_width": 16, "budget": 10}, "exactly one"),
    ({}, "exactly one"),
    ({"base_width": 0}, "base_width must be an int >= 1, got 0"),
    ({"base_width": 16, "frequencies": [1.0, 0.0]}, "frequencies must be 2 numbers > 0"),
    ({"base_width": 16, "multiple_of": 0}, "multiple_of must be an int >= 1, got 0"),
    ({"budget": -5}, "budget must be a number > 0, got -5"),
])
def test_md_widths_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        md_widths([10, 20], 0.3, **kwargs)
    with pytest.raises(ValueError, match="alpha must be a number >= 0, got -0.1"):
        md_widths([10], -0.1, base_width=4)
    with pytest.raises(ValueError, match=r"cardinalities\[1\] must be an int >= 1, got 0"):
        md_widths([10, 0], 0.1, base_width=4)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.3])
def test_base_width_for_budget_is_the_largest_that_fits(alpha):
    d = 16
    for budget in (140_000_000, 300_000_000, 600_000_000):  # width 4 everywhere: 135 M
        d0 = md_base_width_for_budget(CRITEO, alpha, d, budget, multiple_of=4)

        def size(b):
            return md_parameters(CRITEO, [min(w, d) for w in md_widths(
                CRITEO, alpha, base_width=b, multiple_of=4)], d)

        assert size(d0) <= budget and (d0 == d or size(d0 + 1) > budget)
    with pytest.raises(ValueError, match="below the smallest mixed-dimension layout"):
        md_base_width_for_budget(CRITEO, alpha, d, 1000)


# --- modules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_md_module_is_table_then_projection(mode):
    torch.manual_seed(0)
    bag = MixedDimEmbeddingBag(30, 8, width=3, mode=mode)
    t, p = bag.weight.detach(), bag.projection.detach()
    ids = torch.tensor([4, 29, 4, 0, 7])
    offsets = torch.tensor([0, 3])
    rows = [t[i] @ p.t() for i in ids.tolist()]  # (8,) each: P T[i]
    bags = [torch.stack(rows[:3]), torch.stack(rows[3:])]
    pool = {"sum": lambda v: v.sum(0), "mean": lambda v: v.mean(0),
            "max": lambda v: v.max(0).values}[mode]
    torch.testing.assert_close(bag(ids, offsets), torch.stack([pool(b) for b in bags]))
    if mode == "sum":
        w = torch.tensor([0.5, 2.0, -1.0, 1.0, 3.0])
        want = torch.stack([sum(w[j] * rows[j] for j in range(3)),
                            sum(w[j] * rows[j] for j in range(3, 5))])
        torch.testing.assert_close(bag(ids, offsets, w), want)


def test_md_full_width_has_no_projection_and_the_full_tables_init():
    torch.manual_seed(0)
    bag = MixedDimEmbeddingBag(400, 8, width=8)
    assert bag.projection is None and bag.num_parameters == 400 * 8
    assert bag.weight.abs().max() <= math.sqrt(1 / 400)
    torch.testing.assert_close(bag(torch.tensor([[5]]))[0], bag.weight[5])


def test_md_init_rules():
    torch.manual_seed(0)
    n, d, w = 20_000, 32, 8
    ref = MixedDimEmbeddingBag(n, d, width=w)
    assert ref.weight.abs().max() <= math.sqrt(1 / n)
    assert ref.projection.abs().max() <= math.sqrt(6 / (w + d))  # Xavier uniform's bound
    xav = MixedDimEmbeddingBag(n, d, width=w, init="xavier")
    assert ref.weight.abs().max() < xav.weight.abs().max() <= math.sqrt(6 / (n + w))
    unit = MixedDimEmbeddingBag(n, d, width=w, init="unit_norm")
    norms = unit(torch.arange(n).view(-1, 1)).pow(2).sum(1)
    assert float(norms.mean().detach()) == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="init must be one of"):
        MixedDimEmbeddingBag(n, d, width=w, init="gaussian")


@pytest.mark.parametrize("width", [0, 9, 2.0])
def test_md_width_errors(width):
    with pytest.raises(ValueError, match=r"width must be an int in \[1, embedding_dim=8\]"):
        MixedDimEmbeddingBag(30, 8, width=width)


def test_md_parameter_count():
    assert MixedDimEmbeddingBag(1000, 16, width=4).num_parameters == 1000 * 4 + 4 * 16
    assert MixedDimEmbeddingBag(1000, 16, width=4, device="meta").num_parameters == 4064


# --- blocks inside a feature -----------------------------------------------------------------


def test_frequency_blocks_by_hand():
    # ceil(1000^(1/4)) = 6, ceil(1000^(1/2)) = 32, ceil(1000^(3/4)) = 178
    assert frequency_blocks(1000, 4) == (0, 6, 32, 178, 1000)
    assert frequency_blocks(10**6, 3) == (0, 100, 10_000, 10**6)
    assert frequency_blocks(3, 4) == (0, 2, 3)  # coinciding starts merged
    assert frequency_blocks(7, 1) == (0, 7)


def test_block_widths_by_hand():
    counts = np.array([40, 40, 10, 10, 0, 0])
    # mean counts 40, 10, 0: 16 * (10/40)^0.5 = 8; never seen -> 1
    assert block_widths(counts, (0, 2, 4, 6), 16, 0.5) == [16, 8, 1]
    assert block_widths(counts, (0, 2, 4, 6), 16, 0.0) == [16, 16, 16]
    assert block_widths(counts, (0, 2, 4, 6), 16, 0.5, multiple_of=3) == [16, 9, 3]
    with pytest.raises(ValueError, match="counts are all zero"):
        block_widths(np.zeros(6), (0, 2, 4, 6), 16, 0.5)


def _block_bag(dtype=torch.float32, mode="sum"):
    counts = np.array([5, 90, 0, 7, 300, 1, 1, 40, 2, 0, 3, 60])
    return BlockMixedDimEmbeddingBag.from_counts(12, 6, counts, mode, alpha=0.5, num_blocks=3,
                                                 dtype=dtype), counts


def test_block_module_by_hand():
    torch.manual_seed(0)
    bag, counts = _block_bag()
    # ranks by count (ties by id): 4, 1, 11, 7, 3, 0, 10, 8, 5, 6, 2, 9
    assert bag.ranks.tolist() == [5, 1, 10, 4, 0, 8, 9, 3, 7, 11, 6, 2]
    starts = frequency_blocks(12, 3)  # (0, 3, 6, 12): ceil(12^(1/3)) = 3, ceil(12^(2/3)) = 6
    assert starts == (0, 3, 6, 12)
    # mean counts: (300+90+60)/3 = 150, (40+7+5)/3 = 17.33, (3+2+1+1+0+0)/6 = 1.17
    assert bag.widths == (6, round(6 * (52 / 3 / 150) ** 0.5), round(6 * (7 / 6 / 150) ** 0.5))
    assert bag.widths == (6, 2, 1)
    for i in range(12):
        r = int(bag.ranks[i])
        j = max(b for b in range(3) if starts[b] <= r)
        row = bag.weights[j][r - starts[j]].detach()
        want = row if str(j) not in bag.projections else bag.projections[str(j)].detach() @ row
        torch.testing.assert_close(bag(torch.tensor([[i]]))[0], want)
    assert "relabel" in bag.state_dict() and "starts" not in bag.state_dict()
    assert bag.num_parameters == 3 * 6 + 3 * 2 + 6 * 2 + 6 * 1 + 6 * 1


@pytest.mark.parametrize("make", [
    lambda dtype: MixedDimEmbeddingBag(12, 6, width=2, dtype=dtype),
    lambda dtype: MixedDimEmbeddingBag(12, 6, width=2, mode="mean", dtype=dtype),
    lambda dtype: _block_bag(dtype)[0],
])
def test_md_modules_drop_in(make):
    assert_input_conventions(make(torch.float32), 12)
    assert_gradcheck(make(torch.float64), 12)


def test_block_module_errors():
    with pytest.raises(ValueError, match=r"counts must be \(12,\) non-negative"):
        BlockMixedDimEmbeddingBag.from_counts(12, 6, np.ones(11), alpha=0.5)
    with pytest.raises(ValueError, match="num_blocks must be an int >= 1, got 0"):
        BlockMixedDimEmbeddingBag.from_counts(12, 6, np.ones(12), alpha=0.5, num_blocks=0)
    ranks = np.arange(12)
    with pytest.raises(ValueError, match=r"starts must rise strictly from 0 to 12, got "
                                         r"\(0, 3, 3, 12\)"):
        BlockMixedDimEmbeddingBag(12, 6, ranks, (0, 3, 3, 12), (6, 2, 1))
    with pytest.raises(ValueError, match=r"widths must be 2 ints in \[1, embedding_dim=6\]"):
        BlockMixedDimEmbeddingBag(12, 6, ranks, (0, 3, 12), (6, 7))
    with pytest.raises(ValueError, match="permutation"):
        BlockMixedDimEmbeddingBag(12, 6, np.zeros(12), (0, 3, 12), (6, 2))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=8), st.sampled_from([0.1, 0.3, 0.7]))
def test_widths_fall_as_cardinality_grows(cards, alpha):
    widths = md_widths(cards, alpha, base_width=32)
    order = sorted(range(len(cards)), key=lambda i: cards[i])
    assert all(widths[a] >= widths[b] for a, b in zip(order, order[1:], strict=False))


def test_docstring_examples_run():
    result = doctest.testmod(mixed_dim)
    assert result.attempted > 5 and result.failed == 0
