"""The compiled kernels equal the pure-torch code: the two-table product (csrc/compose_mult.c),
the universal hashes with DHE's uniform encoding and their per-column form
(csrc/universal_hash.c), ROBE's unaligned blocks (csrc/robe_blocks.c) and TT-Rec's chain
(csrc/tt_chain.c)."""

import math

import pytest
import torch

from compemb import _kernels
from compemb.embeddings import _fused
from compemb.embeddings._fused import compose_lookup
from compemb.embeddings._universal import PRIME, hash_coefficients, universal_hash
from compemb.embeddings.batched_robe import block_dense_grad, block_row_grads, unaligned_blocks
from compemb.embeddings.dhe import HASH_BUCKETS, dhe_encoding
from compemb.embeddings.tt import tt_chain, tt_lookup
from compemb.optim.fused import FusedAdagrad

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


needs_hash_kernel = pytest.mark.skipif(
    _kernels._load() is None or not _kernels._state.get("hash"),
    reason="the hash kernel is not in this build (make kernels)")


def _hash_ids() -> torch.Tensor:
    """Both ends of [0, P), ids just below powers of 2, and random ones."""
    edges = [0, 1, 2, PRIME - 2, PRIME - 1, 2**24 - 1, 2**24, 2**30 + 7]
    return torch.cat([torch.tensor(edges), torch.randint(0, PRIME, (3000,),
                                                          generator=torch.Generator().manual_seed(0))])


@needs_hash_kernel
@pytest.mark.parametrize("buckets", [1, 2, 7, 1000, HASH_BUCKETS, PRIME - 1, PRIME])
def test_compiled_hash_equals_pure_torch(buckets, monkeypatch):
    ids, co = _hash_ids(), hash_coefficients(33, 5)
    assert _kernels.universal_hash(ids, co, buckets) is not None
    co[:, 0] = torch.tensor([PRIME - 1, PRIME - 1])  # the largest a and b
    got = universal_hash(ids, co, buckets)
    monkeypatch.setattr(_kernels, "universal_hash", lambda *args: None)
    torch.testing.assert_close(got, universal_hash(ids, co, buckets), rtol=0, atol=0)


@pytest.mark.skipif(_kernels._load() is None or not _kernels._state.get("hash_columns"),
                    reason="the per-column hash kernel is not in this build (make kernels)")
@pytest.mark.parametrize("buckets", [1, 7, 1000, PRIME])
def test_compiled_per_column_hash_equals_pure_torch_and_each_column_alone(buckets, monkeypatch):
    ids = _hash_ids()[:3006].view(-1, 3)  # (B, G): every edge id in some column
    co = torch.stack([hash_coefficients(5, (7, c)) for c in range(3)]).to(torch.int32)
    co[1, :, 0] = PRIME - 1  # the largest a and b
    got = universal_hash(ids, co, buckets)
    assert got.shape == (1002, 3, 5)
    for c in range(3):  # column c hashed with its own coefficients
        torch.testing.assert_close(got[:, c], universal_hash(ids[:, c], co[c], buckets),
                                   rtol=0, atol=0)
    monkeypatch.setattr(_kernels, "universal_hash", lambda *args: None)
    torch.testing.assert_close(got, universal_hash(ids, co, buckets), rtol=0, atol=0)


needs_robe_kernel = pytest.mark.skipif(
    _kernels._load() is None or not _kernels._state.get("robe"),
    reason="the ROBE block kernel is not in this build (make kernels)")


