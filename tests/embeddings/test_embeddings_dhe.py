"""DHE: the encoding is deterministic under its seed and has the paper's ranges, the parameter
count is exact, the forward equals a hand-computed tiny MLP, gradcheck of the network, budget
fitting on the width."""

from __future__ import annotations

import math

import pytest
import torch

from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    plan_feature,
)
from compemb.embeddings._universal import PRIME, hash_coefficients
from compemb.embeddings.dhe import HASH_BUCKETS, DHEEmbeddingBag, dhe_encoding


def test_encoding_is_deterministic_under_the_seed():
    ids = torch.arange(0, 10**6, 997)
    one = DHEEmbeddingBag(10**6, 4, hashes=16, width=4, seed=7)
    again = DHEEmbeddingBag(10**6, 4, hashes=16, width=4, seed=7)
    other = DHEEmbeddingBag(10**6, 4, hashes=16, width=4, seed=8)
    torch.testing.assert_close(one.encode(ids), again.encode(ids), rtol=0, atol=0)
    assert not torch.equal(one.encode(ids), other.encode(ids))
    assert len({tuple(row) for row in one.encode(ids).tolist()}) == len(ids)


def test_encodings_by_hand_and_their_ranges():
    coefficients = torch.tensor([[3, 11], [5, 2]])
    ids = torch.tensor([0, 4, 123_456])
    h = [[((a * i + b) % PRIME) % HASH_BUCKETS for a, b in ((3, 5), (11, 2))]
         for i in ids.tolist()]
    uniform = dhe_encoding(ids, coefficients, "uniform", torch.float64)
    torch.testing.assert_close(uniform, torch.tensor(
        [[2 * x / (HASH_BUCKETS - 1) - 1 for x in r] for r in h], dtype=torch.float64))
    gauss = dhe_encoding(ids, coefficients, "gaussian", torch.float64)
    radius = [math.sqrt(-2 * math.log((r[0] + 1) / HASH_BUCKETS)) for r in h]
    angle = [2 * math.pi * r[1] / HASH_BUCKETS for r in h]
    torch.testing.assert_close(gauss, torch.tensor(
        [[s * math.cos(t), s * math.sin(t)] for s, t in zip(radius, angle, strict=True)],
        dtype=torch.float64))
    drawn = hash_coefficients(2, seed=0)  # random multipliers spread consecutive ids
    many = dhe_encoding(torch.arange(50_000), drawn, "gaussian")
    assert abs(many.mean()) < 0.02 and abs(many.std() - 1) < 0.02
    spread = dhe_encoding(torch.arange(50_000), drawn, "uniform")
    assert -1 <= spread.min() < -0.99 and 0.99 < spread.max() <= 1


def test_parameter_count_is_exact():
    spec = EmbeddingSpec("dhe", width=10, depth=3, hashes=12)
    plan = plan_feature(5000, 6, spec)
    k, w, d = 12, 10, 6
    expected = k * w + w + 2 * (w * w + w) + w * d + d
    assert plan.num_parameters == expected == plan.scheme.module(
        plan, mode="sum").num_parameters
    assert DHEEmbeddingBag(5000, 6, 12, 10, 3).flops_per_id == k * w + 2 * w * w + w * d


