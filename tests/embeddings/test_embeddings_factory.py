import pytest
import torch

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import (
    CompositionalEmbeddingBag,
    EmbeddingBagCollection,
    EmbeddingSpec,
    FeatureEmbeddingBag,
    FullEmbeddingBag,
    HashEmbeddingBag,
    PathEmbeddingBag,
    make_embedding_bag,
    module_from_plan,
    resolve_spec,
)
from compemb.spec import shared_plans
from schemekit import SPECS as SCHEME_SPECS
from schemekit import kit_counts, spec_id

SPECS = SCHEME_SPECS


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_every_scheme_has_one_width(spec):
    counts = kit_counts(spec, [5000])
    module = make_embedding_bag(5000, 12, spec, counts=counts and counts[0])
    out = module(torch.randint(0, 5000, (8, 3)))
    assert out.shape[-1] == 12
    assert out.shape == ((8, 2, 12) if spec.scheme == "feature" else (8, 12))
    assert module.compression_ratio >= (1.0 if spec.scheme == "full" else 1.5)


def test_factory_picks_the_right_module():
    assert isinstance(make_embedding_bag(100, 4, scheme="full"), FullEmbeddingBag)
    assert isinstance(make_embedding_bag(100, 4, scheme="hash", collisions=4), HashEmbeddingBag)
    qr = make_embedding_bag(100, 4, scheme="qr", collisions=4, operation="add")
    assert isinstance(qr, CompositionalEmbeddingBag) and qr.partitions.sizes == (25, 4)
    assert isinstance(make_embedding_bag(100, 4, scheme="path", collisions=4), PathEmbeddingBag)
    assert isinstance(make_embedding_bag(100, 4, scheme="feature", k=2), FeatureEmbeddingBag)
    crt = make_embedding_bag(100, 4, scheme="crt", collisions=4)
    assert crt.partitions.sizes == (25, 4) and crt.partitions.is_complementary()
    assert crt.partitions.moduli == (25, 4)  # coprime as they are: no search needed
    crt6 = make_embedding_bag(100, 4, scheme="crt", collisions=6)
    assert crt6.partitions.moduli == (17, 6)  # ceil(100/6) = 17 is already coprime with 6
    crt10 = make_embedding_bag(1000, 4, scheme="crt", collisions=10)
    assert crt10.partitions.moduli == (101, 10)  # 100 shares 10's factors; 101 does not
    hashed = make_embedding_bag(100, 4, scheme="hash", collisions=3)
    assert hashed.num_rows == 34


def test_threshold_keeps_small_tables_full():
    spec = EmbeddingSpec("qr", collisions=4, threshold=200)
    assert isinstance(make_embedding_bag(200, 4, spec), FullEmbeddingBag)
    assert isinstance(make_embedding_bag(201, 4, spec), CompositionalEmbeddingBag)


def test_concat_threshold_gives_one_width():
    # the paper's thresholding with concat: full tables and compositional ones of equal width
    ebc = EmbeddingBagCollection([10, 5000], 32, EmbeddingSpec("qr", "concat", collisions=4,
                                                               threshold=20))
    assert ebc.specs[0].scheme == "full"
    assert [tuple(t.shape) for t in ebc.tables(0)] == [(10, 32)]
    assert [tuple(t.shape) for t in ebc.tables(1)] == [(1250, 16), (4, 16)]
    assert ebc(torch.tensor([[3, 4000]])).shape == (1, 2, 32)


def test_resolve_spec_keeps_uncompressible_features_full():
    spec = EmbeddingSpec("qr", collisions=4)
    assert resolve_spec(spec, 3).scheme == "full"
    assert resolve_spec(spec, 4).scheme == "full"
    assert resolve_spec(spec, 5).scheme == "full"  # (2, 4): 6 rows for 5 categories
    assert resolve_spec(spec, 10) is spec


def test_collection_on_criteo_cardinalities_meta():
    full = EmbeddingBagCollection(CRITEO_KAGGLE_CARDINALITIES, 16, EmbeddingSpec(), device="meta")
    assert full.num_parameters == 540_201_232 == full.full_parameters
    qr = EmbeddingBagCollection(
        CRITEO_KAGGLE_CARDINALITIES, 16, EmbeddingSpec("qr", collisions=4), device="meta"
    )
    assert 3.9 < qr.compression_ratio < 4.0
    qr60 = EmbeddingBagCollection(
        CRITEO_KAGGLE_CARDINALITIES, 16, EmbeddingSpec("qr", collisions=60), device="meta"
    )
    assert qr60.compression_ratio > 50


def _reference(ebc: EmbeddingBagCollection) -> list[torch.nn.Module]:
    """The per-feature modules of the collection's plans, holding the collection's weights."""
    modules = []
    for f, plan in enumerate(ebc.plans):
        m = module_from_plan(plan)
        with torch.no_grad():
            for p, t in zip(m.parameters(), ebc.tables(f), strict=True):
                p.copy_(t)
        modules.append(m)
    return modules


