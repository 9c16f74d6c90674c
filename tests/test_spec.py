"""Specs and per-feature plans: the one place a spec becomes tables; partition families as
registered objects."""

import numpy as np
import pytest
import torch

from compemb import partitions as P
from compemb.embeddings import EmbeddingBagCollection, make_embedding_bag
from compemb.spec import EmbeddingSpec, plan_feature, resolve_spec, schemes


def _shape(plan):
    return plan.spec.scheme, [(t.name, t.rows, t.width) for t in plan.tables]


def test_plans_by_hand():
    n = 1000
    assert _shape(plan_feature(n, 16, EmbeddingSpec())) == ("full", [("weight", 1000, 16)])
    assert _shape(plan_feature(n, 16, EmbeddingSpec("hash", collisions=3))) == (
        "hash", [("weight", 334, 16)])
    assert _shape(plan_feature(n, 16, EmbeddingSpec("qr", "concat", collisions=4))) == (
        "qr", [("weights.0", 250, 8), ("weights.1", 4, 8)])
    assert _shape(plan_feature(n, 15, EmbeddingSpec("mixed_radix", "concat", k=3))) == (
        "mixed_radix", [("weights.0", 10, 5), ("weights.1", 10, 5), ("weights.2", 10, 5)])
    assert _shape(plan_feature(n, 16, EmbeddingSpec("crt", "mult", collisions=4))) == (
        "crt", [("weights.0", 251, 16), ("weights.1", 4, 16)])
    path = plan_feature(n, 16, EmbeddingSpec("path", collisions=4, path_hidden=8))
    assert _shape(path) == ("path", [("weight", 250, 16)])
    # one MLP 16-8-16 per bucket of the second partition: its parameters are in the plan
    assert [(p.name, p.shape) for p in path.dense] == [
        ("paths.0.0.weight", (4, 8, 16)), ("paths.0.0.bias", (4, 8)),
        ("paths.0.1.weight", (4, 16, 8)), ("paths.0.1.bias", (4, 16))]
    assert path.num_parameters == 250 * 16 + 4 * (8 * 16 + 8 + 16 * 8 + 16)
    feature = plan_feature(n, 16, EmbeddingSpec("feature", k=2))
    assert _shape(feature) == ("feature", [("weights.0", 32, 16), ("weights.1", 32, 16)])
    assert feature.num_outputs == 2


def test_threshold_and_uncompressible_features_plan_full_tables():
    spec = EmbeddingSpec("qr", collisions=4, threshold=200, init="reference")
    assert plan_feature(200, 8, spec).spec == EmbeddingSpec("full", threshold=200)
    assert plan_feature(201, 8, spec).spec == spec
    assert resolve_spec(EmbeddingSpec("qr", collisions=4), 5).scheme == "full"
    with pytest.raises(ValueError, match=r"6 rows, no fewer than the full table's 5"):
        plan_feature(5, 8, EmbeddingSpec("qr", collisions=4), strict=True)


def test_family_for_path_and_feature():
    plan = plan_feature(1000, 8, EmbeddingSpec("feature", collisions=4, family="crt"))
    assert plan.partitions.sizes == (251, 4) and plan.partitions.is_complementary()
    with pytest.raises(ValueError, match="'qr' has no setting 'family'; its settings: operation"):
        EmbeddingSpec("qr", collisions=4, family="crt")
    with pytest.raises(ValueError, match="unknown partition family 'tt'"):
        EmbeddingSpec("path", collisions=4, family="tt")


class RemainderFirst(P.PartitionFamily):
    """A new family from outside the package: QR with the small remainder table first."""

    name = "remainder_first"
    takes = ("collisions",)

    def build(self, num_categories, collisions, k):
        n = num_categories
        return P.MixedRadixPartitions(n, (collisions, -(-n // collisions)))


@pytest.fixture
def remainder_first():
    family = P.register_family(RemainderFirst())
    yield family
    del P.FAMILIES[family.name]


def test_new_family_is_a_scheme_everywhere(remainder_first):
    assert "remainder_first" in schemes()
    spec = EmbeddingSpec("remainder_first", "mult", collisions=4)
    bag = make_embedding_bag(1000, 8, spec)
    assert bag.partitions.sizes == (4, 250)
    ebc = EmbeddingBagCollection([1000, 3000], 8, spec)
    assert ebc.unstacked == {} and len(ebc.groups) == 1
    with torch.no_grad():
        for p, t in zip(bag.parameters(), ebc.tables(0), strict=True):
            p.copy_(t)
    ids = torch.tensor([[0, 5], [999, 2999], [7, 8]])
    torch.testing.assert_close(ebc(ids)[:, 0], bag(ids[:, :1]))
    path = make_embedding_bag(1000, 8, EmbeddingSpec("path", collisions=4,
                                                    family="remainder_first"))
    assert path.partitions.sizes == (4, 250)


def test_layout_says_what_stacks():
    assert P.quotient_remainder(10, 4).layout() == (P.Digit(4, 3, 3), P.Digit(1, 4, 4))
    assert P.chinese_remainder(10, (3, 4)).layout() == (P.Digit(1, 3, 3), P.Digit(1, 4, 4))
    assert P.explicit([0, 1, 1], [0, 0, 1]).layout() is None


class Attributes(P.PartitionFamily):
    """Attribute partitions (explicit bucket tables): not index arithmetic, so not stackable."""

    name = "attributes"
    takes = ("collisions",)

    def build(self, num_categories, collisions, k):
        n = num_categories
        ids = np.arange(n)
        return P.explicit(ids // collisions, ids % collisions)


def test_a_family_the_stack_cannot_hold_says_so(monkeypatch):
    monkeypatch.setitem(P.FAMILIES, "attributes", Attributes())
    spec = EmbeddingSpec("attributes", "add", collisions=4)
    ebc = EmbeddingBagCollection([1000, 2000], 8, spec)
    assert set(ebc.unstacked) == {0, 1}
    assert "not index arithmetic" in ebc.unstacked[0]
    bag = make_embedding_bag(1000, 8, spec)
    with torch.no_grad():
        for p, t in zip(bag.parameters(), ebc.tables(0), strict=True):
            p.copy_(t)
    ids = torch.tensor([[0, 5], [999, 1999]])
    torch.testing.assert_close(ebc(ids)[:, 0], bag(ids[:, :1]))
    assert "features.1.weights.1" in ebc.state_dict()  # keys as for any other feature
