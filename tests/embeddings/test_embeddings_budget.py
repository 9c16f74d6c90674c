"""The budget helper: collisions (and hot rows) for a target number of parameters, and the
memory budgets of any scheme a config gives (``model.embedding.budget``)."""

import numpy as np
import pytest

from compemb.embeddings import SCHEMES, EmbeddingBagCollection, EmbeddingSpec, resolve_spec
from compemb.embeddings.budget import (
    TOLERANCE,
    embedding_bytes,
    embedding_parameters,
    fit_budget,
    resolve_budget,
)
from compemb.spec import plan_collection
from schemekit import SCHEME_SPECS, SPECS, kit_counts, spec_id

CARDS = [10_000, 500, 3]


def test_counts_match_the_collection():
    counts = [np.arange(n)[::-1].copy() for n in CARDS]
    for spec in (EmbeddingSpec("qr", collisions=4, hot=50, order="interleaved"),
                 EmbeddingSpec("qr", "concat", collisions=7, hot=5),
                 EmbeddingSpec("path", collisions=4, path_hidden=8),
                 EmbeddingSpec("hash", collisions=3, hot=9)):
        ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=counts)
        assert embedding_parameters(CARDS, 8, spec) == ebc.num_parameters


@pytest.mark.parametrize("budget", [5_000, 20_000, 60_000])
@pytest.mark.parametrize("hot_share", [None, 0.25])
def test_fit_budget_is_the_closest_from_below(budget, hot_share):
    spec = fit_budget(CARDS, 8, EmbeddingSpec("qr", collisions=2), budget, hot_share=hot_share)
    size = embedding_parameters(CARDS, 8, spec)
    assert size <= budget
    # one collision fewer would not fit
    fewer = spec.collisions - 1
    assert fewer < 2 or embedding_parameters(CARDS, 8, spec.with_(collisions=fewer)) > budget
    if hot_share:
        assert spec.hot == int(hot_share * budget / (8 * 3))


def test_fit_budget_says_when_it_cannot():
    with pytest.raises(ValueError, match="below the smallest qr embedding"):
        fit_budget(CARDS, 8, EmbeddingSpec("qr", collisions=2), 100)


# --- budgets of any scheme: model.embedding.budget ----------------------------------------

SMALL = [4000, 900, 50, 7]
D = 16
SIZED = sorted(name for name in SCHEMES.names() if SCHEMES.lookup(name).knob is not None)


def _budgeted(name: str, budget: str) -> EmbeddingSpec:
    """The shared list's first spec of scheme ``name``, its size settings replaced by a budget."""
    template = SCHEME_SPECS[name][0]
    owner = template.owner
    flat = {k: v for k, v in template.to_dict().items() if k not in {owner.knob, *owner.sizes}}
    return EmbeddingSpec(**flat, budget=budget)


@pytest.mark.parametrize("name", SIZED)
def test_every_registered_scheme_resolves_a_ratio_budget(name: str) -> None:
    # 3x: every scheme's settings reach it here (MD's widths, rounded up to multiples of 4,
    # stop near 4x; QR concat and CRT start at 4x)
    spec = _budgeted(name, "3x")
    knob = spec.owner.knob
    assert spec.budget_pending and knob not in spec.to_dict()
    with pytest.raises(ValueError, match=f"budget 3x has not chosen {knob} yet"):
        plan_collection(SMALL, D, spec, sizing=True)
    resolved = resolve_budget(spec, SMALL, D)
    full = sum(SMALL) * D
    # from below, and within the tolerance: the frontier's compression, 3x to 4.5x
    assert full / 3 / TOLERANCE <= embedding_parameters(SMALL, D, resolved) <= full / 3
    assert not resolved.budget_pending and resolved.budget == spec.budget
    assert resolved.to_dict()["budget"] == "3x" and resolved.to_dict()[knob] is not None
    assert EmbeddingSpec(**resolved.to_dict()) == resolved  # what config.yaml keeps reads back
    assert resolve_budget(resolved, SMALL, D) is resolved  # a knob given is kept, once checked


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_bytes_are_what_the_collection_holds_id_maps_included(spec: EmbeddingSpec) -> None:
    """The bytes a budget counts are the frontier's embedding memory: the built collection's
    parameters and id maps."""
    ebc = EmbeddingBagCollection(SMALL, D, spec, counts=kit_counts(spec, SMALL), device="meta")
    assert embedding_bytes(SMALL, D, spec) == ebc.num_bytes + ebc.index_bytes


