"""The block mixed-dimension scheme (``scheme: md_block``): blocks over frequency ranks, widths
from the block sizes, exact counts, each id its block's row times the block's projection,
``fit_budget`` turning d0 over a size that grows with it, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    make_embedding_bag,
)
from compemb.embeddings.mixed_dim import frequency_blocks, projection_pays, size_block_widths
from compemb.partitions import frequency_rank
from compemb.spec import plan_collection

CARDS = [3, 5000, 40, 777, 9000]
D = 16


def _counts(cards: list[int]) -> list[np.ndarray]:
    return [np.random.default_rng(f).zipf(1.4, n).astype(np.int64) for f, n in enumerate(cards)]


def test_widths_and_count_by_hand() -> None:
    # n = 1000, K = 4: starts 0, 6, 32, 178, 1000 (sizes 6, 26, 146, 822); d0 = 16, alpha 0.5:
    # 16 * (6/26)^0.5 = 7.7 -> 8, 16 * (6/146)^0.5 = 3.2 -> 3, 16 * (6/822)^0.5 = 1.4 -> 1
    assert frequency_blocks(1000, 4) == (0, 6, 32, 178, 1000)
    assert size_block_widths((0, 6, 32, 178, 1000), D, 0.5) == [16, 8, 3, 1]
    spec = EmbeddingSpec("md_block", alpha=0.5, order="frequency")
    (plan,) = plan_collection([1000], D, spec, sizing=True)
    assert [(p.name, p.shape) for p in plan.params] == [
        ("weights.0", (6, 16)), ("weights.1", (26, 8)), ("weights.2", (146, 3)),
        ("weights.3", (822, 1)), ("projections.1", (16, 8)), ("projections.2", (16, 3)),
        ("projections.3", (16, 1)), ("relabel", (1000,))]  # fmt: skip
    assert plan.num_parameters == 6 * 16 + 26 * 8 + 146 * 3 + 822 + 16 * (8 + 3 + 1) == 1756
    assert plan.index_bytes == 4 * 1000


def test_a_block_whose_projection_would_not_pay_stays_at_d() -> None:
    # 7 rows at width 13 + a 16 x 13 projection (299) hold more than 7 rows at 16 (112)
    assert not projection_pays(7, 13, 16) and projection_pays(40, 7, 16)
    # sizes 3, 7, 40: 16 * (3/7)^0.3 = 12.8 -> 13 does not pay; 16 * (3/40)^0.3 = 7.3 -> 7
    assert size_block_widths((0, 3, 10, 50), 16, 0.3) == [16, 16, 7]
    # a 3-row head at 4 (12 + 64) holds more than at 16 (48)
    assert size_block_widths((0, 3, 10, 50), 16, 0.3, base_width=4, multiple_of=4) == [16, 4, 4]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(2, 20_000), min_size=1, max_size=4),
       st.sampled_from([0.0, 0.3, 0.8]), st.integers(1, 6), st.sampled_from([1, 4]))
def test_size_grows_with_the_base_width(cards: list[int], alpha: float, blocks: int,
                                        multiple_of: int) -> None:
    """What ``fit_budget``'s search needs: a larger d0 never gives a smaller layout."""
    sizes = [embedding_parameters(cards, D, EmbeddingSpec(
        "md_block", alpha=alpha, num_blocks=blocks, base_width=d0, multiple_of=multiple_of,
        order="frequency")) for d0 in range(1, D + 1)]  # fmt: skip
    assert sizes == sorted(sizes)
    assert sizes[-1] <= sum(cards) * D  # never above the full tables


