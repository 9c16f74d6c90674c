import pytest
import torch

from compemb import partitions as P
from compemb.embeddings import (
    CompositionalEmbeddingBag,
    EmbeddingBagCollection,
    EmbeddingSpec,
    FeatureEmbeddingBag,
    FullEmbeddingBag,
    HashEmbeddingBag,
    PathEmbeddingBag,
    make_embedding_bag,
)

N = 100
MODULES = {
    "compositional": lambda **kw: CompositionalEmbeddingBag(N, 4, P.quotient_remainder(N, 4), **kw),
    "path": lambda **kw: PathEmbeddingBag(N, 4, P.quotient_remainder(N, 4), **kw),
    "hash": lambda **kw: HashEmbeddingBag(N, 4, 10, **kw),
    "feature": lambda **kw: FeatureEmbeddingBag(N, 4, P.quotient_remainder(N, 4), **kw),
    "full": lambda **kw: FullEmbeddingBag(N, 4, **kw),
}


@pytest.fixture(params=list(MODULES))
def make(request):
    return MODULES[request.param]


@pytest.mark.parametrize("bad", [-1, N, N + 5])
def test_out_of_range_ids_raise(make, bad):
    module = make()
    expected = rf"id {bad} at flat position 2.*valid ids are 0\.\.{N - 1}"
    with pytest.raises(IndexError, match=expected):
        module(torch.tensor([[0, 1], [bad, 3]]))
    assert type(module).__name__ in _message(module, torch.tensor([[bad]]))


def _message(module, x):
    with pytest.raises(IndexError) as info:
        module(x)
    return str(info.value)


def test_validate_false_skips_value_checks(make):
    torch.manual_seed(0)
    checked = make()
    module = make(validate=False)
    module.load_state_dict(checked.state_dict())
    x = torch.tensor([[0, 1], [7, 99]])
    torch.testing.assert_close(module(x), checked(x))  # valid input: the same result
    ids, offsets = torch.tensor([5, 2, 3]), torch.tensor([0, 2])
    torch.testing.assert_close(module(ids, offsets), checked(ids, offsets))


def test_validate_false_trusts_the_ids():
    # an id past n that the hashing trick can still place: refused when validating, looked up
    # (as id mod buckets) without reading the values otherwise
    checked = HashEmbeddingBag(N, 4, 13)
    trusting = HashEmbeddingBag(N, 4, 13, validate=False)
    trusting.load_state_dict(checked.state_dict())
    with pytest.raises(IndexError, match="out of range"):
        checked(torch.tensor([[N + 1]]))
    torch.testing.assert_close(trusting(torch.tensor([[N + 1]])),
                               checked(torch.tensor([[(N + 1) % 13]])))


def test_float_input_raises(make):
    with pytest.raises(TypeError, match="int64 or int32.*float32"):
        make()(torch.tensor([[1.0, 2.0]]))


def test_offsets_must_be_non_decreasing(make):
    with pytest.raises(ValueError, match=r"non-decreasing; offsets\[2\]=1 < offsets\[1\]=3"):
        make()(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 3, 1]))


def test_offsets_past_input(make):
    with pytest.raises(ValueError, match=r"offsets\[-1\]=9 points past the input: expected <= 4"):
        make()(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 9]))


def test_offsets_must_start_at_zero(make):
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):
        make()(torch.tensor([1, 2, 3]), torch.tensor([1, 2]))


def test_include_last_offset_must_end_at_input(make):
    with pytest.raises(ValueError, match="expected == 3"):
        make(include_last_offset=True)(torch.tensor([1, 2, 3]), torch.tensor([0, 2]))


def test_one_d_needs_offsets_and_two_d_refuses_them(make):
    with pytest.raises(ValueError, match="1-D input needs offsets"):
        make()(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="offsets must be None for 2-D"):
        make()(torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        make()(torch.tensor([[[1]]]))


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_per_sample_weights_need_sum(make, mode):
    with pytest.raises(ValueError, match=f"only supported with mode='sum'.*'{mode}'"):
        make(mode=mode)(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2))


def test_per_sample_weights_shape(make):
    with pytest.raises(ValueError, match=r"shape \(2,\), expected input's shape \(1, 2\)"):
        make()(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(2))


