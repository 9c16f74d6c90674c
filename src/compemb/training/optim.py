"""Optimizers of the paper (Adagrad, AMSGrad) and plain SGD, with their default settings."""

from __future__ import annotations

from collections.abc import Iterable

import torch

# torch's defaults, which the paper used ("default hyperparameters").
DEFAULT_LR = {"adagrad": 0.01, "amsgrad": 0.001}


def make_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter], lr: float | None = None
) -> torch.optim.Optimizer:
    """Adagrad, AMSGrad (``Adam(amsgrad=True)``) or SGD; ``lr=None`` takes the default.

    Adagrad and SGD accept the sparse gradients of embedding tables built with
    ``sparse=True`` and then touch only the rows a batch used. AMSGrad has no sparse variant in
    torch: its tables must use dense gradients (the config loader enforces it).
    """
    if name == "sgd":
        if lr is None:
            raise ValueError("optimizer 'sgd' needs a learning rate (train.lr), e.g. 0.1")
        return torch.optim.SGD(parameters, lr=lr)
    if name not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {name!r}; use adagrad, amsgrad or sgd")
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr)
    return torch.optim.Adam(parameters, lr=lr, amsgrad=True)
