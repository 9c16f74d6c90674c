"""The optimizer registry: what each entry declares is what torch builds and keeps."""

from __future__ import annotations

import pytest
import torch

from compemb.config import load_config_text
from compemb.embeddings import EmbeddingSpec
from compemb.models import build_model
from compemb.optim import OPTIMIZERS, OptimizerKind, make_optimizer, optimizer_kind
from compemb.training import parameter_report


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("dlrm", [5000, 7, 300], 2, 4, EmbeddingSpec("qr", collisions=4))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_declared_state_is_the_state_torch_keeps(name: str) -> None:
    model = _model()
    tables = model.sparse_arch.table_parameters()
    opt = make_optimizer(name, model.parameters(), 0.1, tables=tables)
    dense = torch.randn(8, 2)
    ids = torch.stack([torch.randint(0, n, (8,)) for n in (5000, 7, 300)], 1)
    model(dense, ids).sum().backward()
    opt.step()
    kept = sum(t.numel() for state in opt.state.values() for key, t in state.items()
               if key != "step")  # fmt: skip
    table_ids = {id(t) for t in tables}
    declared = sum(OPTIMIZERS[name].state_numel(p.shape, table=id(p) in table_ids)
                   for p in model.parameters())  # fmt: skip
    assert kept == declared
    report = parameter_report(model, name)
    assert report["optimizer_state_bytes"] == 4 * declared


def test_a_registered_optimizer_reaches_config_builder_and_accounting(monkeypatch) -> None:
    def momentum(parameters, lr, tables):
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)

    kind = OptimizerKind("momentum", momentum, default_lr=0.05, sparse=False, state_per_element=1)
    monkeypatch.setitem(OPTIMIZERS, "momentum", kind)
    config = load_config_text("train: {optimizer: momentum}", "x")
    assert config.model.sparse is False  # from the entry, not from a list of names
    opt = make_optimizer("momentum", _model().parameters())
    assert opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
    report = parameter_report(_model(), "momentum")
    assert report["optimizer_state_bytes"] == report["total_bytes"]


def test_unknown_names_raise_with_the_valid_ones() -> None:
    valid = "use one of adagrad, amsgrad, rowwise_adagrad, sgd"
    with pytest.raises(ValueError, match=valid):
        optimizer_kind("adam")
    with pytest.raises(ValueError, match=valid):
        make_optimizer("adam", _model().parameters())
    with pytest.raises(ValueError, match=valid):
        parameter_report(_model(), "adam")
    with pytest.raises(ValueError, match="needs a learning rate"):
        make_optimizer("sgd", _model().parameters())
