"""The mixed-dimension scheme (``scheme: md``): widths planned across the collection equal
``md_widths``, counts are exact, each feature is its table times its projection, the TorchRec
collection agrees (and refuses unshardable widths), and ``fit_budget`` turns the base width."""

from __future__ import annotations

import pytest
import torch

from compemb.config import load_config_text
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
                                    {"table_budget": 10**8, "round_pow2": True}],
                         ids=["d0", "multiple4", "budget-pow2"])
def test_widths_are_md_widths_over_the_collection(alpha: float, sizing: dict) -> None:
    cards = list(CRITEO_KAGGLE_CARDINALITIES)
    spec = EmbeddingSpec("md", alpha=alpha, cap_at_full=False, **sizing)
    plans = plan_collection(cards, D, spec, sizing=True)
    rule = {"budget" if k == "table_budget" else k: v for k, v in sizing.items()}
    expected = [min(w, D) for w in md_widths(cards, alpha, **rule)]
    assert [p.tables[0].width for p in plans] == expected
    assert sum(p.num_parameters for p in plans) == md_parameters(cards, expected, D)
    if alpha == 0.0:
        assert len(set(expected)) == 1
    # capped (the default): a feature whose table and projection outweigh its full table
    # keeps the full table, width D
    capped = plan_collection(cards, D, spec.with_(cap_at_full=True), sizing=True)
    kept = [w if w == D or n * w + D * w <= n * D else D
            for n, w in zip(cards, expected, strict=True)]
    assert [p.tables[0].width for p in capped] == kept


def reference_md(cardinalities: list[int], alpha: float, threshold: int, d0: int
                 ) -> tuple[list[int], int]:
    """The reference DLRM at d45342e, restated: ``md_solver(n, alpha, d0=m_spa,
    round_dim=False)`` over every feature (sorted by n; float32 as there; the smallest feature
    set to d0, the others max(1, .) and rounded), then ``create_emb``: a feature of n <=
    ``--md-threshold`` at width max(widths) = d0 with no projection, the others at their width
    with a (d0, w) projection where w < d0. Returns (widths, parameters)."""
    n, order = torch.sort(torch.tensor(cardinalities))
    lam = d0 * n[0].float() ** alpha
    d = torch.ones(len(n)) * lam * n.float() ** -alpha
    d = torch.where(d < 1, torch.ones(()), d)
    d[0] = d0
    solved = [0] * len(n)
    for i, f in enumerate(order.tolist()):
        solved[f] = int(torch.round(d[i]))
    base = max(solved)
    widths = [w if c > threshold else base for c, w in zip(cardinalities, solved, strict=True)]
    params = sum(c * w + (w * base if w < base else 0)
                 for c, w in zip(cardinalities, widths, strict=True))
    return widths, params


# Worked once by reference_md and checked by hand at a few features: alpha 0.3, n = 4 gets
# round(16 (3/4)^0.3) = round(14.68) = 15; alpha 0.2, n = 24 round(16 (3/24)^0.2) = 11; with
# threshold 200 the eight features of <= 200 categories go to 16 and the count moves by
# sum n (16 - w) - 16 w over them (+616 at alpha 0.3).
KAGGLE_MD = {
    (0.0, 0): ([16] * 26, 540_201_232),
    (0.0, 200): ([16] * 26, 540_201_232),
    (0.2, 0): ([5, 6, 1, 1, 6, 11, 3, 5, 16, 2, 4, 1, 4, 10, 3, 1, 13, 4, 4, 15, 1, 11, 12, 2,
                8, 2], 34_406_355),
    (0.2, 200): ([5, 6, 1, 1, 6, 16, 3, 5, 16, 2, 4, 1, 4, 16, 3, 1, 16, 4, 4, 16, 1, 16, 16, 2,
                  16, 2], 34_406_381),
    (0.3, 0): ([3, 3, 1, 1, 4, 9, 1, 3, 16, 1, 2, 1, 2, 8, 1, 1, 11, 2, 2, 15, 1, 9, 10, 1, 6,
                1], 33_788_516),
    (0.3, 200): ([3, 3, 1, 1, 4, 16, 1, 3, 16, 1, 2, 1, 2, 16, 1, 1, 16, 2, 2, 16, 1, 16, 16, 1,
                  16, 1], 33_789_132),
}  # fmt: skip


