import math

import pytest
import torch
from torch.func import functional_call

from compemb import partitions as P
from compemb.embeddings import (
    CompositionalEmbeddingBag,
    FeatureEmbeddingBag,
    FullEmbeddingBag,
    HashEmbeddingBag,
    PathEmbeddingBag,
)

N = 50


def _modules(dtype=torch.float32):
    qr = P.quotient_remainder(N, 4)
    return {
        "concat": CompositionalEmbeddingBag(N, 6, qr, "concat", dtype=dtype),
        "add": CompositionalEmbeddingBag(N, 6, qr, "add", dtype=dtype),
        "mult": CompositionalEmbeddingBag(N, 6, qr, "mult", dtype=dtype),
        "mult3": CompositionalEmbeddingBag(N, 6, P.mixed_radix(N, (3, 4, 5)), "mult", dtype=dtype),
        "crt": CompositionalEmbeddingBag(N, 6, P.chinese_remainder(N, (7, 8)), "add", dtype=dtype),
        "path_mlp": PathEmbeddingBag(N, 6, qr, "mlp", hidden=5, dtype=dtype),
        "path_linear": PathEmbeddingBag(N, 6, P.mixed_radix(N, (3, 4, 5)), "linear", dtype=dtype),
        "path_gather": PathEmbeddingBag(N, 6, P.quotient_remainder(N, 10), "mlp", 4, dtype=dtype),
        "hash": HashEmbeddingBag(N, 6, 13, dtype=dtype),
        "feature": FeatureEmbeddingBag(N, 6, qr, dtype=dtype),
        "full": FullEmbeddingBag(N, 6, dtype=dtype),
    }


def _vector(module, i: int) -> torch.Tensor:
    """One category's vector from the module (a bag of one)."""
    return module(torch.tensor([[i]]))[0]


# --- the paper's statements ------------------------------------------------------------------


def test_theorem1_concat_distinct_vectors():
    torch.manual_seed(0)
    n = 5000
    bag = CompositionalEmbeddingBag(n, 8, P.quotient_remainder(n, 7), "concat")
    for w in bag.weights:  # the theorem's assumption: rows of each table distinct
        assert torch.unique(w, dim=0).shape[0] == w.shape[0]
    vectors = bag(torch.arange(n).view(-1, 1))
    assert torch.unique(vectors, dim=0).shape[0] == n


