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


# The tests that launch processes (torchrun ranks, the docs' shell commands, the demo) take
# 5-40 s each where most take milliseconds. xdist's worksteal hands each of its two workers a
# contiguous half of the collection: each half starts with every other long test, so both
# workers start on them and the short ones fill in at the end, instead of one long test
# running alone while the other worker idles.
_LONG = ("tests/test_docs.py::test_shell_commands", "tests/test_demo.py",
         "tests/training/test_training_sharded_checkpoint.py",
         "tests/training/test_training_torchrec.py", "tests/training/test_training_processes.py",
         "tests/training/test_training_serving.py", "tests/training/test_training_cce.py",
         "tests/serving/test_serving_export.py", "tests/embeddings/test_embeddings_kmeans.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    long = [item for item in items if item.nodeid.startswith(_LONG)]
    short = [item for item in items if not item.nodeid.startswith(_LONG)]
    first = long[0::2] + short[: max(0, len(items) // 2 - len(long[0::2]))]
    items[:] = first + long[1::2] + short[len(first) - len(long[0::2]):]