@needs_robe_kernel
@pytest.mark.parametrize("sparse", [False, True])
def test_compiled_robe_blocks_equal_pure_torch(sparse, monkeypatch):
    """Blocks read and their rows' gradients, the last rows and wrap-around included."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 4, generator=gen, requires_grad=True)
    edges = torch.tensor([0, 1, 3, 4, 23, 24, 25, 27])  # M = 28: blocks from 25 on wrap
    offsets = torch.cat([edges, torch.randint(0, 28, (40,), generator=gen)]).view(-1, 4)
    probe = torch.randn(12, 16, generator=gen)
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(_kernels, "robe_read", lambda *args: None)
            monkeypatch.setattr(_kernels, "robe_row_grads", lambda *args: None)
            monkeypatch.setattr(_kernels, "robe_dense_grad", lambda *args: None)
        weight.grad = None
        out = unaligned_blocks(weight, offsets, sparse)
        (out * probe).sum().backward()
        rows, values = block_row_grads((7, 4), offsets.view(-1), probe.view(-1, 4))
        dense = block_dense_grad((7, 4), offsets.view(-1), probe.view(-1, 4))
        torch.testing.assert_close(dense, weight.grad.to_dense())
        results.append((out, weight.grad.to_dense(), rows, values, dense))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    flat = weight.detach().view(-1)
    assert results[0][0][0, :4].tolist() == flat[:4].tolist()  # offset 0
    assert results[0][0][1, 12:].tolist() == flat[[27, 0, 1, 2]].tolist()  # offset 27 wraps


@needs_robe_kernel
def test_compiled_robe_blocks_refuse_offsets_outside_the_array():
    with pytest.raises(IndexError, match="outside the array"):
        unaligned_blocks(torch.randn(7, 4), torch.tensor([[28]]), False)


@needs_hash_kernel
@pytest.mark.parametrize("encoding", ["uniform", "gaussian"])
def test_compiled_dhe_encoding_equals_pure_torch(encoding, monkeypatch):
    ids, co = _hash_ids(), hash_coefficients(64, 2)
    assert _kernels.hash_affine(ids, co, HASH_BUCKETS, 1.0, 0.0) is not None
    got = dhe_encoding(ids, co, encoding)
    monkeypatch.setattr(_kernels, "hash_affine", lambda *args: None)
    monkeypatch.setattr(_kernels, "universal_hash", lambda *args: None)
    torch.testing.assert_close(got, dhe_encoding(ids, co, encoding), rtol=0, atol=0)


@needs_hash_kernel
def test_compiled_hash_refuses_ids_outside_the_prime():
    with pytest.raises(IndexError, match="outside"):
        universal_hash(torch.tensor([PRIME]), hash_coefficients(2, 0), 10)


needs_tt_kernel = pytest.mark.skipif(
    _kernels._load() is None or not _kernels._state.get("tt"),
    reason="the TT chain kernel is not in this build (make kernels)")

# (dims, ranks): K = 1 to 4, unequal ranks, and core widths that take the kernel's 32- and
# 8-column blocks and its scalar tail (w = 2 * 24 = 48, 3 * 5 = 15, 1 * 3 = 3). The kernel
# chains left to right where that costs no more multiply-adds (K = 1, 2 and the first K = 4),
# right to left otherwise (4, 2, 2 at rank 24: 2,688 against 4,992; the second K = 4: 264
# against 312)
TT_SHAPES = [((16,), (1, 1)), ((4, 4), (1, 16, 1)), ((4, 2, 2), (1, 24, 24, 1)),
             ((2, 3, 1, 3), (1, 5, 7, 3, 1)), ((3, 1, 2, 2), (1, 4, 6, 5, 1))]


def _tt_tables(dims, ranks, rows, gen):
    return [torch.randn(rows[j], ranks[j] * dims[j] * ranks[j + 1], generator=gen,
                        requires_grad=True) for j in range(len(dims))]  # fmt: skip


@needs_tt_kernel
@pytest.mark.parametrize(("dims", "ranks"), TT_SHAPES)
@pytest.mark.parametrize("sparse", [False, True])
def test_compiled_tt_lookup_equals_pure_torch(dims, ranks, sparse, monkeypatch):
    """Forward and every core's gradient, ids repeated, dense and sparse gradients."""
    gen = torch.Generator().manual_seed(0)
    rows = [7, 3, 5, 2][: len(dims)]
    tables = _tt_tables(dims, ranks, rows, gen)
    buckets = [torch.randint(0, r, (30, 4), generator=gen) for r in rows]
    flags = [sparse and j % 2 == 0 for j in range(len(dims))]  # mixed where sparse
    results = []
    for compiled in (True, False):
        assert _kernels.tt_applies(tables, buckets) is True
        if not compiled:
            monkeypatch.setattr(_kernels, "tt_applies", lambda *args: False)
        out = tt_lookup(buckets, tables, flags, dims, ranks)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(out, tables, g)
        for grad, flag in zip(grads, flags, strict=True):
            assert grad.is_sparse == flag
        results.append((out, *(x.to_dense() for x in grads)))
    assert results[0][0].shape == (120, math.prod(dims))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_tt_kernel