def test_qr_mult_with_ones_table_equals_hashing_trick():
    n, m = 103, 10
    # remainder digit first, quotient second: table 0 indexed by i mod m, as the hashing trick
    parts = P.MixedRadixPartitions(n, (m, -(-n // m)))
    qr = CompositionalEmbeddingBag(n, 4, parts, "mult")
    hashing = HashEmbeddingBag(n, 4, m)
    with torch.no_grad():
        qr.weights[0].copy_(hashing.weight)
        qr.weights[1].fill_(1.0)
    x = torch.randint(0, n, (32, 3))
    w = torch.rand(32, 3)
    torch.testing.assert_close(qr(x, per_sample_weights=w), hashing(x, per_sample_weights=w))


@pytest.mark.parametrize("operation", ["concat", "add", "mult"])
def test_one_bucket_per_category_equals_full_table(operation):
    n = 40
    full = FullEmbeddingBag(n, 4, mode="mean")
    bag = CompositionalEmbeddingBag(n, 4, P.remainder(n, n), operation, mode="mean")
    with torch.no_grad():
        bag.weights[0].copy_(full.weight)
    x = torch.randint(0, n, (16,))
    offsets = torch.tensor([0, 3, 3, 10])
    torch.testing.assert_close(bag(x, offsets), full(x, offsets))


# --- compose, then pool ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_combine_then_pool_by_hand(mode):
    n, c = 12, 4
    bag = CompositionalEmbeddingBag(n, 2, P.quotient_remainder(n, c), "mult", mode=mode)
    with torch.no_grad():
        bag.weights[0].copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]))
        bag.weights[1].copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [-1.0, 3.0], [0.0, 2.0]]))
    ids = torch.tensor([0, 5, 10, 7, 1])  # bags [0, 5], [10], [], [7, 1]
    offsets = torch.tensor([0, 2, 3, 3])

    def vec(i):  # W_q[i // 4] * W_r[i % 4]
        return bag.weights[0][i // c].detach() * bag.weights[1][i % c].detach()

    groups = [[0, 5], [10], [], [7, 1]]
    weights = {0: 0.5, 5: 2.0, 10: -1.0, 7: 3.0, 1: 0.25}
    expect = []
    for g in groups:
        if not g:
            expect.append(torch.zeros(2))
            continue
        vs = torch.stack([vec(i) for i in g])
        if mode == "sum":
            ws = torch.tensor([weights[i] for i in g]).unsqueeze(1)
            expect.append((ws * vs).sum(0))
        elif mode == "mean":
            expect.append(vs.mean(0))
        else:
            expect.append(vs.max(0).values)
    expect = torch.stack(expect)
    if mode == "sum":
        psw = torch.tensor([weights[int(i)] for i in ids])
        got = bag(ids, offsets, per_sample_weights=psw)
    else:
        got = bag(ids, offsets)
    torch.testing.assert_close(got, expect)
    # pooling the tables first (the reference's order) gives something else on multi-hot bags
    pooled_first = []
    for g in groups[:1]:
        q = bag.weights[0][torch.tensor(g) // c].detach().sum(0)
        r = bag.weights[1][torch.tensor(g) % c].detach().sum(0)
        pooled_first.append(q * r)
    if mode == "sum":
        assert not torch.allclose(pooled_first[0], torch.stack([vec(0), vec(5)]).sum(0))


def test_path_by_hand():
    n, c = 12, 3
    bag = PathEmbeddingBag(n, 2, P.quotient_remainder(n, c), "linear")
    a = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[2.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    with torch.no_grad():
        bag.paths[0][0].weight.copy_(a)
        bag.paths[0][0].bias.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]))
    for i in range(n):
        z = bag.weight[i // c].detach()
        expect = a[i % c] @ z + bag.paths[0][0].bias[i % c].detach()
        torch.testing.assert_close(_vector(bag, i), expect)


def test_path_mlp_by_hand():
    torch.manual_seed(1)
    n, c = 30, 3
    bag = PathEmbeddingBag(n, 3, P.quotient_remainder(n, c), "mlp", hidden=4)
    l1, l2 = bag.paths[0]
    with torch.no_grad():
        l1.bias.normal_()
        l2.bias.normal_()
    for i in (0, 4, 17, 29):
        r = i % c
        z = bag.weight[i // c]
        h = torch.relu(l1.weight[r] @ z + l1.bias[r])
        torch.testing.assert_close(_vector(bag, i), l2.weight[r] @ h + l2.bias[r])


def test_feature_generation_outputs_each_partition():
    n, c = 20, 4
    bag = FeatureEmbeddingBag(n, 3, P.quotient_remainder(n, c))
    out = bag(torch.tensor([[6, 13]]))
    assert out.shape == (1, 2, 3)
    torch.testing.assert_close(out[0, 0], bag.weights[0][1] + bag.weights[0][3])
    torch.testing.assert_close(out[0, 1], bag.weights[1][2] + bag.weights[1][1])


# --- input conventions -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_modules()))
def test_input_conventions_agree(name):
    torch.manual_seed(2)
    module = _modules()[name]
    x2 = torch.randint(0, N, (5, 3))
    flat = x2.reshape(-1)
    offsets = torch.arange(0, 15, 3)
    out2 = module(x2)
    torch.testing.assert_close(module(flat, offsets), out2)
    module.include_last_offset = True
    torch.testing.assert_close(module(flat, torch.arange(0, 16, 3)), out2)
    module.include_last_offset = False
    single = module(x2[:, :1])
    torch.testing.assert_close(single, module(x2[:, 0], torch.arange(5)))
    assert out2.shape == ((5, 2, 6) if name == "feature" else (5, 6))


@pytest.mark.parametrize("name", list(_modules(torch.float64)))
def test_gradcheck_every_table(name):
    torch.manual_seed(3)
    module = _modules(torch.float64)[name]
    ids = torch.randint(0, N, (7,))
    offsets = torch.tensor([0, 2, 2, 5])
    psw = torch.rand(7, dtype=torch.float64, requires_grad=True)
    params = list(module.parameters())
    # every parameter receives a gradient
    module(ids, offsets, per_sample_weights=psw).sum().backward()
    for p in params:
        assert p.grad is not None
    assert psw.grad is not None and psw.grad.abs().sum() > 0
    # gradcheck through functional re-binding of the parameters
    names = [n for n, _ in module.named_parameters()]

    def g(*ps):
        return functional_call(module, dict(zip(names, ps, strict=True)), (ids, offsets),
                               {"per_sample_weights": psw})

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-5)


def test_sparse_gradients():
    bag = CompositionalEmbeddingBag(100, 4, P.quotient_remainder(100, 4), "mult", sparse=True)
    bag(torch.tensor([[1, 2]])).sum().backward()
    assert all(w.grad.is_sparse for w in bag.weights)
    h = HashEmbeddingBag(100, 4, 10, sparse=True)
    h(torch.tensor([[1, 2]])).sum().backward()
    assert h.weight.grad.is_sparse
    p = PathEmbeddingBag(100, 4, P.quotient_remainder(100, 4), sparse=True)
    p(torch.tensor([[1, 2]])).sum().backward()
    assert p.weight.grad.is_sparse and not p.paths[0][0].weight.grad.is_sparse


# --- initialization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda n: CompositionalEmbeddingBag(n, 64, P.quotient_remainder(n, 4), "add"),
        lambda n: CompositionalEmbeddingBag(n, 64, P.balanced_mixed_radix(n, 3), "add"),
        lambda n: CompositionalEmbeddingBag(n, 64, P.quotient_remainder(n, 40), "concat"),
        lambda n: PathEmbeddingBag(n, 64, P.quotient_remainder(n, 4), "linear"),
        lambda n: PathEmbeddingBag(n, 64, P.quotient_remainder(n, 4), "mlp", hidden=512),
        lambda n: HashEmbeddingBag(n, 64, n // 4),
        lambda n: FullEmbeddingBag(n, 64),
    ],
)
def test_init_matches_full_table_scale(make):
    torch.manual_seed(4)
    n = 200_000
    module = make(n)
    v = module(torch.randint(0, n, (4000, 1)))
    target = 1.0 / (3 * n)  # variance of U(-sqrt(1/n), sqrt(1/n))
    assert abs(v.mean().item()) < 0.1 * math.sqrt(target)
    assert v.pow(2).mean().item() == pytest.approx(target, rel=0.2)