BATCHED_SPECS = SPECS + [
    EmbeddingSpec("qr", "concat", collisions=3, threshold=40),
    EmbeddingSpec("hash", collisions=7, mode="mean"),
    EmbeddingSpec("qr", "mult", collisions=4, mode="max"),
    EmbeddingSpec("mixed_radix", "add", k=3, threshold=20, sparse=True),
]


@pytest.mark.parametrize("num_bags", [2, 0])
@pytest.mark.parametrize("spec", BATCHED_SPECS, ids=spec_id)
def test_collection_matches_per_feature_modules(spec, num_bags, view_grad):
    """The stacked tables give the outputs and gradients of the per-feature modules."""
    torch.manual_seed(0)
    cards = [3, 5000, 40, 777, 120, 9000, 61]  # the last num_bags are multi-hot bags
    single = len(cards) - num_bags
    ebc = EmbeddingBagCollection(cards, 12, spec, counts=kit_counts(spec, cards))
    ref = _reference(ebc)
    ids = torch.stack([torch.randint(0, n, (6,)) for n in cards[:single]], dim=1)
    bags = [(torch.randint(0, n, (9,)), torch.tensor([0, 2, 2, 5, 8, 9]))
            for n in cards[single:]]
    out = ebc(ids, bags)
    expect = [ref[f](ids[:, f : f + 1]) for f in range(single)] + [
        ref[single + j](*bags[j]) for j in range(num_bags)]
    expect = torch.cat([e if e.dim() == 3 else e.unsqueeze(1) for e in expect], dim=1)
    assert out.shape == expect.shape == (6, ebc.num_outputs, 12)
    torch.testing.assert_close(out, expect)
    # gradients: same loss on both, compare each feature's table gradients
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expect * weights).sum().backward()
    # a table several features read (ROBE-Z's array) gets the sum of their gradients
    want: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for f, m in enumerate(ref):
        for p, t in zip(m.parameters(), ebc.tables(f), strict=True):
            g = p.grad.to_dense() if p.grad.is_sparse else p.grad
            key = (t.data_ptr(), tuple(t.shape), t.stride())
            want[key] = (t, g + want[key][1] if key in want else g)
    for t, g in want.values():
        torch.testing.assert_close(view_grad(ebc.parameters(), t), g)
    copies = shared_plans(ebc.plans)  # the per-feature modules each hold a copy
    assert ebc.num_parameters == sum(m.num_parameters for m in ref) - sum(
        (s.members - 1) * s.num_parameters for s in copies)
    assert ebc.num_rows == sum(m.num_rows for m in ref) - sum(
        (s.members - 1) * t.rows for s in copies for t in s.tables)


def test_collection_init_follows_the_rule():
    torch.manual_seed(0)
    cards = (200_000, 300_000)
    ebc = EmbeddingBagCollection(cards, 64, EmbeddingSpec("qr", "add", collisions=4))
    out = ebc(torch.stack([torch.randint(0, n, (3000,)) for n in cards], 1))
    for f, n in enumerate(cards):  # add: the full table's variance, 1 / (3n)
        assert out[:, f].pow(2).mean().item() == pytest.approx(1 / (3 * n), rel=0.2)
    ebc = EmbeddingBagCollection(cards, 64, EmbeddingSpec("qr", "mult", collisions=4))
    for f, n in enumerate(cards):  # mult: every table U(-a, a), per feature
        for table in ebc.tables(f):
            assert table.abs().max().item() <= (1 / n) ** 0.5


def test_collection_groups_features_by_layout():
    ebc = EmbeddingBagCollection(CRITEO_KAGGLE_CARDINALITIES, 16,
                                 EmbeddingSpec("qr", collisions=4), device="meta")
    # one group: the full tables of C9 (3 categories) and C20 (4) join the QR-mult stack with an
    # identity in place of their missing remainder table, so no reassembly is needed
    (group,) = ebc.groups
    assert [tuple(w.shape) for w in group.weights] == [(8_440_659, 16), (96, 16)]
    assert ebc.unstacked == {}
    # C9 has no remainder table: only its full table is a view into the first stacked weight
    assert len(ebc.tables(8)) == 1 and len(ebc.tables(0)) == 2


def test_collection_with_feature_generation_and_bags():
    torch.manual_seed(0)
    cards = [50, 7, 300]
    ebc = EmbeddingBagCollection(cards, 8, EmbeddingSpec("feature", collisions=4, threshold=10))
    assert ebc.num_outputs == 2 + 1 + 2
    ids = torch.tensor([[3, 6], [49, 0]])
    values, offsets = torch.tensor([1, 299, 5]), torch.tensor([0, 2])
    out = ebc(ids, [(values, offsets)])
    assert out.shape == (2, 5, 8)
    ref = _reference(ebc)
    torch.testing.assert_close(out[:, :2], ref[0](ids[:, :1]))
    torch.testing.assert_close(out[:, 2], ref[1](ids[:, 1:2]))
    torch.testing.assert_close(out[:, 3:], ref[2](values, offsets))
