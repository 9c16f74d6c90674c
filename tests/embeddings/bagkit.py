"""Checks every ``nn.EmbeddingBag`` drop-in passes: input conventions and gradcheck."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def assert_input_conventions(module: nn.Module, n: int) -> None:
    """(B, L) input, (N,) with offsets, include_last_offset and one-id bags agree."""
    gen = torch.Generator().manual_seed(2)
    x2 = torch.randint(0, n, (5, 3), generator=gen)
    flat, offsets = x2.reshape(-1), torch.arange(0, 15, 3)
    out2 = module(x2)
    torch.testing.assert_close(module(flat, offsets), out2)
    module.include_last_offset = True
    torch.testing.assert_close(module(flat, torch.arange(0, 16, 3)), out2)
    module.include_last_offset = False
    torch.testing.assert_close(module(x2[:, :1]), module(x2[:, 0], torch.arange(5)))
    assert out2.shape == (5, module.embedding_dim)


def assert_gradcheck(module: nn.Module, n: int) -> None:
    """Every parameter and the per-sample weights (mode sum) get a gradient, and gradcheck
    passes (float64 module) on bags with an empty one."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, n, (7,), generator=gen)
    offsets = torch.tensor([0, 2, 2, 5])
    psw = torch.rand(7, dtype=torch.float64, generator=gen).requires_grad_(True)
    if module.mode != "sum":
        psw = None
    params = list(module.parameters())
    module(ids, offsets, per_sample_weights=psw).sum().backward()
    assert all(p.grad is not None for p in params)
    assert psw is None or psw.grad.abs().sum() > 0
    names = [name for name, _ in module.named_parameters()]

    def call(*ps: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, ps, strict=True)), (ids, offsets),
                               {"per_sample_weights": psw})

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(call, inputs, eps=1e-6, atol=1e-5)