def test_unknown_mode(make):
    with pytest.raises(ValueError, match="mode must be one of"):
        make(mode="median")


def test_constructor_errors():
    qr = P.quotient_remainder(N, 4)
    with pytest.raises(ValueError, match="unknown operation 'max'; registered: concat, add, mult"):
        CompositionalEmbeddingBag(N, 4, qr, "max")
    with pytest.raises(ValueError, match="partitions cover 99 categories, the module 100"):
        CompositionalEmbeddingBag(N, 4, P.quotient_remainder(99, 4))
    with pytest.raises(TypeError, match="PartitionSet"):
        CompositionalEmbeddingBag(N, 4, (25, 4))
    with pytest.raises(ValueError, match=r"dims \(3, 3\) must be 2 .* concat makes"):
        CompositionalEmbeddingBag(N, 4, qr, "concat", dims=(3, 3))
    with pytest.raises(ValueError, match="concat of 2 tables needs embedding_dim >= 2"):
        CompositionalEmbeddingBag(N, 1, qr, "concat")
    with pytest.raises(ValueError, match=r"dims \(2, 2\) must be 2 positive widths that mult"):
        CompositionalEmbeddingBag(N, 4, qr, "mult", dims=(2, 2))
    with pytest.raises(ValueError, match="embedding_dim must be an int >= 1"):
        CompositionalEmbeddingBag(N, 0, qr)
    with pytest.raises(ValueError, match="transform must be one of"):
        PathEmbeddingBag(N, 4, qr, "conv")
    with pytest.raises(ValueError, match="at least 2 partitions"):
        PathEmbeddingBag(N, 4, P.remainder(N, N))
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        PathEmbeddingBag(N, 4, qr, hidden=0)
    with pytest.warns(UserWarning, match="not complementary"):
        CompositionalEmbeddingBag(N, 4, P.ModuloPartitions(N, (4, 6)))


def test_factory_refusals_say_what_works():
    with pytest.raises(ValueError, match=r"collisions=60 >= num_categories=24.*threshold >= 24"):
        make_embedding_bag(24, 16, scheme="qr", collisions=60)
    with pytest.raises(ValueError, match="unknown scheme 'nope'; registered: full, hash, path"):
        make_embedding_bag(24, 16, scheme="nope")
    with pytest.raises(ValueError, match="scheme 'qr' needs collisions"):
        EmbeddingSpec("qr")
    with pytest.raises(ValueError, match="collisions or k, not both"):
        EmbeddingSpec("mixed_radix", collisions=4, k=3)
    with pytest.raises(ValueError, match="scheme 'hash' has no setting 'k'; its settings: "
                                         "collisions$"):
        EmbeddingSpec("hash", k=3)
    with pytest.raises(ValueError, match="takes collisions, not k"):
        EmbeddingSpec("qr", k=3)
    with pytest.raises(ValueError, match="'full' has no setting 'collisions'; its settings: none"):
        EmbeddingSpec("full", collisions=4)
    with pytest.raises(ValueError, match="'path' has no setting 'operation'; its settings: "
                                         "collisions, family, path_transform, path_hidden"):
        EmbeddingSpec("path", "add", collisions=4)
    with pytest.raises(ValueError, match="no fewer than the full table"):
        make_embedding_bag(10, 4, scheme="crt", k=3)
    with pytest.raises(ValueError, match="a spec or spec fields, not both"):
        make_embedding_bag(10, 4, EmbeddingSpec(), scheme="qr")


def test_collection_errors():
    ebc = EmbeddingBagCollection([10, 20, 30], 4, EmbeddingSpec("qr", collisions=2))
    with pytest.raises(IndexError, match=r"feature 1 id 20 in row 1.*0\.\.19"):
        ebc(torch.tensor([[0, 0, 0], [1, 20, 2]]))
    with pytest.raises(ValueError, match="do not make the 3 features"):
        ebc(torch.tensor([[0, 0]]))
    with pytest.raises(IndexError, match="feature 2"):
        ebc(torch.tensor([[0, 0]]), [(torch.tensor([30]), torch.tensor([0]))])