@pytest.mark.parametrize(("dims", "ranks"), TT_SHAPES)
def test_compiled_tt_chain_equals_batched_matmuls(dims, ranks, monkeypatch):
    """The chain of rows gathered elsewhere (TorchRec's lookups), and an empty batch."""
    gen = torch.Generator().manual_seed(0)
    for n in (40, 0):
        rows = _tt_tables(dims, ranks, [n] * len(dims), gen)
        out = tt_chain(rows, dims, ranks)
        got = torch.autograd.grad(out, rows, torch.ones_like(out)) if n else ()
        with monkeypatch.context() as m:
            m.setattr(_kernels, "tt_applies", lambda *args: False)
            expect = tt_chain(rows, dims, ranks)
            want = torch.autograd.grad(expect, rows, torch.ones_like(out)) if n else ()
        assert out.shape == (n, math.prod(dims))
        torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_tt_kernel
def test_compiled_tt_lookup_feeds_the_fused_optimizer(monkeypatch):
    """Sparse cores routed to FusedAdagrad: forward, backward and two steps as the trainer runs
    them (no zero_grad in between), kernel against pure torch."""
    dims, ranks = (4, 2, 2), (1, 6, 6, 1)
    finals = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(_kernels, "tt_applies", lambda *args: False)
        gen = torch.Generator().manual_seed(0)
        tables = [nn_table for nn_table in map(torch.nn.Parameter,
                  (t.detach() for t in _tt_tables(dims, ranks, [9, 5, 9], gen)))]
        opt = FusedAdagrad(tables, lr=0.1, tables=tables)
        for _ in range(2):
            buckets = [torch.randint(0, r, (16, 3), generator=gen) for r in (9, 5, 9)]
            out = tt_lookup(buckets, tables, [True, False, True], dims, ranks)
            (out * torch.arange(16.0)).square().sum().backward()
            assert tables[0].grad is None and tables[1].grad is not None  # sunk, dense
            opt.step()
            opt.zero_grad()
        finals.append([t.detach().clone() for t in tables])
    for got, want in zip(*finals, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_tt_kernel
@pytest.mark.parametrize("sparse", [False, True])
def test_compiled_tt_chain_split_over_threads_equals_one_thread(sparse, monkeypatch):
    """Ids split over 3 threads (one kernel call each, dense gradients summed after) give the
    one-thread results: forward, gradients, and the chain of gathered rows."""
    dims, ranks = (4, 2, 2), (1, 6, 6, 1)
    gen = torch.Generator().manual_seed(0)
    tables = _tt_tables(dims, ranks, [7, 3, 5], gen)
    buckets = [torch.randint(0, r, (100,), generator=gen) for r in (7, 3, 5)]
    flags = [sparse, False, sparse]
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            monkeypatch.setattr(_kernels, "_TT_IDS_PER_THREAD", 16)
            assert len(_kernels._tt_spans(100)) == count
            out = tt_lookup(buckets, tables, flags, dims, ranks)
            grads = torch.autograd.grad(out, tables, torch.ones_like(out))
            rows = [t[b].detach().requires_grad_() for t, b in zip(tables, buckets, strict=True)]
            chained = tt_chain(rows, dims, ranks)
            row_grads = torch.autograd.grad(chained, rows, torch.ones_like(chained))
            results.append((out, *(g.to_dense() for g in grads), chained, *row_grads))
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_tt_kernel
def test_compiled_tt_lookup_refuses_rows_out_of_range():
    tables = _tt_tables((4, 4), (1, 2, 1), [3, 3], torch.Generator().manual_seed(0))
    with pytest.raises(IndexError, match="outside its table"):
        tt_lookup([torch.tensor([1]), torch.tensor([3])], tables, [False, False], (4, 4),
                  (1, 2, 1))
