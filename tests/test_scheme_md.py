"""The mixed-dimension scheme (``scheme: md``): widths planned across the collection equal
``md_widths``, counts are exact, each feature is its table times its projection, the TorchRec
collection agrees (and refuses unshardable widths), and ``fit_budget`` turns the base width."""

from __future__ import annotations

import pytest
import torch

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    make_embedding_bag,
)
from compemb.embeddings.mixed_dim import md_parameters, md_widths
from compemb.spec import plan_collection

CARDS = [3, 5000, 40, 777, 9000]
D = 16


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.3])
@pytest.mark.parametrize("sizing", [{"base_width": 16}, {"base_width": 4, "multiple_of": 4},
                                    {"budget": 10**8, "round_pow2": True}],
                         ids=["d0", "multiple4", "budget-pow2"])
def test_widths_are_md_widths_over_the_collection(alpha: float, sizing: dict) -> None:
    cards = list(CRITEO_KAGGLE_CARDINALITIES)
    plans = plan_collection(cards, D, EmbeddingSpec("md", alpha=alpha, **sizing), sizing=True)
    expected = [min(w, D) for w in md_widths(cards, alpha, **sizing)]
    assert [p.tables[0].width for p in plans] == expected
    assert sum(p.num_parameters for p in plans) == md_parameters(cards, expected, D)
    if alpha == 0.0:
        assert len(set(expected)) == 1


def test_default_base_width_is_d_and_a_lone_feature_gets_it() -> None:
    spec = EmbeddingSpec("md", alpha=0.3)
    plans = plan_collection(CARDS, D, spec)
    assert [p.tables[0].width for p in plans] == md_widths(CARDS, 0.3, base_width=D)
    assert [p.name for p in plans[0].params] == ["weight"]  # width D: no projection
    assert make_embedding_bag(5000, D, spec).width == D


def test_collection_is_each_table_times_its_projection() -> None:
    torch.manual_seed(0)
    spec = EmbeddingSpec("md", alpha=0.3, base_width=D)
    ebc = EmbeddingBagCollection(CARDS, D, spec)
    widths = [p.tables[0].width for p in ebc.plans]
    assert widths[0] == D and len(set(widths)) > 2
    assert ebc.num_parameters == embedding_parameters(CARDS, D, spec) == \
        md_parameters(CARDS, widths, D)
    state = ebc.state_dict()
    ids = torch.stack([torch.arange(7) * (n // 7) for n in CARDS], dim=1)
    out = ebc(ids)
    for f, w in enumerate(widths):
        rows = state[f"features.{f}.weight"][ids[:, f]]
        assert rows.shape == (7, w)
        want = rows if w == D else rows @ state[f"features.{f}.projection"].t()
        torch.testing.assert_close(out[:, f], want, rtol=0, atol=1e-6)
    a = (1 / 9000) ** 0.5  # the reference init: the full table's U(-a, a)
    assert state["features.4.weight"].abs().max() <= a


def test_torchrec_collection_equals_the_local_one_with_mixed_widths(view_grad) -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecSparseArch

    torch.manual_seed(0)
    spec = EmbeddingSpec("md", alpha=0.5, base_width=8, multiple_of=4)
    cards = [5, 1000, 250]
    ebc = EmbeddingBagCollection(cards, 8, spec)
    assert [p.tables[0].width for p in ebc.plans] == [8, 4, 4]
    arch = TorchRecSparseArch(cards, 8, spec, plans=ebc.plans)
    arch.load_local_state_dict(ebc.state_dict())
    ids = torch.tensor([[0, 999, 3], [4, 7, 249]])
    bags = [(torch.tensor([1, 2, 200]), torch.tensor([0, 0]))]
    out, ref = arch(ids[:, :2], bags), ebc(ids[:, :2], bags)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out.square().sum().backward()
    ref.square().sum().backward()
    own = dict(arch.named_parameters())
    projections = {k: v for k, v in arch.collection.state_key_map().items()
                   if v.endswith("projection")}
    assert sorted(projections.values()) == ["features.1.projection", "features.2.projection"]
    for key, name in projections.items():
        f = name.split(".")[1]
        torch.testing.assert_close(own[f"collection.{key}"].grad,
                                   view_grad(ebc.parameters(), ebc.tables(int(f))[1]),
                                   rtol=0, atol=1e-6)


def test_torchrec_refuses_widths_fbgemm_cannot_shard() -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    spec = EmbeddingSpec("md", alpha=0.3, base_width=8)
    with pytest.raises(ValueError, match=r"a table of width 2 \(feature of 1000 categories\) is "
                                         r"not a multiple of 4.*multiple_of=4"):
        TorchRecEmbeddingCollection([5, 1000], 8, spec)


def test_fit_budget_picks_the_largest_base_width_that_fits() -> None:
    spec = EmbeddingSpec("md", alpha=0.2, budget=123)
    fitted = fit_budget(CARDS, D, spec, 30_000)
    assert fitted.budget is None and fitted.alpha == 0.2
    d0 = fitted.base_width
    assert 1 < d0 < D and embedding_parameters(CARDS, D, fitted) <= 30_000
    assert embedding_parameters(CARDS, D, fitted.with_(base_width=d0 + 1)) > 30_000
    with pytest.raises(ValueError, match="below the smallest embedding.*md base_width=1"):
        fit_budget(CARDS, D, spec, 100)


@pytest.mark.parametrize(("settings", "message"), [
    ({"alpha": -0.1}, "alpha must be a number >= 0, got -0.1"),
    ({"base_width": 0}, "base_width must be an int >= 1, got 0"),
    ({"base_width": 4, "budget": 100}, "give base_width or budget, not both"),
    ({"multiple_of": 2.0}, "multiple_of must be an int >= 1, got 2.0"),
    ({"round_pow2": 1}, "round_pow2 must be true or false, got 1"),
    ({"init": "default"}, r"init must be one of \('reference', 'xavier', 'unit_norm'\)"),
    ({"collisions": 4}, "scheme 'md' has no setting 'collisions'"),
])  # fmt: skip
def test_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingSpec("md", **settings)