def test_a_bytes_budget_counts_the_id_maps() -> None:
    cards, d = [20_000, 500], 8
    spec = EmbeddingSpec("qr", "mult", order="frequency", budget="200kB")  # maps: 4 B per id
    fitted = resolve_budget(spec, cards, d)
    params = embedding_parameters(cards, d, fitted)
    assert embedding_bytes(cards, d, fitted) == 4 * params + 4 * sum(cards) <= 200_000
    # the same bytes as a parameter budget (4 bytes each) leaves the maps out: larger tables
    as_params = resolve_budget(spec.with_(budget=str(200_000 // 4)), cards, d)
    assert as_params.collisions < fitted.collisions
    assert embedding_bytes(cards, d, as_params) > 200_000
    hot = fit_budget(cards, d, EmbeddingSpec("hash", collisions=2), "100kB", hot_share=0.2)
    assert hot.hot == int(0.2 * 100_000 / (4 * d * 2))  # hot rows cost 4 D bytes each


def test_budgets_out_of_reach_name_the_smallest_and_largest() -> None:
    below = r"budget 1000x \(79 parameters\) is below the smallest qr embedding of these " \
            r"features: they reach from [\d,]+ parameters at collisions=\d+, [\d.]+x to " \
            r"[\d,]+ parameters at collisions=2, 2.0x; raise the budget"
    with pytest.raises(ValueError, match=below):
        resolve_budget(EmbeddingSpec("qr", budget="1000x"), SMALL, D)
    above = r"budget 1.2x \([\d,]+ parameters\) is out of reach of scheme 'hash' on these " \
            r"features: they reach from .* to [\d,]+ parameters at collisions=2, 2.0x; the " \
            r"largest that fits \([\d,]+ parameters at collisions=2, 2.0x\) is more than 1.5x"
    with pytest.raises(ValueError, match=above):
        resolve_budget(EmbeddingSpec("hash", budget="1.2x"), SMALL, D)
    # a knob that grows without limit: no largest
    with pytest.raises(ValueError, match=r"from [\d,]+ bytes at size=4 upward; raise the budget"):
        resolve_budget(EmbeddingSpec("robe", budget="10B"), SMALL, D)
    # md's widths stop at D: its largest is at base_width=D
    with pytest.raises(ValueError, match=r"to [\d,]+ parameters at base_width=16, [\d.]+x; the "
                                         r"largest that fits"):
        resolve_budget(EmbeddingSpec("md", alpha=0.5, budget="1x"), SMALL, D)


def test_a_knob_given_with_a_budget_is_checked_not_replaced() -> None:
    spec = EmbeddingSpec("qr", collisions=3, budget="2x")
    assert not spec.budget_pending and resolve_budget(spec, SMALL, D) is spec
    with pytest.raises(ValueError, match=r"budget 16x: collisions=3 gives [\d,]+ parameters, "
                                         r"over the budget's [\d,]+; leave collisions out"):
        resolve_budget(spec.with_(budget="16x"), SMALL, D)


def test_a_spec_with_a_budget_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="scheme 'full' has no size setting for budget=4x"):
        EmbeddingSpec("full", budget="4x")
    with pytest.raises(ValueError, match="budget=4x chooses collisions of scheme 'qr'; leave out "
                                         "k=3"):
        EmbeddingSpec("qr", k=3, budget="4x")
    with pytest.raises(ValueError, match="budget '4y'"):
        EmbeddingSpec("qr", budget="4y")
    pending = EmbeddingSpec("robe", block=8, budget="4x")  # placeholder: one block of 8
    with pytest.raises(AttributeError, match="size is not chosen yet: budget 4x chooses it"):
        _ = pending.size
    assert pending.block == 8 and pending.with_(scheme="tt").budget_pending  # any scheme's
    assert resolve_spec(EmbeddingSpec("qr", collisions=4, budget="4x"), 3).budget is None
    assert EmbeddingSpec("qr", collisions=4).to_dict().keys() == \
        EmbeddingSpec("qr", collisions=4, budget=None).to_dict().keys()  # no key without one
