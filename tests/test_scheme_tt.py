"""The TT-Rec scheme (``scheme: tt``): plans name and count the cores, their Gaussian init
reaches TorchRec as a seeded ``init_fn``, one-hot features take the pooled route, and
``fit_budget`` turns the rank."""

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
from compemb.embeddings.tt import tt_init_std
from compemb.scheme import NormalInit
from compemb.spec import plan_feature

CARDS = [3, 5000, 40, 777, 9000]
D = 16


def test_plan_is_the_cores_of_the_module() -> None:
    plan = plan_feature(10_000, D, EmbeddingSpec("tt", rank=8))
    module = make_embedding_bag(10_000, D, EmbeddingSpec("tt", rank=8))
    assert module.row_factors == plan.partitions.sizes == (21, 22, 22)
    # dims (4, 2, 2), ranks (1, 8, 8, 1): widths 1*4*8, 8*2*8, 8*2*1
    assert [(p.name, p.shape) for p in plan.params] == [
        ("cores.0", (21, 32)), ("cores.1", (22, 128)), ("cores.2", (22, 16))]
    assert plan.num_parameters == module.num_parameters == 21 * 32 + 22 * 128 + 22 * 16
    std = tt_init_std(10_000, (1, 8, 8, 1), D)
    assert all(p.init == NormalInit(std) for p in plan.tables)
    with pytest.raises(ValueError, match="has init rule NormalInit.*no bounds"):
        _ = plan.tables[0].bounds


def test_small_features_keep_their_full_table() -> None:
    ebc = EmbeddingBagCollection(CARDS, D, EmbeddingSpec("tt", rank=2))
    # 3 categories: radices (1, 2, 2) hold 5 rows, more than the full table's 3
    assert [s.scheme for s in ebc.specs] == ["full", "tt", "tt", "tt", "tt"]
    assert ebc.unstacked == {} and len(ebc.groups) == 2  # the full table; the TT cores stacked
    assert ebc.num_parameters == embedding_parameters(CARDS, D, EmbeddingSpec("tt", rank=2))


def test_torchrec_draws_the_cores_gaussian_and_seeded() -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    spec = EmbeddingSpec("tt", rank=16)
    a, b = (TorchRecEmbeddingCollection([200_000], D, spec, seed=3) for _ in range(2))
    c = TorchRecEmbeddingCollection([200_000], D, spec, seed=4)
    std = tt_init_std(200_000, (1, 16, 16, 1), D)
    for name, x in a.named_tables().items():
        assert torch.equal(x, b.named_tables()[name])
        assert not torch.equal(x, c.named_tables()[name])
        assert x.std().item() == pytest.approx(std, rel=0.1), name
        assert x.mean().abs().item() < std / 5, name


def test_one_hot_features_pooled_equal_unpooled() -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection, ids_to_kjt

    spec = EmbeddingSpec("tt", rank=3)
    unpooled = TorchRecEmbeddingCollection([1000, 250], 8, spec)
    pooled = TorchRecEmbeddingCollection([1000, 250], 8, spec, one_hot=2)
    local = unpooled.local_state_dict(unpooled.state_dict())
    pooled.load_state_dict({own: local[key] for own, key in pooled.state_key_map().items()})
    assert all(r.pooled for r in pooled.routes) and not any(r.pooled for r in unpooled.routes)
    kjt = ids_to_kjt(torch.tensor([[0, 249], [999, 3], [500, 100]]), pooled.feature_names)
    torch.testing.assert_close(pooled(kjt).values(), unpooled(kjt).values(), rtol=0,
                               atol=1e-6)


def test_fit_budget_picks_the_largest_rank_that_fits() -> None:
    spec = EmbeddingSpec("tt", rank=1)
    fitted = fit_budget(CARDS, D, spec, 20_000)
    r = fitted.rank
    assert r > 1 and embedding_parameters(CARDS, D, fitted) <= 20_000
    assert embedding_parameters(CARDS, D, fitted.with_(rank=r + 1)) > 20_000


@pytest.mark.parametrize(("settings", "message"), [
    ({"rank": 0}, "rank must be an int >= 1, got 0"),
    ({"num_cores": 1}, "num_cores must be an int >= 2, got 1"),
    ({"rank": 2.5}, "rank must be an int >= 1, got 2.5"),
    ({"init": "reference"}, r"init must be one of \('paper', 'unit_norm'\)"),
    ({"collisions": 4}, "scheme 'tt' has no setting 'collisions'"),
])  # fmt: skip
def test_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingSpec("tt", **settings)


def test_order_and_hot_are_refused() -> None:
    with pytest.raises(ValueError, match="scheme 'tt' has none"):
        EmbeddingSpec("tt", order="frequency")
    with pytest.raises(ValueError, match="scheme 'tt' takes no hot rows"):
        EmbeddingSpec("tt", hot=4)


def test_describe() -> None:
    spec = EmbeddingSpec("tt", rank=4, num_cores=2)
    assert spec.owner.describe(spec) == ("tt r=4", "K=2 paper")


def test_sharding_names_the_scheme_of_an_unshardable_core() -> None:
    """Multi-hot TT cores are looked up unpooled, which FBGEMM takes only 4-aligned: D = 16
    splits as (4, 2, 2), so cores are 4r, 2r^2, 2r wide: an odd rank fails, an even one shards."""
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection
    from compemb.training import sharding

    def types(rank: int) -> dict[str, list[str]]:
        trc = TorchRecEmbeddingCollection([40_000], D, EmbeddingSpec("tt", rank=rank))
        return sharding.sharding_types(trc, torch.device("cpu"), small_bytes=0)

    assert types(4) == {"f0__0": ["table_wise"], "f0__1": ["table_wise"],
                        "f0__2": ["table_wise"]}
    with pytest.raises(ValueError, match=r"table f0__1 \(tt r=3\) is 18 wide"):
        types(3)
