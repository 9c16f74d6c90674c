"""FusedAdagrad equals torch's Adagrad, and both it and RowWiseAdagrad a row-wise step by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec, _kernels
from compemb.optim import make_optimizer
from compemb.optim.fused import FusedAdagrad, gradient_sink
from compemb.optim.rowwise import RowWiseAdagrad, sparse_adagrad_
from schemekit import kit_counts

# Big enough that the first tables take sparse gradients (stacks of more than 4,096 rows).
CARDS = [30_000, 50, 7_000, 3, 20_000]
SPECS = {
    "qr-mult": EmbeddingSpec("qr", operation="mult", collisions=4, sparse=True),
    "qr-add": EmbeddingSpec("qr", operation="add", collisions=4, sparse=True),
    "qr-concat": EmbeddingSpec("qr", operation="concat", collisions=4, sparse=True),
    "full": EmbeddingSpec("full", sparse=True),
    "hash": EmbeddingSpec("hash", collisions=4, sparse=True),
    # the successors' stacked forms
    "md": EmbeddingSpec("md", alpha=0.3, base_width=4, sparse=True),
    "md_qr": EmbeddingSpec("md_qr", collisions=4, order="frequency", sparse=True),
    "md_block": EmbeddingSpec("md_block", alpha=0.5, order="frequency", sparse=True),
    "cce": EmbeddingSpec("cce", rows=3000, chunks=2, sparse=True),
    "robe": EmbeddingSpec("robe", size=4 * 5000, block=4, sparse=True),
    "robe-aligned": EmbeddingSpec("robe", size=4 * 5000, block=2, aligned=True, sparse=True),
    "robe-per-feature": EmbeddingSpec("robe", size=5000, block=4, shared=False, sparse=True),
    # 400 rows, fewer than a batch's blocks lie in: the routed array gets one dense gradient
    "robe-dense-grad": EmbeddingSpec("robe", size=4 * 400, block=4, sparse=True),
}


class Model(nn.Module):
    def __init__(self, spec: EmbeddingSpec):
        super().__init__()
        self.sparse_arch = EmbeddingBagCollection(CARDS, 8, spec, counts=kit_counts(spec, CARDS))
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


# Two row-wise steps by hand, lr 1, eps 0, a (3, 2) table from zeros. Step 1, rows [0, 2, 0]
# with gradients (1, 1), (1, 7), (2, 2): row 0 sums to g = (3, 3), s0 = mean(9, 9) = 9,
# w0 = -g / 3 = (-1, -1); row 2: g = (1, 7), s2 = mean(1, 49) = 25, w2 = -g / 5 = (-0.2, -1.4);
# row 1 is untouched. Step 2, row 0 with (4, 4): s0 = 9 + 16 = 25, w0 = (-1, -1) - (4, 4) / 5.
ROWWISE_STEPS = [
    (torch.tensor([0, 2, 0]), torch.tensor([[1.0, 1.0], [1.0, 7.0], [2.0, 2.0]])),
    (torch.tensor([0]), torch.tensor([[4.0, 4.0]])),
]
ROWWISE_SUM = [torch.tensor([[9.0], [0.0], [25.0]]), torch.tensor([[25.0], [0.0], [25.0]])]
ROWWISE_WEIGHT = [torch.tensor([[-1.0, -1.0], [0.0, 0.0], [-0.2, -1.4]]),
                  torch.tensor([[-1.8, -1.8], [0.0, 0.0], [-0.2, -1.4]])]  # fmt: skip


def _rowwise_optimizer(kind: str, table: nn.Parameter) -> torch.optim.Optimizer:
    groups = [{"params": [table], "rowwise": True}]
    if kind == "RowWiseAdagrad":
        return RowWiseAdagrad(groups, lr=1.0, eps=0.0)
    return FusedAdagrad(groups, lr=1.0, eps=0.0, tables=[table] if kind == "routed" else [])


def _rowwise_step(kind: str, table: nn.Parameter, optimizer: torch.optim.Optimizer,
                  rows: torch.Tensor, grads: torch.Tensor) -> None:
    optimizer.zero_grad()
    if kind == "routed":  # as the lookup's backward delivers them
        gradient_sink(table)(rows, grads)
    else:  # a sparse gradient, as DDP's all-reduce leaves it (uncoalesced)
        table.grad = torch.sparse_coo_tensor(rows[None], grads, table.shape)
    optimizer.step()


@pytest.mark.parametrize("kind", ["RowWiseAdagrad", "routed", "FusedAdagrad-sparse"])
def test_rowwise_step_by_hand(kind, update):
    table = nn.Parameter(torch.zeros(3, 2))
    optimizer = _rowwise_optimizer(kind, table)
    for (rows, grads), want_sum, want_weight in zip(ROWWISE_STEPS, ROWWISE_SUM, ROWWISE_WEIGHT,
                                                    strict=True):  # fmt: skip
        _rowwise_step(kind, table, optimizer, rows, grads)
        torch.testing.assert_close(optimizer.state[table]["sum"], want_sum)
        torch.testing.assert_close(table.detach(), want_weight)


# The state dicts as the optimizers wrote them before they shared one step: RowWiseAdagrad an
# int64 step count, FusedAdagrad torch Adagrad's float one and its lr_decay and weight_decay.
OLD_GROUP = {"lr": 1.0, "eps": 0.0, "initial_accumulator_value": 0.0, "rowwise": True,
             "params": [0]}  # fmt: skip
OLD_FORMAT = {
    "RowWiseAdagrad": {"state": {0: {"sum": ROWWISE_SUM[0], "step": torch.tensor(1)}},
                       "param_groups": [OLD_GROUP]},
    "routed": {"state": {0: {"sum": ROWWISE_SUM[0], "step": torch.tensor(1.0)}},
               "param_groups": [{**OLD_GROUP, "lr_decay": 0.0, "weight_decay": 0.0}]},
}


@pytest.mark.parametrize("kind", list(OLD_FORMAT))
def test_rowwise_state_dict_keeps_its_format_and_old_checkpoints_resume(kind):
    table = nn.Parameter(torch.zeros(3, 2))
    optimizer = _rowwise_optimizer(kind, table)
    _rowwise_step(kind, table, optimizer, *ROWWISE_STEPS[0])
    saved, old = optimizer.state_dict(), OLD_FORMAT[kind]
    assert saved["param_groups"] == old["param_groups"]
    assert saved["state"][0]["step"].dtype == old["state"][0]["step"].dtype
    torch.testing.assert_close(saved["state"][0]["sum"], old["state"][0]["sum"])

    resumed = nn.Parameter(ROWWISE_WEIGHT[0].clone())
    optimizer = _rowwise_optimizer(kind, resumed)
    optimizer.load_state_dict(copy.deepcopy(old))
    _rowwise_step(kind, resumed, optimizer, *ROWWISE_STEPS[1])
    torch.testing.assert_close(resumed.detach(), ROWWISE_WEIGHT[1])
    assert optimizer.state[resumed]["step"].item() == 2


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


@pytest.mark.parametrize(("name", "dense"), [("robe", False), ("robe-dense-grad", True)])
def test_a_routed_robe_array_covered_by_the_batch_gets_one_dense_gradient(name, dense):
    """Where a batch's blocks lie in at least as many rows as the array has, the array gets
    one dense gradient instead of routed rows (equal updates: the test above)."""
    torch.manual_seed(0)
    model = Model(SPECS[name])
    (array,) = model.sparse_arch.table_parameters()
    optimizer = FusedAdagrad(model.parameters(), lr=0.1, tables=[array])
    ids, _ = next(_batches(1))
    model(ids).backward()
    assert (array.grad is not None) == dense and bool(optimizer._pending) != dense
    if dense:
        assert not array.grad.is_sparse and array.grad.shape == array.shape


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
