"""ROBE: forward against a hand-computed gather from the array, gradients (gradcheck, and
accumulation into shared elements), settings errors, full-table fallback, budget fitting, and
the TorchRec route (aligned) or its refusal (unaligned)."""

from __future__ import annotations

import pytest
import torch

from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    make_embedding_bag,
)
from compemb.embeddings._universal import PRIME
from compemb.embeddings.robe import RobeEmbeddingBag


def _by_hand(bag: RobeEmbeddingBag, i: int) -> torch.Tensor:
    """Id i's vector read element by element from the flat array, with the hash written out."""
    flat = bag.weight.detach().reshape(-1)
    m, z = bag.size, bag.block
    out = []
    for a, b in bag.coefficients.T.tolist():
        h = (a * i + b) % PRIME
        start = (h % (m // z)) * z if bag.aligned else h % m
        out += [flat[(start + e) % m] for e in range(z)]
    return torch.stack(out)


@pytest.mark.parametrize("aligned", [True, False])
def test_forward_is_the_hand_computed_gather(aligned):
    torch.manual_seed(0)
    bag = RobeEmbeddingBag(1000, 8, size=12, block=4, aligned=aligned, seed=5)
    ids = torch.tensor([0, 1, 7, 999, 7])
    out = bag(ids, torch.tensor([0, 2, 2]))  # bags [0, 1], [], [7, 999, 7]
    rows = torch.stack([_by_hand(bag, i) for i in ids.tolist()])
    torch.testing.assert_close(out, torch.stack([rows[:2].sum(0), torch.zeros(8),
                                                 rows[2:].sum(0)]), rtol=0, atol=0)


def test_unaligned_blocks_wrap_around_the_end():
    bag = RobeEmbeddingBag(50, 4, size=10, block=4, aligned=False)
    with torch.no_grad():
        bag.weight.copy_(torch.arange(10.0).reshape(10, 1))
    starts = {int(bag(torch.tensor([[i]]))[0, 0]) for i in range(50)}
    assert max(starts) > 6  # some block starts within Z - 1 of the end
    for i in range(50):
        v = bag(torch.tensor([[i]]))[0]
        assert v.tolist() == [(v[0].item() + e) % 10 for e in range(4)]


@pytest.mark.parametrize("aligned", [True, False])
def test_gradcheck(aligned):
    bag = RobeEmbeddingBag(30, 4, size=8, block=2, aligned=aligned, dtype=torch.float64)
    ids, offsets = torch.tensor([3, 4, 3, 29]), torch.tensor([0, 1, 3])
    weights = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(
        bag, {"weight": w}, (ids, offsets, weights)), bag.weight.detach().requires_grad_())


def test_gradients_accumulate_into_shared_elements():
    """An element read by several blocks gets the sum of their gradients (dense and sparse)."""
    torch.manual_seed(0)
    dense = RobeEmbeddingBag(100, 8, size=8, block=4, aligned=False)
    sparse = RobeEmbeddingBag(100, 8, size=8, block=4, aligned=False, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    ids = torch.arange(20)
    for bag in (dense, sparse):
        (bag(ids[:, None]) * torch.arange(8.0)).sum().backward()
    rows = dense.rows(ids)  # (N, D): element of each output coordinate
    expected = torch.zeros(8).index_add_(0, rows.reshape(-1), torch.arange(8.0).repeat(20))
    torch.testing.assert_close(dense.weight.grad.reshape(-1), expected)
    torch.testing.assert_close(sparse.weight.grad.to_dense().reshape(-1), expected)


def test_settings_errors_name_the_value():
    with pytest.raises(ValueError, match="scheme 'robe' needs size"):
        EmbeddingSpec("robe")
    with pytest.raises(ValueError, match="array size 10 must be a multiple of the block size 4"):
        EmbeddingSpec("robe", size=10, block=4)
    with pytest.raises(ValueError, match="block must be an int >= 1, got 0"):
        EmbeddingSpec("robe", size=10, block=0)
    with pytest.raises(ValueError, match="embedding_dim=6 must be a multiple of the block size 4"):
        make_embedding_bag(100, 6, EmbeddingSpec("robe", size=16, block=4))


def test_counts_fallback_and_budget():
    cards = [3, 20, 5000, 9000]
    spec = EmbeddingSpec("robe", size=200, block=4, threshold=25)
    ebc = EmbeddingBagCollection(cards, 8, spec)
    # at most 25 categories: full tables (3 x 8, 20 x 8); the others hold 200 each
    assert [p.spec.scheme for p in ebc.plans] == ["full", "full", "robe", "robe"]
    assert ebc.num_parameters == embedding_parameters(cards, 8, spec) == 24 + 160 + 200 + 200
    fitted = fit_budget(cards, 8, spec, 10_000)
    used = embedding_parameters(cards, 8, fitted)
    assert fitted.size % 4 == 0 and used <= 10_000
    assert embedding_parameters(cards, 8, fitted.with_(size=fitted.size + 4)) > 10_000


def test_torchrec_refuses_unaligned_by_name():
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    with pytest.raises(ValueError, match="scheme 'robe' with aligned=False has no TorchRec route"):
        TorchRecEmbeddingCollection([1000], 8, EmbeddingSpec("robe", size=64, aligned=False))
