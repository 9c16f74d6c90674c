"""The unit_tail init rule (mult): bounds by hand, and the composed vectors' variance."""

from __future__ import annotations

import math

import pytest
import torch

from compemb.operations import INIT_RULES, full_table_bound, get_operation, table_bounds


def test_unit_tail_bounds_by_hand() -> None:
    assert "unit_tail" in INIT_RULES
    a = full_table_bound(10_000)
    (lo, hi), tail = table_bounds(get_operation("mult"), 2, 10_000, "unit_tail")
    assert (lo, hi) == pytest.approx((-a * math.sqrt(3), a * math.sqrt(3))) and tail == (-1.0, 1.0)
    assert table_bounds(get_operation("mult"), 3, 10_000, "unit_tail")[0][1] == pytest.approx(3 * a)
    for op in ("concat", "add"):  # the library's bounds for the other operations
        assert table_bounds(get_operation(op), 2, 10_000, "unit_tail") == table_bounds(
            get_operation(op), 2, 10_000
        )


def test_unit_tail_product_has_the_full_tables_variance() -> None:
    n, k = 10_000, 3
    gen = torch.Generator().manual_seed(0)
    parts = [torch.empty(200_000).uniform_(lo, hi, generator=gen)
             for lo, hi in table_bounds(get_operation("mult"), k, n, "unit_tail")]  # fmt: skip
    product = parts[0] * parts[1] * parts[2]
    assert float(product.mean()) == pytest.approx(0.0, abs=2e-4)
    assert float(product.var()) == pytest.approx(full_table_bound(n) ** 2 / 3, rel=0.05)
