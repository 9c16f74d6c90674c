"""``HeadTailEmbeddingBag`` (MD + QR in one feature) against hand computation: a head row
projected, a tail row composed by QR then projected; input conventions and gradients."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from bagkit import assert_gradcheck, assert_input_conventions

from compemb.embeddings import mixed_dim_qr
from compemb.embeddings.mixed_dim_qr import HeadTailEmbeddingBag

RANKS = np.array([7, 0, 11, 3, 9, 1, 10, 2, 8, 4, 6, 5])


def _bag(dtype: torch.dtype = torch.float32, mode: str = "sum", **kw) -> HeadTailEmbeddingBag:
    return HeadTailEmbeddingBag(12, 6, RANKS, head=3, head_width=kw.pop("head_width", 2),
                                tail_width=4, collisions=3, mode=mode, dtype=dtype, **kw)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_by_hand(operation: str) -> None:
    torch.manual_seed(0)
    bag = _bag(operation=operation)
    q, r = bag.tail.weights
    assert tuple(q.shape) == ((3, 4) if operation != "concat" else (3, 2))  # ceil(9 / 3)
    compose = {"mult": lambda a, b: a * b, "add": lambda a, b: a + b,
               "concat": lambda a, b: torch.cat([a, b])}[operation]
    for i in range(12):
        rank = int(RANKS[i])
        if rank < 3:
            want = bag.head_projection @ bag.head_weight[rank]
        else:
            t = rank - 3
            want = bag.tail_projection @ compose(q[t // 3], r[t % 3])
        torch.testing.assert_close(bag(torch.tensor([[i]]))[0], want.detach())
    assert bag.num_parameters == 3 * 2 + bag.tail.num_parameters + 6 * 2 + 6 * 4
    assert set(bag.state_dict()) == {"head_weight", "head_projection", "tail.weights.0",
                                     "tail.weights.1", "tail_projection", "relabel"}


def test_a_head_at_d_has_no_projection() -> None:
    bag = _bag(head_width=6)
    assert bag.head_projection is None and "head_projection" not in bag.state_dict()
    torch.testing.assert_close(bag(torch.tensor([[1]]))[0], bag.head_weight[0].detach())


def test_init_follows_the_rules() -> None:
    torch.manual_seed(0)
    bag = HeadTailEmbeddingBag(10_000, 16, np.arange(10_000), head=100, head_width=8,
                               tail_width=8, collisions=4)
    assert bag.head_weight.abs().max() <= (1 / 10_000) ** 0.5  # the full table's U(-a, a)
    a = (1 / 9_900) ** 0.5  # mult's own rule over the tail's categories
    assert all(w.abs().max() <= a for w in bag.tail.weights)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_drops_in(mode: str) -> None:
    assert_input_conventions(_bag(mode=mode), 12)
    assert_gradcheck(_bag(torch.float64, mode), 12)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"head must be an int in \[1, 10\]"):
        HeadTailEmbeddingBag(12, 6, np.arange(12), head=11, head_width=2, tail_width=2,
                             collisions=2)
    with pytest.raises(ValueError, match=r"tail_width must be an int in \[1, embedding_dim=6\]"):
        HeadTailEmbeddingBag(12, 6, np.arange(12), head=3, head_width=2, tail_width=7,
                             collisions=2)
    with pytest.raises(ValueError, match="permutation"):
        HeadTailEmbeddingBag(12, 6, np.zeros(12, dtype=np.int64), head=3, head_width=2,
                             tail_width=2, collisions=2)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(mixed_dim_qr)
    assert result.attempted >= 1 and result.failed == 0
