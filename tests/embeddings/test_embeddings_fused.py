import pytest
import torch

from compemb.embeddings._fused import compose_lookup


def _reference(operation, buckets, weights):
    parts = [w[b] for b, w in zip(buckets, weights, strict=True)]
    if operation == "concat":
        return torch.cat(parts, -1)
    out = parts[0]
    for p in parts[1:]:
        out = out + p if operation == "add" else out * p
    return out


@pytest.mark.parametrize("operation", ["concat", "add", "mult"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_compose_lookup_matches_autograd(operation, k):
    torch.manual_seed(k)
    rows = [7, 3, 5][:k]
    widths = [2, 3, 1][:k] if operation == "concat" else [4] * k
    weights = [torch.randn(r, w, dtype=torch.float64, requires_grad=True)
               for r, w in zip(rows, widths, strict=True)]
    buckets = [torch.randint(0, r, (6, 2)) for r in rows]
    assert torch.autograd.gradcheck(
        lambda *ws: compose_lookup(operation, buckets, ws, [False] * k), tuple(weights)
    )
    out = compose_lookup(operation, buckets, weights, [True] * k)
    expect = _reference(operation, buckets, weights)
    torch.testing.assert_close(out, expect)
    g = torch.randn_like(out)
    sparse_grads = torch.autograd.grad(out, weights, g)
    dense_grads = torch.autograd.grad(expect, weights, g)
    for s, d in zip(sparse_grads, dense_grads, strict=True):
        assert s.is_sparse
        torch.testing.assert_close(s.to_dense(), d)
