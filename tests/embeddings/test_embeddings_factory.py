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
    resolve_spec,
)

SPECS = [
    EmbeddingSpec("full"),
    EmbeddingSpec("hash", collisions=4),
    EmbeddingSpec("qr", "concat", collisions=4),
    EmbeddingSpec("qr", "add", collisions=4),
    EmbeddingSpec("qr", "mult", collisions=60),
    EmbeddingSpec("mixed_radix", "mult", k=3),
    EmbeddingSpec("crt", "concat", k=3),
    EmbeddingSpec("crt", "mult", collisions=5),
    EmbeddingSpec("path", collisions=4, path_hidden=16),
    EmbeddingSpec("path", collisions=4, path_transform="linear"),
    EmbeddingSpec("feature", collisions=4),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.scheme}-{s.operation}")
def test_every_scheme_has_one_width(spec):
    module = make_embedding_bag(5000, 12, spec)
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
    assert crt.partitions.sizes == (25, 4) or crt.partitions.is_complementary()
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
    assert isinstance(ebc.embeddings[0], FullEmbeddingBag)
    assert ebc.embeddings[1].dims == (16, 16)
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


def test_collection_matches_per_feature_modules_with_bags():
    torch.manual_seed(0)
    cards = [50, 7, 300]
    ebc = EmbeddingBagCollection(cards, 8, EmbeddingSpec("feature", collisions=4, threshold=10))
    assert ebc.num_outputs == 2 + 1 + 2
    ids = torch.tensor([[3, 6], [49, 0]])
    values, offsets = torch.tensor([1, 299, 5]), torch.tensor([0, 2])
    out = ebc(ids, [(values, offsets)])
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out[:, :2], ebc.embeddings[0](ids[:, :1]))
    torch.testing.assert_close(out[:, 2], ebc.embeddings[1](ids[:, 1:2]))
    torch.testing.assert_close(out[:, 3:], ebc.embeddings[2](values, offsets))
