import pytest
import torch

from compemb.embeddings import _fused
from compemb.embeddings._fused import compose_lookup


def _reference(operation, buckets, weights, absent):
    identity = 1.0 if operation == "mult" else 0.0
    parts = []
    for b, w, a in zip(buckets, weights, absent, strict=True):
        p = w[b]
        if a is not None:
            present = torch.ones(b.shape[-1], dtype=torch.bool)
            present[a] = False
            p = torch.where(present.unsqueeze(-1), p, identity)
        parts.append(p)
    if operation == "concat":
        return torch.cat(parts, -1)
    out = parts[0]
    for p in parts[1:]:
        out = out + p if operation == "add" else out * p
    return out


@pytest.fixture(params=[_fused.CHUNK, 5], ids=["one-chunk", "chunks-of-5"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(_fused, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("operation", ["concat", "add", "mult"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("large", [False, True])
def test_compose_lookup_matches_autograd(operation, k, masked, large, chunk, monkeypatch):
    if large:  # tables above _KEEP_ROWS: mult keeps their gathered rows for the backward
        monkeypatch.setattr(_fused, "_KEEP_ROWS", 0)
    torch.manual_seed(k)
    rows = [7, 3, 5][:k]
    widths = [2, 3, 1][:k] if operation == "concat" else [4] * k
    weights = [torch.randn(r, w, dtype=torch.float64, requires_grad=True)
               for r, w in zip(rows, widths, strict=True)]
    buckets = [torch.randint(0, r, (6, 3)) for r in rows]  # 6 rows of 3 features
    use = masked and operation != "concat"
    masks = [torch.tensor([1]) if use and j == 1 else torch.tensor([0, 2]) if use and j == 2
             else None for j in range(k)]  # features without table j
    assert torch.autograd.gradcheck(
        lambda *ws: compose_lookup(operation, buckets, ws, [False] * k, masks), tuple(weights)
    )
    for sparse in ([True] * k, [False] * k):
        out = compose_lookup(operation, buckets, weights, sparse, masks)
        expect = _reference(operation, buckets, weights, masks)
        torch.testing.assert_close(out, expect)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, weights, g)
        want = torch.autograd.grad(expect, weights, g)
        for a, b, is_sparse in zip(got, want, sparse, strict=True):
            assert a.is_sparse == is_sparse
            torch.testing.assert_close(a.to_dense() if is_sparse else a, b)
