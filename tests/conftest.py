"""Helpers shared by the tests of every package."""

import pytest
import torch


def _view_grad(parameters, view: torch.Tensor) -> torch.Tensor:
    """The gradient entries under ``view``, a view into one of ``parameters`` (a stacked table
    seen as one feature's table, or a state-dict entry)."""
    for p in parameters:
        if view.untyped_storage().data_ptr() == p.untyped_storage().data_ptr():
            g = p.grad.to_dense() if p.grad.is_sparse else p.grad
            assert p.is_contiguous()
            return g.contiguous().as_strided(view.size(), view.stride(),
                                             view.storage_offset() - p.storage_offset())
    raise AssertionError("view of no parameter")


@pytest.fixture
def view_grad():
    """``view_grad(parameters, view)``: the gradient entries under a view of a parameter."""
    return _view_grad

