"""Metrics against scikit-learn and by hand; the DDP loss scaling on one process."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from compemb.training import binary_metrics
from compemb.training.metrics import roc_auc


def test_metrics_by_hand() -> None:
    m = binary_metrics(torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, 1.0]))
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 3
    assert m["logloss"] == pytest.approx(expected)
    assert m["accuracy"] == pytest.approx(1 / 3)  # logit 0 predicts 0
    assert m["auc"] is None  # one class only


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=60).filter(
        lambda rows: 0 < sum(y for _, y in rows) < len(rows)
    )
)
def test_auc_and_logloss_equal_sklearn_with_ties(rows: list[tuple[int, bool]]) -> None:
    scores = torch.tensor([float(s) / 2 for s, _ in rows])
    labels = torch.tensor([float(y) for _, y in rows])
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    p = torch.sigmoid(scores.double())
    ours = binary_metrics(scores, labels)["logloss"]
    assert ours == pytest.approx(log_loss(labels.numpy(), p.numpy()), abs=1e-9)


def test_rank_shares_scaled_to_the_global_batch_give_the_mean_gradient() -> None:
    """sum over each rank's rows x world_size / global rows, averaged over ranks as DDP does,
    equals the gradient of the mean loss over the whole batch, for uneven shares too."""
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    x, y = torch.randn(7, 4), torch.randint(0, 2, (7,)).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    (full,) = torch.autograd.grad(bce(x @ w, y), w)
    world, grads = 3, []
    for share in torch.tensor_split(torch.arange(7), world):
        loss = bce(x[share] @ w, y[share], reduction="sum") * world / 7
        grads.append(torch.autograd.grad(loss, w)[0])
    assert torch.allclose(torch.stack(grads).mean(0), full, atol=1e-6)
