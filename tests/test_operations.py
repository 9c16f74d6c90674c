"""Composition operations and init rules as registered objects: the registry is the only place
the modules, the fused node and the collection learn what an operation does."""

import math

import pytest
import torch

from compemb import operations as O
from compemb import partitions as P
from compemb.embeddings import (
    CompositionalEmbeddingBag,
    EmbeddingBagCollection,
    EmbeddingSpec,
    make_embedding_bag,
)


class WeightedSum(O.Operation):
    """A new operation from outside the package: 2 * first + the others (not symmetric, so a
    wrong part order or a wrong partial shows)."""

    name = "weighted_sum"  # no identity: combine(x, e) is 2x + e, never x
    needs_parts_for_backward = False

    def combine(self, parts, out=None):
        result = torch.mul(parts[0], 2.0, out=out)
        for p in parts[1:]:
            result.add_(p)
        return result

    def partial(self, grad, parts, j, widths, out=None):
        return torch.mul(grad, 2.0 if j == 0 else 1.0, out=out)


@pytest.fixture
def weighted_sum():
    op = O.register_operation(WeightedSum())
    yield op
    del O.OPERATIONS[op.name]


def test_new_operation_in_module_and_collection_gradients_included(weighted_sum, view_grad):
    torch.manual_seed(0)
    cards = [5000, 3, 777]  # the 3-category feature keeps a full table: a group of its own
    spec = EmbeddingSpec("qr", "weighted_sum", collisions=4, sparse=True)
    ebc = EmbeddingBagCollection(cards, 8, spec)
    assert len(ebc.groups) == 2 and ebc.unstacked == {}
    modules = [make_embedding_bag(n, 8, s) for n, s in zip(cards, ebc.specs, strict=True)]
    for f, m in enumerate(modules):
        with torch.no_grad():
            for p, t in zip(m.parameters(), ebc.tables(f), strict=True):
                p.copy_(t)
    ids = torch.stack([torch.randint(0, n, (64,)) for n in cards], 1)
    out = ebc(ids)
    expect = torch.stack([m(ids[:, f : f + 1]) for f, m in enumerate(modules)], 1)
    torch.testing.assert_close(out, expect)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (expect * w).sum().backward()
    state = ebc.state_dict()
    for f, m in enumerate(modules):
        for name, p in m.named_parameters():
            got = view_grad(ebc.parameters(), state[f"features.{f}.{name}"])
            want = p.grad.to_dense() if p.grad.is_sparse else p.grad
            torch.testing.assert_close(got, want)
    # by hand: category 5 of feature 0 is 2 * W_0[5 // 4] + W_1[5 % 4]
    q, r = ebc.tables(0)
    with torch.no_grad():
        torch.testing.assert_close(ebc(torch.tensor([[5, 0, 0]]))[0, 0], 2 * q[1] + r[1])


def test_operation_without_identity_keeps_full_tables_apart():
    ebc = EmbeddingBagCollection([5000, 3], 8, EmbeddingSpec("qr", "concat", collisions=4))
    assert len(ebc.groups) == 2  # concat has no identity: the full table cannot join


def test_unknown_names_raise_with_the_registered_ones():
    with pytest.raises(ValueError, match="unknown operation 'max'; registered: concat, add, mult"):
        O.get_operation("max")
    with pytest.raises(ValueError, match="operation must be one of"):
        EmbeddingSpec("qr", "max", collisions=4)
    with pytest.raises(ValueError, match="init must be one of"):
        EmbeddingSpec("qr", collisions=4, init="xavier")
    with pytest.raises(ValueError, match="already registered"):
        O.register_operation(O.Mult())


@pytest.mark.parametrize(("name", "op", "k", "expect"), [
    ("default", "add", 2, [(-0.05 / math.sqrt(2), 0.05 / math.sqrt(2))] * 2),
    ("default", "mult", 3, [(-0.05, 0.05)] * 3),
    ("default", "concat", 2, [(-0.05, 0.05)] * 2),
    ("reference", "mult", 2, [(0.05, 1.0)] * 2),
    ("zero_mean", "add", 2, [(-0.05, 0.05)] * 2),
    ("gates", "mult", 2, [(-0.05 / math.sqrt(13 / 12), 0.05 / math.sqrt(13 / 12)), (0.5, 1.5)]),
    ("gates", "add", 2, [(-0.05 / math.sqrt(2), 0.05 / math.sqrt(2))] * 2),
])
def test_init_rules_by_hand(name, op, k, expect):
    # n = 400: a = sqrt(1/400) = 0.05
    got = O.table_bounds(O.get_operation(op), k, 400, name)
    for (lo, hi), (elo, ehi) in zip(got, expect, strict=True):
        assert lo == pytest.approx(elo) and hi == pytest.approx(ehi)


def test_init_rule_reaches_module_and_collection():
    n = 10_000
    spec = EmbeddingSpec("qr", "mult", collisions=4, init="reference")
    bag = make_embedding_bag(n, 8, spec)
    ebc = EmbeddingBagCollection([n, n], 8, spec)
    for tables in (list(bag.weights), ebc.tables(0), ebc.tables(1)):
        for t in tables:  # U(sqrt(1/n), 1): all positive, above 0.01
            assert t.min().item() >= 0.01 and t.max().item() <= 1.0
    # a rule is a field of the spec, so it is part of what a run records
    assert EmbeddingSpec("qr", collisions=4).init == "default"


def test_module_takes_an_operation_object():
    bag = CompositionalEmbeddingBag(100, 4, P.quotient_remainder(100, 4), O.get_operation("add"))
    assert bag.operation == "add" and bag.op is O.OPERATIONS["add"]
