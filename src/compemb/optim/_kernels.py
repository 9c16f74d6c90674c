"""The compiled CPU kernel of the fused optimizer (``csrc/sparse_adagrad.c``), when built.

``make kernels`` (a step of ``make test`` and ``make demo``) compiles it with the system C compiler
into ``build/kernels/``; ``COMPEMB_KERNELS`` may name another path. Nothing is compiled at import
time: without the library the pure-torch update runs, and the first use prints one line saying so.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import torch

_LIBRARY = "libcompemb_kernels.so"
_state: dict[str, object] = {}


def _path() -> Path:
    env = os.environ.get("COMPEMB_KERNELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "build" / "kernels" / _LIBRARY


def _load() -> ctypes.CDLL | None:
    if "lib" not in _state:
        path, lib = _path(), None
        if os.environ.get("COMPEMB_NO_KERNELS") != "1" and path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
                fn = lib.compemb_sparse_adagrad
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_float, ctypes.c_float]  # fmt: skip
            except OSError:
                lib = None
        if lib is None:
            print(f"compemb: compiled sparse Adagrad kernel not found at {path} (build it with "
                  f"`make kernels`); using the pure-torch update", file=sys.stderr)  # fmt: skip
        _state["lib"] = lib
    return _state["lib"]  # type: ignore[return-value]


def sparse_adagrad(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor,
                   grads: torch.Tensor, lr: float, eps: float) -> bool:
    """The kernel's update (see :func:`compemb.optim.fused.sparse_adagrad_`), in place; False,
    doing nothing, where it does not apply (no library; not contiguous float32 CPU tensors)."""
    ok = (weight.device.type == "cpu" and weight.dtype == state.dtype == grads.dtype
          == torch.float32 and rows.dtype == torch.int64 and weight.dim() == 2
          and weight.is_contiguous() and state.is_contiguous()
          and state.shape[0] == weight.shape[0] and state.shape[1] in (1, weight.shape[1]))
    if not ok:
        return False
    lib = _load()
    if lib is None:
        return False
    rows = rows.contiguous()
    grads = grads.reshape(rows.numel(), weight.shape[1]).contiguous()
    code = lib.compemb_sparse_adagrad(
        weight.data_ptr(), state.data_ptr(), weight.shape[0], weight.shape[1], state.shape[1],
        rows.data_ptr(), grads.data_ptr(), rows.numel(), lr, eps,
    )  # fmt: skip
    if code == -1:
        raise IndexError(f"sparse Adagrad: a row index is outside [0, {weight.shape[0]})")
    if code != 0:
        raise MemoryError("sparse Adagrad: the kernel could not allocate its sort buffers")
    return True
