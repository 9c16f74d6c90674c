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


@pytest.mark.parametrize(("n", "d", "spec", "compressed", "full"), [
    # TT at rank 16 on 10 categories: three cores of 1,248 parameters in all against the full
    # table's 160 (the cores' rows, fewer than 10, let it through before)
    (10, 16, EmbeddingSpec("tt", rank=16), 1_248 * 4, 160 * 4),
    # DHE k=64, width 8, 2 layers: 64 x 8 + 8 + 8 x 8 + 8 + 8 x 4 + 4 = 628 parameters and
    # its (2, 64) int64 hash coefficients, against 50 x 4
    (50, 4, EmbeddingSpec("dhe", width=8, hashes=64), 628 * 4 + 2 * 64 * 8, 50 * 4 * 4),
    # CCE R=8, c=4: its tables (2 x 8 rows x width 1, four of them: 256 bytes) are smaller
    # than the full table (320 bytes); its maps are not: assignment 20 x 4 uint8, hashes
    # 2 x 4 int64, seen 20 bytes
    (20, 4, EmbeddingSpec("cce", rows=8, chunks=4), 256 + 80 + 64 + 20, 20 * 4 * 4),
])
def test_a_plan_larger_than_the_full_table_keeps_the_full_table(n, d, spec, compressed, full):
    alone = plan_feature(n, d, spec, strict=True)  # built as asked
    assert alone.spec.scheme == spec.scheme and alone.held_bytes == compressed > full
    (plan,) = EmbeddingBagCollection([n], d, spec).plans
    assert plan.spec.scheme == "full" and plan.held_bytes == full
    assert plan.kept_full.endswith(f"would hold {compressed:,} bytes ({alone.num_parameters:,} "
                                   f"parameters, {alone.index_bytes:,} bytes of id maps), more "
                                   f"than the full table's {full:,} (num_categories={n} x D={d}"
                                   f" float32)")
    assert plan_feature(n, d, spec).kept_full == plan.kept_full
    uncapped = EmbeddingBagCollection([n], d, spec.with_(cap_at_full=False))
    assert uncapped.plans[0].held_bytes == compressed


def test_md_never_plans_a_feature_larger_than_its_full_table():
    """A width at most D and a projection only below D: an MD feature holds at most its full
    table, so the cap never applies (the widest feature is its full table, as the reference
    keeps it)."""
    cards = [3, 40, 700, 9000]
    for plan in EmbeddingBagCollection(cards, 8, EmbeddingSpec("md", alpha=0.3)).plans:
        assert plan.spec.scheme == "md" and plan.kept_full is None
        assert plan.held_bytes <= plan.full_bytes


def test_the_threshold_and_the_schemes_own_limits_say_why_too():
    plans = EmbeddingBagCollection([2, 3, 500], 4,
                                   EmbeddingSpec("qr", collisions=4, threshold=2)).plans
    assert plans[0].kept_full == "num_categories=2 <= threshold=2"
    assert plans[1].kept_full.startswith("collisions=4 >= num_categories=3")
    assert plans[2].kept_full is None
