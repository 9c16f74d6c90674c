"""The compiled two-table product (csrc/compose_mult.c) equals the pure-torch node."""

import pytest
import torch

from compemb import _kernels
from compemb.embeddings import _fused
from compemb.embeddings._fused import compose_lookup

pytestmark = pytest.mark.skipif(_kernels._load() is None,
                                reason="compiled kernels not built (make kernels)")  # fmt: skip


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("sparse", [(True, False), (False, True), (True, True), (False, False)])
def test_compiled_mult_equals_pure_torch(masked, large, sparse, monkeypatch):
    if large:  # the first table's gathered rows are kept for the backward
        monkeypatch.setattr(_fused, "_KEEP_ROWS", 0)
    torch.manual_seed(0)
    weights = [torch.randn(50, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)]
    buckets = [torch.randint(0, 50, (40, 5)), torch.randint(0, 4, (40, 5))]
    absent = [None, torch.tensor([1, 3]) if masked else None]
    assert _kernels.mult2_applies(weights, [b.reshape(-1) for b in buckets])
    out = compose_lookup("mult", buckets, weights, sparse, absent)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, weights, g)
    monkeypatch.setattr(_kernels, "mult2_applies", lambda *args: False)
    expect = compose_lookup("mult", buckets, weights, sparse, absent)
    want = torch.autograd.grad(expect, weights, g)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    for a, b, is_sparse in zip(got, want, sparse, strict=True):
        assert a.is_sparse == b.is_sparse == is_sparse
        torch.testing.assert_close(a.to_dense() if is_sparse else a,
                                   b.to_dense() if is_sparse else b)  # fmt: skip


def test_compiled_mult_refuses_rows_out_of_range():
    weights = [torch.randn(5, 2), torch.randn(3, 2)]
    with pytest.raises(IndexError):
        compose_lookup("mult", [torch.tensor([[5]]), torch.tensor([[0]])], weights, [False] * 2)
