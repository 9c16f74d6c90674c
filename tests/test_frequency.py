"""Frequency-aware partitions: renumbering by frequency rank and private rows for the hot
categories, exact and complementary, equal on every path (per-feature module, collection)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb import partitions as P
from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec, module_from_plan
from compemb.spec import plan_feature, spec_partitions
from schemekit import spec_id


def _zipf_counts(n, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.zipf(1.3, size=n).astype(np.int64)
    return counts[rng.permutation(n)]


def test_frequency_orders_by_hand():
    counts = np.array([5, 50, 1, 20, 7, 0, 9, 30, 2, 8] + [0] * 10)  # n = 20
    qr = P.quotient_remainder(20, 4)  # sizes (5, 4): ids 0..19 -> (i // 4, i % 4)
    rank = P.frequency_relabeling(qr, "frequency", counts)
    # ranks: 1 (50), 7 (30), 3 (20), 6 (9), 9 (8), 4 (7), 0 (5), 8 (2), 2 (1), then 5, 10, .. (0)
    assert rank.tolist()[:10] == [6, 0, 8, 2, 5, 9, 3, 1, 7, 4]
    inter = P.frequency_relabeling(qr, "interleaved", counts)
    # ids in remainder-major order (r = 0 first, then 1, ...): 0, 4, 8, 12, 16, 1, 5, ...
    slots = [q * 4 + r for r in range(4) for q in range(5)]
    assert inter.tolist() == [slots[r] for r in rank.tolist()]
    # the 5 most frequent categories (1, 7, 3, 6, 9) get quotient rows of their own
    assert sorted(int(inter[c]) // 4 for c in (1, 7, 3, 6, 9)) == [0, 1, 2, 3, 4]
    rnd = P.frequency_relabeling(qr, "random", seed=3)
    assert sorted(rnd.tolist()) == list(range(20))
    with pytest.raises(ValueError, match="needs the training split's category counts"):
        P.frequency_relabeling(qr, "frequency")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), c=st.integers(2, 17), hot=st.integers(0, 40),
       order=st.sampled_from(P.ORDERS), family=st.sampled_from(["qr", "crt", "mixed_radix"]),
       seed=st.integers(0, 5))
def test_frequency_partitions_are_complementary_and_exact(n, c, hot, order, family, seed):
    counts = _zipf_counts(n, seed)
    spec = EmbeddingSpec(family, collisions=c, order=order, hot=hot, order_seed=seed)
    parts = spec_partitions(spec, n, counts)
    assert parts.is_complementary()
    ids = torch.arange(n)
    buckets = torch.stack(parts.buckets(ids), 1)
    # every category its own tuple of buckets: exactly what complementary means
    assert torch.unique(buckets, dim=0).shape[0] == n
    for j, size in enumerate(parts.sizes):
        assert 0 <= int(buckets[:, j].min()) and int(buckets[:, j].max()) < size
    if hot:
        top = np.argsort(-counts, kind="stable")[: min(hot, n)]
        slots = buckets[:, -1]
        assert sorted(slots[top].tolist()) == list(range(len(top)))  # one private row each
        rest = np.setdiff1d(np.arange(n), top)
        assert (slots[rest] == len(top)).all()  # the tail shares one


def test_relabel_must_be_a_permutation():
    with pytest.raises(ValueError, match="permutation"):
        P.RelabeledPartitions(P.quotient_remainder(4, 2), [0, 1, 1, 3])
    with pytest.raises(ValueError, match="distinct"):
        P.HeadPartitions(P.quotient_remainder(4, 2), [1, 1])


SPECS = [
    EmbeddingSpec("qr", "mult", collisions=4, order="interleaved"),
    EmbeddingSpec("qr", "mult", collisions=4, hot=20),
    EmbeddingSpec("qr", "add", collisions=4, hot=20, order="frequency"),
    EmbeddingSpec("qr", "concat", collisions=4, hot=7, order="interleaved"),
    EmbeddingSpec("crt", "mult", collisions=5, hot=3, order="random", order_seed=2),
    EmbeddingSpec("hash", collisions=4, hot=25),
    EmbeddingSpec("path", collisions=4, path_hidden=8, order="interleaved"),
    EmbeddingSpec("feature", collisions=4, hot=10),
]
CARDS = [3, 5000, 40, 777, 9000]


def _counts():
    return [_zipf_counts(n, f) for f, n in enumerate(CARDS)]


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_collection_equals_per_feature_modules(spec, view_grad):
    torch.manual_seed(0)
    counts = _counts()
    ebc = EmbeddingBagCollection(CARDS, 12, spec, counts=counts)
    assert ebc.unstacked == {}
    modules = []
    for f, n in enumerate(CARDS):
        plan = plan_feature(n, 12, spec, counts=counts[f])
        m = module_from_plan(plan)
        with torch.no_grad():
            for p, t in zip(m.parameters(), ebc.tables(f), strict=True):
                p.copy_(t)
        modules.append(m)
    ids = torch.stack([torch.randint(0, n, (32,)) for n in CARDS], 1)
    ids[:4] = torch.tensor([int(np.argmax(c)) for c in counts])  # the hottest ids too
    out = ebc(ids)
    expect = torch.cat([m(ids[:, f : f + 1]).reshape(32, -1, 12)
                        for f, m in enumerate(modules)], 1)
    torch.testing.assert_close(out, expect)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expect * g).sum().backward()
    for f, m in enumerate(modules):
        for p, t in zip(m.parameters(), ebc.tables(f), strict=True):
            if t.grad_fn is None and p.grad is None:
                continue
            want = p.grad.to_dense() if p.grad.is_sparse else p.grad
            got = view_grad(ebc.parameters(), t)
            torch.testing.assert_close(got, want)


def test_multi_hot_bags_with_hot_rows():
    torch.manual_seed(0)
    counts = _counts()
    spec = EmbeddingSpec("qr", "mult", collisions=4, hot=20, order="interleaved", mode="mean")
    ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=counts)
    plan = plan_feature(CARDS[4], 8, spec, counts=counts[4])
    m = module_from_plan(plan)
    with torch.no_grad():
        for p, t in zip(m.parameters(), ebc.tables(4), strict=True):
            p.copy_(t)
    ids = torch.stack([torch.randint(0, n, (3,)) for n in CARDS[:4]], 1)
    values = torch.tensor([int(np.argmax(counts[4])), 5, 8999, 17])
    offsets = torch.tensor([0, 2, 2])
    out = ebc(ids, [(values, offsets)])
    torch.testing.assert_close(out[:, 4], m(values, offsets))


def test_maps_are_saved_and_win_over_new_counts(tmp_path):
    spec = EmbeddingSpec("qr", "mult", collisions=4, hot=20, order="interleaved")
    trained = EmbeddingBagCollection(CARDS, 8, spec, counts=_counts())
    state = trained.state_dict()
    assert state["features.4.relabel"].shape == (9000,)
    assert state["features.4.hot_ids"].shape == (20,)
    torch.save(state, tmp_path / "ebc.pt")
    # evaluation builds the model from other counts (say, a re-made dataset): the checkpoint's
    # maps replace them, so ids map exactly as in training
    other = EmbeddingBagCollection(CARDS, 8, spec, counts=[c[::-1].copy() for c in _counts()])
    other.load_state_dict(torch.load(tmp_path / "ebc.pt", weights_only=True))
    ids = torch.stack([torch.randint(0, n, (64,)) for n in CARDS], 1)
    with torch.no_grad():
        torch.testing.assert_close(other(ids), trained(ids))


def test_specs_that_need_counts_say_so():
    with pytest.raises(ValueError, match="needs the training split's category counts"):
        EmbeddingBagCollection(CARDS, 8, EmbeddingSpec("qr", collisions=4, hot=5))
    with pytest.raises(ValueError, match="'path' takes no hot rows .hot=5.; the schemes that "
                                         "do: hash, feature, qr"):
        EmbeddingSpec("path", collisions=4, hot=5)
    plan = plan_feature(1000, 8, EmbeddingSpec("qr", collisions=4, hot=10),
                        counts=np.ones(1000, dtype=np.int64))
    assert [t.rows for t in plan.tables] == [250, 4, 11]
    assert plan.tables[-1].bounds == (1.0, 1.0)  # mult's identity: tails start as plain QR


def test_maps_of_features_with_their_own_module_are_saved_too():
    """A path over 16 buckets is not stacked: its module's relabelling still travels with the
    checkpoint and wins over new counts."""
    spec = EmbeddingSpec("path", collisions=16, path_hidden=4, order="interleaved")
    trained = EmbeddingBagCollection(CARDS, 8, spec, counts=_counts())
    assert 4 in trained.unstacked
    state = trained.state_dict()
    assert state["features.4.relabel"].shape == (9000,)
    other = EmbeddingBagCollection(CARDS, 8, spec, counts=[c[::-1].copy() for c in _counts()])
    ids = torch.stack([torch.randint(0, n, (64,)) for n in CARDS], 1)
    assert not torch.equal(other.state_dict()["features.4.relabel"], state["features.4.relabel"])
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()["features.4.relabel"], state["features.4.relabel"])
    with torch.no_grad():
        torch.testing.assert_close(other(ids), trained(ids))