@pytest.mark.parametrize(("alpha", "threshold"), list(KAGGLE_MD))
def test_threshold_keeps_the_reference_widths(alpha: float, threshold: int) -> None:
    """Widths over every feature, then the thresholded ones full: the reference's
    ``--md-flag --md-threshold`` on the Kaggle cardinalities."""
    cards = list(CRITEO_KAGGLE_CARDINALITIES)
    widths, params = KAGGLE_MD[alpha, threshold]
    assert reference_md(cards, alpha, threshold, D) == (widths, params)
    # as the reference builds them: no feature kept full for its bytes (cap_at_full)
    spec = EmbeddingSpec("md", alpha=alpha, threshold=threshold, cap_at_full=False)
    plans = plan_collection(cards, D, spec, sizing=True)
    assert [p.tables[0].width for p in plans] == widths
    assert embedding_parameters(cards, D, spec) == params
    for p in plans:  # at or below the threshold: the full table, no projection
        kept = p.num_categories <= threshold
        assert p.spec.scheme == ("full" if kept else "md")
        assert [q.name for q in p.params] == ["weight"] + (["projection"] if p.tables[0].width
                                                          < D else [])


def test_widths_over_the_compressed_features_only_stay_a_setting() -> None:
    """compemb's planning before the reference's: the thresholded features leave first, so
    d0 goes to the smallest compressed feature (305 categories) and the rest come out wider."""
    cards = list(CRITEO_KAGGLE_CARDINALITIES)
    spec = EmbeddingSpec("md", alpha=0.3, threshold=200, widths_over_all=False)
    assert embedding_parameters(cards, D, spec) == 34_774_817
    big = [n for n in cards if n > 200]
    plans = plan_collection(cards, D, spec, sizing=True)
    assert [p.tables[0].width for p in plans if p.num_categories > 200] == \
        md_widths(big, 0.3, base_width=D)
    loaded = load_config_text("model: {embedding: {scheme: md, threshold: 200}}", "old")
    assert loaded.model.embedding.widths_over_all  # a config without the key: the reference


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


@pytest.mark.parametrize("init", ["reference", "ldim"])
def test_bias_is_added_once_per_id_of_a_bag(init: str) -> None:
    """With ``bias`` category i is P T[i] + b: a bag of L ids sums to P (sum of rows) + L b,
    its mean is P (mean row) + b, per-sample weights scale each b, an empty bag is 0; the
    init rule draws the table, projection and bias as stated (``ldim``: the CCE authors')."""
    torch.manual_seed(0)
    n, w = 40, 4
    bag = make_embedding_bag(n, D, EmbeddingSpec("md", base_width=w, bias=True, init=init))
    t, p, b = bag.weight, bag.projection, bag.bias
    assert b.shape == (D,) and b.abs().max() <= 1 / w**0.5  # nn.Linear's draw for w inputs
    bound = (1 / w**0.5) if init == "ldim" else (1 / n) ** 0.5
    assert t.abs().max() <= bound and t.abs().max() > 0.8 * bound
    if init == "ldim":
        assert p.abs().max() <= (w / D) ** 0.5
    values, offsets = torch.tensor([3, 7, 7, 39, 5]), torch.tensor([0, 3, 3])
    per_id = t[values] @ p.t() + b
    got = bag(values, offsets)
    torch.testing.assert_close(got[0], t[values[:3]].sum(0) @ p.t() + 3 * b)
    torch.testing.assert_close(got[1], torch.zeros(D))  # empty bag
    torch.testing.assert_close(got[2], per_id[3:].sum(0))
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25])
    weighted = bag(values, offsets, weights)
    torch.testing.assert_close(weighted[0], (weights[:3, None] * t[values[:3]]).sum(0) @ p.t()
                               + 3.5 * b)
    mean = make_embedding_bag(n, D, EmbeddingSpec("md", base_width=w, bias=True, mode="mean"))
    mean.load_state_dict(bag.state_dict())
    torch.testing.assert_close(mean(values, offsets)[0], t[values[:3]].mean(0) @ p.t() + b)
    plan = plan_collection([n], D, EmbeddingSpec("md", base_width=w, bias=True))[0]
    assert [(q.name, q.shape) for q in plan.params] == [("weight", (n, w)),
                                                        ("projection", (D, w)), ("bias", (D,))]
    assert bag.num_parameters == plan.num_parameters == n * w + D * w + D


