"""Optimizers of the paper (Adagrad, AMSGrad) and plain SGD, with their default settings."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from compemb.training.rowwise import RowWiseAdagrad

# torch's defaults, which the paper used ("default hyperparameters").
DEFAULT_LR = {"adagrad": 0.01, "amsgrad": 0.001, "rowwise_adagrad": 0.01}


def make_optimizer(
    name: str,
    parameters: Iterable[torch.nn.Parameter],
    lr: float | None = None,
    *,
    tables: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """Adagrad, AMSGrad (``Adam(amsgrad=True)``), row-wise Adagrad or SGD; ``lr=None`` takes
    the default.

    Adagrad, row-wise Adagrad and SGD accept the sparse gradients of embedding tables built with
    ``sparse=True`` and then touch only the rows a batch used. AMSGrad has no sparse variant in
    torch: its tables must use dense gradients (the config loader enforces it). Row-wise Adagrad
    keeps one accumulator per row of the ``tables`` (a D-th of Adagrad's state there) and exact
    Adagrad for every other parameter.
    """
    # torch's sparse Adagrad rebuilds sparse tensors from gradients that are valid by
    # construction; opting out of the invariant checks explicitly (the default) silences the
    # warning torch otherwise prints on every run.
    torch.sparse.check_sparse_tensor_invariants.disable()
    if name == "sgd":
        if lr is None:
            raise ValueError("optimizer 'sgd' needs a learning rate (train.lr), e.g. 0.1")
        return torch.optim.SGD(parameters, lr=lr)
    if name not in DEFAULT_LR:
        raise ValueError(
            f"unknown optimizer {name!r}; use adagrad, amsgrad, rowwise_adagrad or sgd"
        )
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "rowwise_adagrad":
        table_ids = {id(t) for t in tables}
        parameters = list(parameters)
        groups = [
            {"params": [p for p in parameters if id(p) in table_ids], "rowwise": True},
            {"params": [p for p in parameters if id(p) not in table_ids], "rowwise": False},
        ]
        return RowWiseAdagrad([g for g in groups if g["params"]], lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr)
    return torch.optim.Adam(parameters, lr=lr, amsgrad=True)
