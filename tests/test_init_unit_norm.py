"""The unit_norm init rule: bounds by hand, the composed vectors' norm, and that the width D
reaches the rule through the plan and the module."""

from __future__ import annotations

import math

import pytest
import torch

from compemb.embeddings import make_embedding_bag
from compemb.operations import INIT_RULES, get_operation, register_init_rule, table_bounds
from compemb.spec import EmbeddingSpec, plan_feature


@pytest.mark.parametrize(("op", "k", "d", "c"), [
    ("mult", 2, 16, math.sqrt(3) / 2),        # (c^2/3)^2 = 1/16
    ("mult", 3, 8, math.sqrt(3) / math.sqrt(2)),  # (c^2/3)^3 = 1/8
    ("add", 2, 8, math.sqrt(3 / 16)),          # 2 c^2/3 = 1/8
    ("concat", 2, 12, 0.5),                    # c^2/3 = 1/12
])
def test_unit_norm_bounds_by_hand(op: str, k: int, d: int, c: float) -> None:
    assert "unit_norm" in INIT_RULES
    got = table_bounds(get_operation(op), k, 10_000, "unit_norm", embedding_dim=d)
    assert [x for b in got for x in b] == pytest.approx([-c, c] * k)


def test_unit_norm_needs_the_width() -> None:
    with pytest.raises(ValueError, match="unit_norm scales with the composed width D"):
        table_bounds(get_operation("mult"), 2, 10_000, "unit_norm")


@pytest.mark.parametrize("op", ["mult", "add", "concat"])
def test_unit_norm_vectors_have_norm_about_one(op: str) -> None:
    torch.manual_seed(0)
    n, d = 40_000, 32
    bag = make_embedding_bag(n, d, scheme="qr", operation=op, collisions=200, init="unit_norm")
    sq = bag(torch.arange(n).view(-1, 1)).pow(2).sum(1)
    # mean squared norm 1; a rule off by a factor sqrt(2) in c is off by 2x (mult) here
    assert float(sq.mean().detach()) == pytest.approx(1.0, rel=0.05)


def test_unit_norm_reaches_the_plan() -> None:
    plan = plan_feature(10_000, 16, EmbeddingSpec("qr", "mult", collisions=4, init="unit_norm"))
    c = math.sqrt(3) / 2
    assert [x for t in plan.tables for x in t.bounds] == pytest.approx([-c, c] * 2)


def test_rules_of_three_arguments_still_register() -> None:
    def halves(operation, k, n):
        return [(-0.5, 0.5)] * k

    assert register_init_rule("test_halves", halves) is halves
    try:
        assert table_bounds(get_operation("add"), 2, 100, "test_halves", embedding_dim=8) == \
            [(-0.5, 0.5)] * 2
    finally:
        del INIT_RULES["test_halves"]
