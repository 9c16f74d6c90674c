"""FusedAdagrad equals torch's Adagrad and RowWiseAdagrad on the same batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec, _kernels
from compemb.optim import make_optimizer
from compemb.optim.fused import FusedAdagrad, gradient_sink, sparse_adagrad_
from compemb.optim.rowwise import RowWiseAdagrad

# Big enough that the first tables take sparse gradients (stacks of more than 4,096 rows).
CARDS = [100_000, 50, 7_000, 3, 20_000]
SPECS = {
    "qr-mult": EmbeddingSpec("qr", operation="mult", collisions=4, sparse=True),
    "qr-add": EmbeddingSpec("qr", operation="add", collisions=4, sparse=True),
    "qr-concat": EmbeddingSpec("qr", operation="concat", collisions=4, sparse=True),
    "full": EmbeddingSpec("full", sparse=True),
    "hash": EmbeddingSpec("hash", collisions=4, sparse=True),
}


class Model(nn.Module):
    def __init__(self, spec: EmbeddingSpec):
        super().__init__()
        self.sparse_arch = EmbeddingBagCollection(CARDS, 8, spec)
        self.head = nn.Linear(8, 1)

    def forward(self, ids, bags=()):
        return self.head(torch.tanh(self.sparse_arch(ids, bags))).sum()


def _batches(steps: int, bags: bool = False):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.stack([torch.randint(0, n, (64,), generator=gen) for n in CARDS], 1)
        ids[:8] = ids[8:16]  # repeated rows within a batch
        if not bags:
            yield ids, ()
            continue
        values = torch.randint(0, CARDS[-1], (150,), generator=gen)
        offsets = torch.sort(torch.randint(0, 150, (64,), generator=gen)).values
        offsets[0] = 0
        yield ids[:, :-1], [(values, offsets)]


def _train(model: Model, optimizer: torch.optim.Optimizer, steps: int, bags: bool = False,
           forward_first: bool = False):
    for ids, bag in _batches(steps, bags):
        if forward_first:  # as the trainer does: the forward runs before zero_grad
            loss = model(ids, bag)
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = model(ids, bag)
        loss.backward()
        optimizer.step()


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters(),
                                                           strict=True))  # fmt: skip


def _rowwise_groups(model: Model) -> list[dict]:
    tables = {id(t) for t in model.sparse_arch.table_parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in tables], "rowwise": True},
            {"params": [p for p in model.parameters() if id(p) not in tables]}]  # fmt: skip


@pytest.fixture(params=["compiled", "pure-torch"])
def update(request, monkeypatch):
    """Run a test with the compiled kernel (where built) and with the pure-torch update."""
    if request.param == "pure-torch":
        monkeypatch.setattr(_kernels, "sparse_adagrad", lambda *args: False)
    return request.param


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("bags", [False, True])
@pytest.mark.parametrize("forward_first", [False, True], ids=["zero-grad-first", "forward-first"])
def test_fused_adagrad_equals_torch_adagrad(name, bags, update, forward_first):
    torch.manual_seed(0)
    reference = Model(SPECS[name])
    fused = copy.deepcopy(reference)
    _train(reference, torch.optim.Adagrad(reference.parameters(), lr=0.1), 6, bags, forward_first)
    tables = fused.sparse_arch.table_parameters()
    _train(fused, FusedAdagrad(fused.parameters(), lr=0.1, tables=tables), 6, bags, forward_first)
    assert _max_diff(reference, fused) < 1e-6


@pytest.mark.parametrize("name", ["qr-mult", "full", "qr-concat"])
def test_fused_rowwise_equals_rowwise_adagrad(name, update):
    torch.manual_seed(0)
    reference = Model(SPECS[name])
    fused = copy.deepcopy(reference)
    _train(reference, RowWiseAdagrad(_rowwise_groups(reference), lr=0.1), 6)
    tables = fused.sparse_arch.table_parameters()
    _train(fused, FusedAdagrad(_rowwise_groups(fused), lr=0.1, tables=tables), 6)
    assert _max_diff(reference, fused) < 1e-6


def test_routed_tables_get_no_gradient_and_unrouted_ones_do():
    torch.manual_seed(0)
    model = Model(SPECS["qr-mult"])
    big, small = model.sparse_arch.table_parameters()
    optimizer = FusedAdagrad(model.parameters(), lr=0.1, tables=[big])
    assert gradient_sink(big) is not None and gradient_sink(small) is None
    ids, _ = next(_batches(1))
    model(ids).backward()
    assert big.grad is None and small.grad is not None and not small.grad.is_sparse
    optimizer.zero_grad()
    assert not optimizer._pending  # routed rows are dropped with the gradients


def test_fused_adagrad_takes_sparse_gradients_without_routing():
    torch.manual_seed(0)
    reference = Model(SPECS["qr-mult"])
    fused = copy.deepcopy(reference)
    _train(reference, torch.optim.Adagrad(reference.parameters(), lr=0.1), 4)
    _train(fused, FusedAdagrad(fused.parameters(), lr=0.1), 4)
    assert _max_diff(reference, fused) < 1e-6


def test_state_dict_resumes_exactly():
    torch.manual_seed(0)
    whole = Model(SPECS["qr-mult"])
    part = copy.deepcopy(whole)
    _train(whole, FusedAdagrad(whole.parameters(), lr=0.1,
                               tables=whole.sparse_arch.table_parameters()), 6)  # fmt: skip
    first = FusedAdagrad(part.parameters(), lr=0.1, tables=part.sparse_arch.table_parameters())
    batches = list(_batches(6))
    for ids, bag in batches[:3]:
        first.zero_grad()
        part(ids, bag).backward()
        first.step()
    saved = copy.deepcopy((part.state_dict(), first.state_dict()))
    resumed = Model(SPECS["qr-mult"])
    resumed.load_state_dict(saved[0])
    second = FusedAdagrad(resumed.parameters(), lr=0.1,
                          tables=resumed.sparse_arch.table_parameters())  # fmt: skip
    second.load_state_dict(saved[1])
    for ids, bag in batches[3:]:
        second.zero_grad()
        resumed(ids, bag).backward()
        second.step()
    assert _max_diff(whole, resumed) == 0.0


@pytest.mark.parametrize("compiled", [False, True])
def test_sparse_adagrad_by_hand(compiled):
    weight = torch.zeros(5, 2)
    state = torch.zeros(5, 2)
    rows = torch.tensor([3, 1, 3])
    grads = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    sparse_adagrad_(weight, state, rows, grads, lr=0.5, eps=0.0, compiled=compiled)
    # row 3: g = (2, 4), s = (4, 16), w = -0.5 * g / sqrt(s) = (-0.5, -0.5); row 1 likewise
    assert state[3].tolist() == [4.0, 16.0] and state[1].tolist() == [9.0, 16.0]
    assert weight[3].tolist() == [-0.5, -0.5] and weight[1].tolist() == [-0.5, -0.5]
    assert weight[0].tolist() == [0.0, 0.0] and state[4].tolist() == [0.0, 0.0]
    rowwise = torch.zeros(5, 1)
    sparse_adagrad_(torch.zeros(5, 2), rowwise, rows, grads, lr=0.5, eps=0.0, compiled=compiled)
    assert rowwise[3].item() == 10.0  # mean of (4, 16)


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad"])
def test_make_optimizer_fused_variant_trains_alike(name):
    torch.manual_seed(0)
    reference = Model(SPECS["qr-mult"])
    fused = copy.deepcopy(reference)
    plain = make_optimizer(name, reference.parameters(), 0.1,
                           tables=reference.sparse_arch.table_parameters())  # fmt: skip
    routed = make_optimizer(name, fused.parameters(), 0.1,
                            tables=fused.sparse_arch.table_parameters(), fused=True)  # fmt: skip
    assert isinstance(routed, FusedAdagrad) and not isinstance(plain, FusedAdagrad)
    _train(reference, plain, 5)
    _train(fused, routed, 5)
    assert _max_diff(reference, fused) < 1e-6
    # the checkpoints of either load into the other and train on alike
    plain.load_state_dict(copy.deepcopy(routed.state_dict()))
    routed.load_state_dict(copy.deepcopy(plain.state_dict()))
    _train(reference, plain, 2)
    _train(fused, routed, 2)
    assert _max_diff(reference, fused) < 1e-6


@pytest.mark.skipif(_kernels._load() is None, reason="compiled kernel not built (make kernels)")
@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("dim", [1, 5, 16])
def test_compiled_kernel_equals_pure_torch(rowwise, dim):
    gen = torch.Generator().manual_seed(dim)
    weight = torch.randn(5000, dim, generator=gen)
    state = torch.rand(5000, 1 if rowwise else dim, generator=gen)
    rows = torch.randint(0, 5000, (3000,), generator=gen)
    rows[:500] = rows[500:1000]  # repeats
    grads = torch.randn(3000, dim, generator=gen)
    want_w, want_s = weight.clone(), state.clone()
    sparse_adagrad_(want_w, want_s, rows, grads, 0.1, 1e-10, compiled=False)
    assert _kernels.sparse_adagrad(weight, state, rows, grads, 0.1, 1e-10)
    torch.testing.assert_close(weight, want_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(state, want_s, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(_kernels._load() is None, reason="compiled kernel not built (make kernels)")
def test_compiled_kernel_refuses_rows_out_of_range():
    with pytest.raises(IndexError):
        _kernels.sparse_adagrad(torch.zeros(4, 2), torch.zeros(4, 2), torch.tensor([1, 4]),
                                torch.ones(2, 2), 0.1, 1e-10)  # fmt: skip


def test_pure_torch_update_when_the_kernel_does_not_apply():
    # float64 tables take the pure-torch path whatever is built
    weight, state = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    assert not _kernels.sparse_adagrad(weight, state, torch.tensor([1]),
                                       torch.ones(1, 2, dtype=torch.float64), 0.1, 0.0)
    sparse_adagrad_(weight, state, torch.tensor([1]), torch.ones(1, 2, dtype=torch.float64),
                    0.1, 0.0)  # fmt: skip
    assert weight[1].tolist() == [-0.1, -0.1]
