"""The budget helper: collisions (and hot rows) for a target number of parameters."""

import numpy as np
import pytest

from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec
from compemb.embeddings.budget import embedding_parameters, fit_budget

CARDS = [10_000, 500, 3]


def test_counts_match_the_collection():
    counts = [np.arange(n)[::-1].copy() for n in CARDS]
    for spec in (EmbeddingSpec("qr", collisions=4, hot=50, order="interleaved"),
                 EmbeddingSpec("qr", "concat", collisions=7, hot=5),
                 EmbeddingSpec("path", collisions=4, path_hidden=8),
                 EmbeddingSpec("hash", collisions=3, hot=9)):
        ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=counts)
        assert embedding_parameters(CARDS, 8, spec) == ebc.num_parameters


@pytest.mark.parametrize("budget", [5_000, 20_000, 60_000])
@pytest.mark.parametrize("hot_share", [None, 0.25])
def test_fit_budget_is_the_closest_from_below(budget, hot_share):
    spec = fit_budget(CARDS, 8, EmbeddingSpec("qr", collisions=2), budget, hot_share=hot_share)
    size = embedding_parameters(CARDS, 8, spec)
    assert size <= budget
    # one collision fewer would not fit
    fewer = spec.collisions - 1
    assert fewer < 2 or embedding_parameters(CARDS, 8, spec.with_(collisions=fewer)) > budget
    if hot_share:
        assert spec.hot == int(hot_share * budget / (8 * 3))


def test_fit_budget_says_when_it_cannot():
    with pytest.raises(ValueError, match="below the smallest qr embedding"):
        fit_budget(CARDS, 8, EmbeddingSpec("qr", collisions=2), 100)