def test_forward_is_a_hand_computed_tiny_mlp():
    torch.manual_seed(0)
    bag = DHEEmbeddingBag(100, 2, hashes=2, width=3, depth=1, seed=1)
    ids = torch.tensor([5, 42, 5])
    out = bag(ids, torch.tensor([0, 1]))  # bags [5], [42, 5]
    w1, b1 = bag.mlp[0].weight.detach(), bag.mlp[0].bias.detach()
    w2, b2 = bag.mlp[2].weight.detach(), bag.mlp[2].bias.detach()
    (a1, a2), (c1, c2) = bag.coefficients.tolist()

    def vector(i: int) -> torch.Tensor:
        x = torch.tensor([2 * (((a * i + c) % PRIME) % HASH_BUCKETS) / (HASH_BUCKETS - 1) - 1
                          for a, c in ((a1, c1), (a2, c2))])
        hidden = [sum(w1[u, j] * x[j] for j in range(2)) + b1[u] for u in range(3)]
        hidden = [h * math.tanh(math.log1p(math.exp(h))) for h in hidden]  # Mish
        return torch.stack([sum(w2[o, u] * hidden[u] for u in range(3)) + b2[o]
                            for o in range(2)])

    expected = torch.stack([vector(5), vector(42) + vector(5)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_gradcheck_of_the_network():
    bag = DHEEmbeddingBag(50, 3, hashes=4, width=5, depth=2, encoding="gaussian",
                          dtype=torch.float64)
    ids, offsets = torch.tensor([1, 7, 7, 49]), torch.tensor([0, 2])
    names = [n for n, _ in bag.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in bag.parameters())
    assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(
        bag, dict(zip(names, ps, strict=True)), (ids, offsets)), params)


def test_settings_errors_and_budget():
    with pytest.raises(ValueError, match="scheme 'dhe' needs width"):
        EmbeddingSpec("dhe")
    with pytest.raises(ValueError, match="hashes must be even, got 5"):
        EmbeddingSpec("dhe", width=4, hashes=5, encoding="gaussian")
    with pytest.raises(ValueError, match="encoding must be one of .* got 'normal'"):
        EmbeddingSpec("dhe", width=4, encoding="normal")
    cards = [2000, 9000]
    fitted = fit_budget(cards, 8, EmbeddingSpec("dhe", width=4), 20_000)
    assert embedding_parameters(cards, 8, fitted) <= 20_000
    assert embedding_parameters(cards, 8, fitted.with_(width=fitted.width + 1)) > 20_000


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("encoding", ["uniform", "gaussian"])
def test_half_precision_modules_encode_in_float32(dtype, encoding):
    """Hash values up to 10^6 are inf in float16 (and lose 12 bits in bfloat16): the encoding
    is the float32 one, cast once, and the network's output is finite."""
    ids = torch.arange(0, 10**6, 4999)
    bag = DHEEmbeddingBag(10**6, 8, hashes=16, width=8, encoding=encoding, dtype=dtype)
    encoded = bag.encode(ids)
    assert encoded.dtype == dtype
    exact = dhe_encoding(ids, bag.coefficients, encoding)
    torch.testing.assert_close(encoded, exact.to(dtype), rtol=0, atol=0)
    assert torch.isfinite(encoded).all() and torch.isfinite(bag(ids[:, None])).all()
    torch.testing.assert_close(encoded.float(), exact, rtol=1e-2, atol=1e-2)


def test_a_checkpoint_reproduces_its_vectors_under_another_seed(tmp_path):
    """The coefficients are saved: loading into a module built with another seed gives the
    saved module's vectors exactly, alone and in a collection."""
    ids = torch.arange(0, 9000, 7)[:, None]
    saved = DHEEmbeddingBag(9000, 4, hashes=16, width=8, seed=1)
    torch.save(saved.state_dict(), tmp_path / "dhe.pt")
    other = DHEEmbeddingBag(9000, 4, hashes=16, width=8, seed=2)
    assert not torch.equal(other.coefficients, saved.coefficients)
    other.load_state_dict(torch.load(tmp_path / "dhe.pt", weights_only=True))
    torch.testing.assert_close(other(ids), saved(ids), rtol=0, atol=0)

    cards = [9000, 5000]
    one = EmbeddingBagCollection(cards, 4, EmbeddingSpec("dhe", width=8, hashes=16, seed=1))
    two = EmbeddingBagCollection(cards, 4, EmbeddingSpec("dhe", width=8, hashes=16, seed=2))
    assert "features.0.coefficients" in one.state_dict()
    two.load_state_dict(one.state_dict())
    both = torch.cat([ids, ids % 5000], dim=1)
    torch.testing.assert_close(two(both), one(both), rtol=0, atol=0)


def test_checkpoints_written_before_the_coefficients_were_saved_load():
    """They lack the coefficients, which came from the seed: the loading module's (same seed)
    stand, strict loading passes, and the vectors are the saved ones."""
    ids = torch.arange(0, 9000, 7)[:, None]
    saved = DHEEmbeddingBag(9000, 4, hashes=16, width=8, seed=3)
    old = {k: v for k, v in saved.state_dict().items() if k != "coefficients"}
    fresh = DHEEmbeddingBag(9000, 4, hashes=16, width=8, seed=3)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh(ids), saved(ids), rtol=0, atol=0)

    spec = EmbeddingSpec("dhe", width=8, hashes=16, seed=3)
    one = EmbeddingBagCollection([9000], 4, spec)
    old = {k: v for k, v in one.state_dict().items() if not k.endswith("coefficients")}
    two = EmbeddingBagCollection([9000], 4, spec)
    two.load_state_dict(old)
    torch.testing.assert_close(two(ids), one(ids), rtol=0, atol=0)