def test_each_id_is_its_blocks_row_times_the_blocks_projection() -> None:
    """Against the tables and projections by hand: rank by count (ties by id), block by the
    starts, row rank - start, then the block's projection; multi-hot bags pool those."""
    torch.manual_seed(0)
    spec = EmbeddingSpec("md_block", alpha=0.4, num_blocks=3, order="frequency")
    counts = _counts(CARDS)
    ebc = EmbeddingBagCollection(CARDS, D, spec, counts=counts)
    state = ebc.state_dict()
    ids = torch.stack([torch.arange(40) * (n // 40) for n in CARDS], dim=1)
    ids[0] = torch.tensor([int(np.argmax(c)) for c in counts])  # the hottest ids too
    out = ebc(ids)

    def vector(f: int, i: int) -> torch.Tensor:
        if ebc.plans[f].spec.scheme == "full":  # 3 categories: its blocks and ranks outweigh it
            return state[f"features.{f}.weight"][i]
        rank = int(frequency_rank(counts[f])[i])
        starts = frequency_blocks(CARDS[f], 3)
        j = max(b for b in range(len(starts) - 1) if starts[b] <= rank)
        row = state[f"features.{f}.weights.{j}"][rank - starts[j]]
        key = f"features.{f}.projections.{j}"
        return state[key] @ row if key in state else row

    assert [p.spec.scheme for p in ebc.plans] == ["full", *["md_block"] * 4]
    for f in range(len(CARDS)):
        want = torch.stack([vector(f, int(i)) for i in ids[:, f]])
        torch.testing.assert_close(out[:, f], want, rtol=0, atol=1e-6)
    bags = [(torch.tensor([5, 4999, 5, 0]), torch.tensor([0, 1, 4]))]  # the last one empty
    pooled = [vector(4, 5), vector(4, 4999) + vector(4, 5) + vector(4, 0), torch.zeros(D)]
    torch.testing.assert_close(ebc(ids[:3, :4], bags)[:, 4], torch.stack(pooled),
                               rtol=0, atol=1e-6)
    assert ebc.num_parameters == embedding_parameters(CARDS, D, spec)
    assert ebc.unstacked == {}  # every block of every feature in one stacked group


def test_module_from_the_factory_matches_its_plan() -> None:
    counts = np.random.default_rng(0).zipf(1.3, 5000)
    bag = make_embedding_bag(5000, D, EmbeddingSpec("md_block", alpha=0.3, order="frequency"),
                             counts=counts)
    assert bag.widths == tuple(size_block_widths(frequency_blocks(5000, 4), D, 0.3))
    assert torch.equal(bag.ranks, torch.from_numpy(frequency_rank(counts)))


def test_fit_budget_picks_the_largest_base_width_that_fits() -> None:
    spec = EmbeddingSpec("md_block", alpha=0.3, order="frequency")
    fitted = fit_budget(CARDS, D, spec, 30_000)
    d0 = fitted.base_width
    assert d0 == 11 and embedding_parameters(CARDS, D, fitted) == 25_854
    assert embedding_parameters(CARDS, D, fitted.with_(base_width=12)) > 30_000
    assert fit_budget(CARDS, D, spec, 10**6).base_width == D  # the limit: the head at D
    with pytest.raises(ValueError, match="below the smallest md_block embedding.*at base_width=1,"):
        fit_budget(CARDS, D, spec, 15_000)


def test_order_must_be_frequency_and_counts_are_needed() -> None:
    with pytest.raises(ValueError, match="'md_block' lays its blocks over frequency ranks: set "
                                         "order: frequency.*got order='natural'"):
        EmbeddingSpec("md_block", alpha=0.3)
    spec = EmbeddingSpec("md_block", order="frequency")
    assert spec.needs_counts
    with pytest.raises(ValueError, match="needs the training split's category counts"):
        EmbeddingBagCollection(CARDS, D, spec)
    with pytest.raises(ValueError, match="scheme 'md_block' takes no hot rows"):
        EmbeddingSpec("md_block", order="frequency", hot=3)


def test_torchrec_refuses_widths_fbgemm_cannot_shard() -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    spec = EmbeddingSpec("md_block", alpha=0.5, order="frequency")
    with pytest.raises(ValueError, match=r"md_block': block widths \[8, 4, 2, 1\] \(feature of "
                                         r"1000 categories\) are not all multiples of 4"):
        TorchRecEmbeddingCollection([1000], 8, spec, counts=_counts([1000]))


@pytest.mark.parametrize(("given", "message"), [
    ({"alpha": -1}, "alpha must be a number >= 0, got -1"),
    ({"num_blocks": 0}, "num_blocks must be an int >= 1, got 0"),
    ({"base_width": 2.5}, "base_width must be an int >= 1, got 2.5"),
    ({"init": "default"}, r"init must be one of \('reference', 'xavier', 'unit_norm', 'ldim'\)"),
    ({"collisions": 4}, "scheme 'md_block' has no setting 'collisions'"),
])  # fmt: skip
def test_settings_are_checked(given: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingSpec("md_block", order="frequency", **given)