def test_bias_routes_md_per_id_on_torchrec() -> None:
    """A bias does not commute with pooling: such a feature's table is looked up per id and
    pooled after the projection (bias-free ones stay pooled); a bag of 3 ids holds 3 b."""
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecSparseArch

    torch.manual_seed(0)
    cards = [5, 1000, 250]
    plain = TorchRecSparseArch(cards, 8, EmbeddingSpec("md", alpha=0.5, base_width=8,
                                                       multiple_of=4))
    assert [r.pooled for r in plain.collection.routes] == [True, True, True]
    spec = EmbeddingSpec("md", alpha=0.5, base_width=8, multiple_of=4, bias=True)
    ebc = EmbeddingBagCollection(cards, 8, spec)
    arch = TorchRecSparseArch(cards, 8, spec, plans=ebc.plans)
    assert [r.pooled for r in arch.collection.routes] == [True, False, False]
    arch.load_local_state_dict(ebc.state_dict())
    ids = torch.tensor([[0], [4]])
    bags = [(torch.tensor([1, 2, 200]), torch.tensor([0, 3])),
            (torch.tensor([9, 9, 9, 1]), torch.tensor([0, 1]))]
    out = arch(ids, bags)
    torch.testing.assert_close(out, ebc(ids, bags), rtol=0, atol=1e-6)
    state = ebc.state_dict()
    t, p, b = (state[f"features.1.{k}"] for k in ("weight", "projection", "bias"))
    torch.testing.assert_close(out[0, 1], t[[1, 2, 200]].sum(0) @ p.t() + 3 * b)


def test_torchrec_refuses_widths_fbgemm_cannot_shard() -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    spec = EmbeddingSpec("md", alpha=0.3, base_width=8)
    with pytest.raises(ValueError, match=r"a table of width 2 \(feature of 1000 categories\) is "
                                         r"not a multiple of 4.*multiple_of=4"):
        TorchRecEmbeddingCollection([5, 1000], 8, spec)


def test_fit_budget_picks_the_largest_base_width_that_fits() -> None:
    spec = EmbeddingSpec("md", alpha=0.2, table_budget=123)
    fitted = fit_budget(CARDS, D, spec, 30_000)
    assert fitted.table_budget is None and fitted.alpha == 0.2
    d0 = fitted.base_width
    assert 1 < d0 < D and embedding_parameters(CARDS, D, fitted) <= 30_000
    assert embedding_parameters(CARDS, D, fitted.with_(base_width=d0 + 1)) > 30_000
    with pytest.raises(ValueError, match="below the smallest md embedding.*at base_width=1,"):
        fit_budget(CARDS, D, spec, 100)


@pytest.mark.parametrize(("settings", "message"), [
    ({"alpha": -0.1}, "alpha must be a number >= 0, got -0.1"),
    ({"base_width": 0}, "base_width must be an int >= 1, got 0"),
    ({"base_width": 4, "table_budget": 100}, "give base_width or table_budget, not both"),
    ({"multiple_of": 2.0}, "multiple_of must be an int >= 1, got 2.0"),
    ({"round_pow2": 1}, "round_pow2 must be true or false, got 1"),
    ({"widths_over_all": "yes"}, "widths_over_all must be true or false, got 'yes'"),
    ({"bias": 1}, "bias must be true or false, got 1"),
    ({"init": "default"}, r"init must be one of \('reference', 'xavier', 'unit_norm', 'ldim'\)"),
    ({"collisions": 4}, "scheme 'md' has no setting 'collisions'"),
])  # fmt: skip
def test_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingSpec("md", **settings)


def test_an_old_integer_budget_is_the_table_budget_with_a_warning() -> None:
    """``budget`` was MD's target sum of n w before ``model.embedding.budget`` took the name."""
    config_text = "model: {embedding: {scheme: md, alpha: 0.3, budget: 20000}}"
    with pytest.warns(FutureWarning, match="budget=20000 is read as table_budget=20000"):
        old = load_config_text(config_text, "old.yaml").model.embedding
    assert old == EmbeddingSpec("md", alpha=0.3, table_budget=20_000, sparse=True)
    assert old.budget is None
    assert "budget" not in old.to_dict() and old.to_dict()["table_budget"] == 20_000
    with pytest.raises(ValueError, match="give table_budget=5 or the old budget=7, not both"):
        EmbeddingSpec("md", table_budget=5, budget=7)
    new = EmbeddingSpec("md", alpha=0.3, budget="2e4")  # text: a memory budget
    assert new.budget_pending and new.table_budget is None
