"""MD combined with QR (``scheme: md_qr``): the head's private rows and the QR-composed tail at
MD-rule widths, each projected to D, against hand computation; exact counts, ``fit_budget``
turning collisions, features it cannot shrink kept full, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    make_embedding_bag,
)
from compemb.partitions import frequency_rank
from compemb.spec import plan_collection, plan_feature

CARDS = [3, 5000, 40, 777, 9000]
D = 16


def _counts(cards: list[int]) -> list[np.ndarray]:
    return [np.random.default_rng(f).zipf(1.4, n).astype(np.int64) for f, n in enumerate(cards)]


def test_layout_and_count_by_hand() -> None:
    # n = 5000: h = ceil(sqrt(5000)) = 71, tail 4929; w_t = round(16 * (71/4929)^0.3) =
    # round(4.48) = 4; c = 8: quotient ceil(4929/8) = 617 rows, remainder 8
    spec = EmbeddingSpec("md_qr", collisions=8, order="frequency")
    plan = plan_feature(5000, D, spec, sizing=True)
    assert round(16 * (71 / 4929) ** 0.3) == 4 and math.ceil(4929 / 8) == 617
    assert [(p.name, p.shape, p.role) for p in plan.params] == [
        ("head_weight", (71, 16), "table"), ("tail.weights.0", (617, 4), "table"),
        ("tail.weights.1", (8, 4), "table"), ("tail_projection", (16, 4), "dense"),
        ("relabel", (5000,), "map")]  # fmt: skip
    assert plan.num_parameters == 71 * 16 + 625 * 4 + 16 * 4 == 3700
    assert plan.operation.name == "mult"
    # a narrower head (d0 = 4, 71 rows: the projection pays) and add
    spec = EmbeddingSpec("md_qr", "add", collisions=8, base_width=4, alpha=0.0, order="frequency")
    names = [(p.name, p.shape) for p in plan_feature(5000, D, spec, sizing=True).params]
    assert names[:4] == [("head_weight", (71, 4)), ("tail.weights.0", (617, 4)),
                         ("tail.weights.1", (8, 4)), ("head_projection", (16, 4))]


def test_each_id_is_its_head_row_or_its_composed_tail_projected() -> None:
    torch.manual_seed(0)
    spec = EmbeddingSpec("md_qr", collisions=6, head=30, alpha=0.5, base_width=8,
                         order="frequency")
    counts = _counts(CARDS)
    ebc = EmbeddingBagCollection(CARDS, D, spec, counts=counts)
    assert ebc.specs[0].scheme == "full"  # 3 categories: no tail to compose
    state = ebc.state_dict()
    ids = torch.stack([torch.arange(40) * (n // 40) for n in CARDS], dim=1)
    ids[0] = torch.tensor([int(np.argmax(c)) for c in counts])  # the hottest: in the head
    out = ebc(ids)
    seen = set()

    def vector(f: int, i: int) -> torch.Tensor:
        rank = int(frequency_rank(counts[f])[i])
        s = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"features.{f}.")}
        if rank < 30:
            seen.add("head")
            v = s["head_weight"][rank]
            return s["head_projection"] @ v if "head_projection" in s else v
        seen.add("tail")
        t = rank - 30
        v = s["tail.weights.0"][t // 6] * s["tail.weights.1"][t % 6]
        return s["tail_projection"] @ v if "tail_projection" in s else v

    for f in range(1, len(CARDS)):
        want = torch.stack([vector(f, int(i)) for i in ids[:, f]])
        torch.testing.assert_close(out[:, f], want, rtol=0, atol=1e-6)
    assert seen == {"head", "tail"}
    assert "features.1.head_projection" in state and "features.1.tail_projection" in state
    assert ebc.num_parameters == embedding_parameters(CARDS, D, spec)


def test_fit_budget_turns_collisions() -> None:
    spec = EmbeddingSpec("md_qr", collisions=2, alpha=0.1, order="frequency")
    fitted = fit_budget(CARDS, D, spec, 12_000)
    c = fitted.collisions
    assert embedding_parameters(CARDS, D, fitted) <= 12_000
    assert embedding_parameters(CARDS, D, fitted.with_(collisions=c - 1)) > 12_000
    with pytest.raises(ValueError, match="below the smallest md_qr embedding"):
        fit_budget(CARDS, D, spec, 2_000)


def test_features_it_cannot_shrink_keep_their_full_table() -> None:
    spec = EmbeddingSpec("md_qr", collisions=6, order="frequency")
    plans = plan_collection([3, 10, 5000], D, spec, sizing=True)
    assert [p.spec.scheme for p in plans] == ["full", "full", "md_qr"]
    with pytest.raises(ValueError, match="the tail of 6 categories needs more than c"):
        make_embedding_bag(10, D, spec, counts=np.ones(10))


def test_order_must_be_frequency_and_collisions_given() -> None:
    with pytest.raises(ValueError, match="'md_qr' keeps private rows for the most frequent "
                                         "categories: set order: frequency"):
        EmbeddingSpec("md_qr", collisions=4)
    with pytest.raises(ValueError, match="scheme 'md_qr' needs collisions"):
        EmbeddingSpec("md_qr", order="frequency")
    with pytest.raises(ValueError, match="scheme 'md_qr' takes no hot rows"):
        EmbeddingSpec("md_qr", collisions=4, order="frequency", hot=2)


def test_torchrec_refuses_widths_fbgemm_cannot_shard() -> None:
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    spec = EmbeddingSpec("md_qr", collisions=8, alpha=0.2, order="frequency")
    with pytest.raises(ValueError, match=r"md_qr': table widths \[16, 7, 7\] \(feature of 5000 "
                                         r"categories\) are not all multiples of 4"):
        TorchRecEmbeddingCollection([5000], D, spec, counts=_counts([5000]))