@pytest.mark.parametrize("k", [2, 3])
def test_mult_init_is_zero_mean_in_every_table(k):
    torch.manual_seed(5)
    n = 200_000
    parts = P.quotient_remainder(n, 4) if k == 2 else P.balanced_mixed_radix(n, 3)
    bag = CompositionalEmbeddingBag(n, 64, parts, "mult")
    a = (1 / n) ** 0.5
    for w in bag.weights:
        assert w.abs().max() <= a and abs(w.mean().item()) < 0.05 * a
    assert torch.unique(bag.weights[-1], dim=0).shape[0] == bag.weights[-1].shape[0]
    v = bag(torch.randint(0, n, (4000, 1)))
    # each coordinate is a product of k independent U(-a, a): variance (a^2 / 3)^k
    assert v.pow(2).mean().item() == pytest.approx((a * a / 3) ** k, rel=0.25)


# --- device, dtype, accounting -----------------------------------------------------------------


def test_dtype_and_meta_device():
    bag = CompositionalEmbeddingBag(10**7, 16, P.quotient_remainder(10**7, 4), device="meta")
    assert bag.weights[0].is_meta
    assert bag.num_parameters == (2_500_000 + 4) * 16
    assert bag.num_bytes == bag.num_parameters * 4
    assert bag.compression_ratio == pytest.approx(10**7 / 2_500_004)
    half = HashEmbeddingBag(100, 4, 10, dtype=torch.float64)
    assert half.weight.dtype == torch.float64 and half.num_bytes == 10 * 4 * 8


# Counted by hand (N = 50, D = 6): rows of each table x width, plus the path functions'
# D*H + H + H*D + D (mlp) or D*D + D (linear) per bucket.
HAND_COUNTS = {
    "concat": (13 * 3 + 4 * 3, 17),  # QR (13, 4), widths (3, 3)
    "add": (17 * 6, 17),
    "mult": (17 * 6, 17),
    "mult3": ((3 + 4 + 5) * 6, 12),  # radices (3, 4, 5): the top digit has ceil(50/12) = 5
    "crt": ((7 + 8) * 6, 15),
    "path_mlp": (13 * 6 + 4 * (6 * 5 + 5 + 5 * 6 + 6), 17),
    "path_linear": (3 * 6 + (4 + 5) * (6 * 6 + 6), 12),
    "path_gather": (5 * 6 + 10 * (6 * 4 + 4 + 4 * 6 + 6), 15),
    "hash": (13 * 6, 13),
    "feature": (17 * 6, 17),
    "full": (50 * 6, 50),
}


@pytest.mark.parametrize("name", list(_modules()))
def test_accounting_by_hand(name):
    module = _modules()[name]
    params, rows = HAND_COUNTS[name]
    assert module.num_parameters == params
    assert module.num_rows == rows
    assert module.full_parameters == N * 6
    assert module.compression_ratio == pytest.approx(N * 6 / params)


def test_path_parameters_follow_table1_formula():
    # one MLP per quotient bucket: D*H + H + H*D + D parameters each
    n, d, h = 10_000, 16, 64
    bag = PathEmbeddingBag(n, d, P.quotient_remainder(n, 4), hidden=h)
    assert bag.num_parameters == 2500 * d + 4 * (d * h + h + h * d + d)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last", [False, True])
def test_one_id_bags_pool_to_their_vectors(mode, include_last):
    """1-D input with offsets 0, 1, ..., B - 1 takes the one-id fast path; it must equal
    nn.EmbeddingBag's pooling, weights applied once, and a near miss must not take it."""
    torch.manual_seed(0)
    bag = CompositionalEmbeddingBag(100, 4, P.quotient_remainder(100, 4), "mult", mode,
                                    include_last_offset=include_last)  # fmt: skip
    ids = torch.tensor([5, 99, 5, 0])
    offsets = torch.arange(5 if include_last else 4)
    want = bag.compose(ids)
    torch.testing.assert_close(bag(ids, offsets), want)
    if mode == "sum":
        w = torch.tensor([0.5, 2.0, 1.0, -1.0])
        torch.testing.assert_close(bag(ids, offsets, w), want * w[:, None])
    near = torch.tensor([0, 0, 2, 3, 4][: len(offsets)])  # an empty bag, then a bag of two
    got = bag(ids, near)
    assert torch.equal(got[0], torch.zeros(4))
    pooled = {"sum": want[0] + want[1], "mean": (want[0] + want[1]) / 2,
              "max": torch.maximum(want[0], want[1])}[mode]  # fmt: skip
    torch.testing.assert_close(got[1], pooled)
