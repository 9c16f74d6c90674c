"""compemb's compiled CPU kernels (``csrc/``), when built: the fused optimizer's sparse Adagrad
update, the two-table product of QR mult (forward and backward), the seeded universal hashes
(ROBE, DHE, CCE; for DHE fused with its uniform encoding), ROBE's unaligned blocks (read, and
their row gradients) and TT-Rec's chain of core products (forward and backward).

``make kernels`` (a step of ``make test`` and ``make demo``) compiles them with the system C
compiler into ``build/kernels/``; ``COMPEMB_KERNELS`` may name another path, and
``COMPEMB_NO_KERNELS=1`` turns them off. Nothing is compiled at import time: without the library
the pure-torch code runs, and the first use prints one line saying so. Each wrapper returns False,
doing nothing, where its kernel does not apply; callers then take the pure-torch path.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_LIBRARY = "libcompemb_kernels.so"
_state: dict[str, object] = {}


def _path() -> Path:
    env = os.environ.get("COMPEMB_KERNELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "build" / "kernels" / _LIBRARY


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
                p, i = ctypes.c_void_p, ctypes.c_int64
                lib.compemb_mult2_forward.restype = ctypes.c_int
                lib.compemb_mult2_forward.argtypes = [p, i, p, i, p, p, i, i, i, p, p, p]
                lib.compemb_mult2_backward.restype = ctypes.c_int
                lib.compemb_mult2_backward.argtypes = [p, p, i, p, p, i, p, p, i, i, i, p,
                                                       p, p, p, p]  # fmt: skip
            except (OSError, AttributeError):
                lib = None
            try:  # a library built before the hashes were added still serves the rest
                lib.compemb_universal_hash.restype = ctypes.c_int
                lib.compemb_universal_hash.argtypes = [p, i, p, i, i, p]
                lib.compemb_hash_affine.restype = ctypes.c_int
                lib.compemb_hash_affine.argtypes = [p, i, p, i, i, ctypes.c_float,
                                                    ctypes.c_float, p]
                _state["hash"] = True
            except AttributeError:
                _state["hash"] = False
            try:  # the per-column form came later still
                lib.compemb_universal_hash_columns.restype = ctypes.c_int
                lib.compemb_universal_hash_columns.argtypes = [p, i, i, p, i, i, p]
                _state["hash_columns"] = True
            except AttributeError:
                _state["hash_columns"] = False
            try:  # ROBE's unaligned blocks
                lib.compemb_robe_read.restype = ctypes.c_int
                lib.compemb_robe_read.argtypes = [p, i, i, p, i, p]
                lib.compemb_robe_row_grads.restype = ctypes.c_int
                lib.compemb_robe_row_grads.argtypes = [p, i, i, p, i, p, p, p]
                _state["robe"] = True
            except AttributeError:
                _state["robe"] = False
            try:  # ROBE's dense gradient came later
                lib.compemb_robe_add.restype = ctypes.c_int
                lib.compemb_robe_add.argtypes = [p, i, i, p, i, p]
                _state["robe_add"] = True
            except AttributeError:
                _state["robe_add"] = False
            try:  # TT-Rec's chain
                lib.compemb_tt_forward.restype = ctypes.c_int
                lib.compemb_tt_forward.argtypes = [i, p, p, p, p, p, i, p]
                lib.compemb_tt_backward.restype = ctypes.c_int
                lib.compemb_tt_backward.argtypes = [i, p, p, p, p, p, p, i, p, p]
                _state["tt"] = True
            except AttributeError:
                _state["tt"] = False
        if os.environ.get("COMPEMB_NO_KERNELS") == "1":
            print("compemb: compiled CPU kernels turned off (COMPEMB_NO_KERNELS=1); using the "
                  "pure-torch code", file=sys.stderr)  # fmt: skip
        elif lib is None:
            print(f"compemb: compiled CPU kernels not found at {path} (build them with "
                  f"`make kernels`); using the pure-torch code", file=sys.stderr)  # fmt: skip
        _state["lib"] = lib
    return _state["lib"]  # type: ignore[return-value]


@contextmanager
def turned_off() -> Iterator[None]:
    """The kernels off inside the block (``torch.export`` cannot capture a ctypes call): every
    wrapper takes the pure-torch path."""
    _load()
    lib = _state["lib"]
    _state["lib"] = None
    try:
        yield
    finally:
        _state["lib"] = lib


def sparse_adagrad(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor,
                   grads: torch.Tensor, lr: float, eps: float) -> bool:
    """The kernel's update (see :func:`compemb.optim.rowwise.sparse_adagrad_`), in place; False,
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


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def mult2_applies(weights, buckets) -> bool:
    """Whether the two-table product kernel can take these tables and bucket tensors."""
    a, b = weights
    return (not torch.compiler.is_compiling() and a.device.type == b.device.type == "cpu"
            and a.dtype == b.dtype == torch.float32 and a.dim() == b.dim() == 2
            and a.shape[1] == b.shape[1] and a.is_contiguous() and b.is_contiguous()
            and all(x.dtype == torch.int64 and x.is_contiguous() for x in buckets)
            and _load() is not None)  # fmt: skip


def _check(code: int, rows: tuple[int, int]) -> None:
    if code != 0:
        raise IndexError(f"compose: a bucket index is outside its table's rows {rows}")


def mult2_forward(a: torch.Tensor, b: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
                  columns: int, absent: torch.Tensor | None, kept: torch.Tensor | None
                  ) -> torch.Tensor:  # fmt: skip
    """``A[ia] * B[ib]`` (N, D), the identity for B on the columns ``absent`` (uint8 (C,)) marks;
    ``kept`` (N, D) receives ``A[ia]``."""
    n, d = ia.numel(), a.shape[1]
    out = a.new_empty(n, d)
    _check(_load().compemb_mult2_forward(  # type: ignore[union-attr]
        a.data_ptr(), a.shape[0], b.data_ptr(), b.shape[0], ia.data_ptr(), ib.data_ptr(), n, d,
        columns, _ptr(absent), out.data_ptr(), _ptr(kept)), (a.shape[0], b.shape[0]))
    return out


def mult2_backward(g: torch.Tensor, a: torch.Tensor, kept: torch.Tensor | None, b: torch.Tensor,
                   ia: torch.Tensor, ib: torch.Tensor, columns: int,
                   absent: torch.Tensor | None, outputs: list[torch.Tensor | None],
                   dense: list[bool]) -> None:  # fmt: skip
    """Both tables' gradients from the output gradient g (N, D): ``outputs[j]`` is None (not
    needed), (N, D) row gradients, or, where ``dense[j]``, a zeroed (R_j, D) gradient to add to."""
    val_a, dense_a = (None, outputs[0]) if dense[0] else (outputs[0], None)
    val_b, dense_b = (None, outputs[1]) if dense[1] else (outputs[1], None)
    _check(_load().compemb_mult2_backward(  # type: ignore[union-attr]
        g.data_ptr(), a.data_ptr(), a.shape[0], _ptr(kept), b.data_ptr(), b.shape[0],
        ia.data_ptr(), ib.data_ptr(), ia.numel(), a.shape[1], columns, _ptr(absent),
        _ptr(val_a), _ptr(dense_a), _ptr(val_b), _ptr(dense_b)), (a.shape[0], b.shape[0]))


def _hash_applies(ids: torch.Tensor, coefficients: torch.Tensor) -> bool:
    """One set of hashes for every id: ids (N,), coefficients (2, k)."""
    return (not torch.compiler.is_compiling() and ids.device.type == "cpu"
            and coefficients.device.type == "cpu" and ids.dim() == 1
            and coefficients.dim() == 2 and coefficients.shape[0] == 2
            and _load() is not None and bool(_state.get("hash")))  # fmt: skip


def _columns_apply(ids: torch.Tensor, coefficients: torch.Tensor) -> bool:
    """A set of hashes per column: ids (B, G), coefficients (G, 2, k)."""
    return (not torch.compiler.is_compiling() and ids.device.type == "cpu"
            and coefficients.device.type == "cpu" and ids.dim() == 2
            and coefficients.dim() == 3 and coefficients.shape[1] == 2
            and coefficients.shape[0] == ids.shape[1]
            and _load() is not None and bool(_state.get("hash_columns")))  # fmt: skip


def _check_ids(code: int) -> None:
    if code != 0:
        raise IndexError("universal hash: an id is outside [0, 2^31 - 1)")


def universal_hash(ids: torch.Tensor, coefficients: torch.Tensor, buckets: int
                   ) -> torch.Tensor | None:
    """The kernel's :func:`compemb.embeddings._universal.universal_hash`: (N, k) int64, or
    (B, G, k) for ids (B, G) and coefficients (G, 2, k); None where it does not apply (no
    library; not CPU tensors)."""
    if _columns_apply(ids, coefficients):
        ids = ids.long().contiguous()
        co = coefficients.long().contiguous()
        out = torch.empty(*ids.shape, co.shape[2], dtype=torch.int64)
        _check_ids(_load().compemb_universal_hash_columns(  # type: ignore[union-attr]
            ids.data_ptr(), ids.shape[0], ids.shape[1], co.data_ptr(), co.shape[2], buckets,
            out.data_ptr()))
        return out
    if not _hash_applies(ids, coefficients):
        return None
    ids = ids.long().contiguous()
    co = coefficients.long().contiguous()
    out = torch.empty(ids.shape[0], co.shape[1], dtype=torch.int64)
    _check_ids(_load().compemb_universal_hash(  # type: ignore[union-attr]
        ids.data_ptr(), ids.shape[0], co.data_ptr(), co.shape[1], buckets, out.data_ptr()))
    return out


def hash_affine(ids: torch.Tensor, coefficients: torch.Tensor, buckets: int, scale: float,
                shift: float) -> torch.Tensor | None:
    """``universal_hash(ids, coefficients, buckets).float() * scale + shift`` (N, k) float32 in
    one pass, rounded as those float32 operations round; None where the kernel does not apply."""
    if not _hash_applies(ids, coefficients):
        return None
    ids = ids.long().contiguous()
    co = coefficients.long().contiguous()
    out = torch.empty(ids.shape[0], co.shape[1], dtype=torch.float32)
    _check_ids(_load().compemb_hash_affine(  # type: ignore[union-attr]
        ids.data_ptr(), ids.shape[0], co.data_ptr(), co.shape[1], buckets, scale, shift,
        out.data_ptr()))
    return out


def _robe_applies(offsets: torch.Tensor, values: torch.Tensor) -> bool:
    return (not torch.compiler.is_compiling() and offsets.device.type == "cpu"
            and values.device.type == "cpu" and offsets.dtype == torch.int64
            and values.dtype == torch.float32 and values.dim() == 2
            and _load() is not None and bool(_state.get("robe")))  # fmt: skip


def _check_offsets(code: int) -> None:
    if code != 0:
        raise IndexError("ROBE blocks: an offset is outside the array")


def robe_read(table: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor | None:
    """The blocks of Z elements of ``table`` (R, Z) at ``offsets`` (N,) in [0, R Z), read
    circularly: (N, Z); None where the kernel does not apply."""
    if not _robe_applies(offsets, table) or not table.is_contiguous():
        return None
    offsets = offsets.contiguous()
    out = table.new_empty(offsets.numel(), table.shape[1])
    _check_offsets(_load().compemb_robe_read(  # type: ignore[union-attr]
        table.data_ptr(), table.shape[0], table.shape[1], offsets.data_ptr(), offsets.numel(),
        out.data_ptr()))
    return out


def robe_row_grads(rows: int, offsets: torch.Tensor, grads: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows of a table of ``rows`` rows of width Z that the blocks at ``offsets`` (N,) lie
    in (two per block, one where it starts a row), and their gradients (., Z) from the blocks'
    gradients ``grads`` (N, Z); None where the kernel does not apply."""
    if not _robe_applies(offsets, grads):
        return None
    offsets, grads = offsets.contiguous(), grads.contiguous()
    n, z = offsets.numel(), grads.shape[1]
    out = offsets.new_empty(2 * n)
    values = grads.new_empty(2 * n, z)
    written = ctypes.c_int64(0)
    _check_offsets(_load().compemb_robe_row_grads(  # type: ignore[union-attr]
        grads.data_ptr(), rows, z, offsets.data_ptr(), n, out.data_ptr(), values.data_ptr(),
        ctypes.addressof(written)))
    return out[: written.value], values[: written.value]


def robe_dense_grad(shape: tuple[int, int], offsets: torch.Tensor, grads: torch.Tensor
                    ) -> torch.Tensor | None:
    """The gradient of a whole (R, Z) table from the gradients ``grads`` (N, Z) of its blocks at
    ``offsets`` (N,) in [0, R Z), each added at its place, circularly; None where the kernel does
    not apply."""
    if not _robe_applies(offsets, grads) or not _state.get("robe_add"):
        return None
    offsets, grads = offsets.contiguous(), grads.contiguous()
    out = grads.new_zeros(shape)
    _check_offsets(_load().compemb_robe_add(  # type: ignore[union-attr]
        grads.data_ptr(), shape[0], shape[1], offsets.data_ptr(), offsets.numel(),
        out.data_ptr()))
    return out


def tt_applies(tables: Sequence[torch.Tensor], indices: Sequence[torch.Tensor | None]) -> bool:
    """Whether the TT chain kernel can take these core tables (K <= 8) and row indices."""
    return (not torch.compiler.is_compiling() and 0 < len(tables) <= 8
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2
                    and t.is_contiguous() for t in tables)
            and all(x is None or (x.device.type == "cpu" and x.dtype == torch.int64)
                    for x in indices)
            and _load() is not None and bool(_state.get("tt")))  # fmt: skip


def _pointers(tensors: Sequence[torch.Tensor | None]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(_ptr(t) for t in tensors))


def _tt_shapes(dims: Sequence[int], ranks: Sequence[int], tables: Sequence[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(dims, dtype=torch.int64), torch.tensor(ranks, dtype=torch.int64),
            torch.tensor([t.shape[0] for t in tables], dtype=torch.int64))


def _check_tt(code: int) -> None:
    if code == -3:
        raise IndexError("TT chain: a core row index is outside its table")
    if code == -2:
        raise MemoryError("TT chain: the kernel could not allocate its buffers")
    if code != 0:
        raise ValueError("TT chain: the kernel does not take these dims and ranks")


# Ids per thread below which the TT chain runs on one thread (a chunk's call costs more than its
# work); above, the ids are split over torch's intra-op thread count, one kernel call each (a
# ctypes call releases the GIL, so the calls run at once).
_TT_IDS_PER_THREAD = 2048
_pool: dict[str, Any] = {}


def _parallel(calls: list[Callable[[], int]]) -> list[int]:
    """Run the zero-argument kernel calls at once (one on this thread), their return codes."""
    if len(calls) == 1:
        return [calls[0]()]
    pool = _pool.get("pool")
    # a fresh pool after a fork (its threads are not in the child) or for more threads
    if pool is None or _pool["pid"] != os.getpid() or _pool["size"] < len(calls) - 1:
        pool = ThreadPoolExecutor(len(calls) - 1, thread_name_prefix="compemb-kernels")
        _pool.update(pool=pool, pid=os.getpid(), size=len(calls) - 1)
    futures = [pool.submit(call) for call in calls[1:]]
    return [calls[0](), *(f.result() for f in futures)]


def _tt_spans(n: int) -> list[tuple[int, int]]:
    threads = max(1, min(torch.get_num_threads(), n // _TT_IDS_PER_THREAD))
    step = -(-n // threads) if n else 1
    return [(s, min(n, s + step)) for s in range(0, n, step)] or [(0, 0)]


def _tt_chunk(tables: Sequence[torch.Tensor], indices: Sequence[torch.Tensor | None], s: int,
              e: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Ids s..e: their indices, or their own rows where a core's rows are given per id."""
    return ([t if x is not None else t[s:e] for t, x in zip(tables, indices, strict=True)],
            [None if x is None else x[s:e] for x in indices])


def tt_forward(dims: Sequence[int], ranks: Sequence[int], tables: Sequence[torch.Tensor],
               indices: Sequence[torch.Tensor | None], n: int) -> torch.Tensor:
    """The chain of each of n ids' core rows, (n, prod dims): core j's row of id i is
    ``tables[j][indices[j][i]]``, or ``tables[j][i]`` where ``indices[j]`` is None."""
    indices = [None if x is None else x.contiguous() for x in indices]
    d, r, rows = _tt_shapes(dims, ranks, tables)
    out = tables[0].new_empty(n, math.prod(dims))

    def call(s: int, e: int) -> Callable[[], int]:
        ts, xs = _tt_chunk(tables, indices, s, e)
        return lambda: _load().compemb_tt_forward(  # type: ignore[union-attr]
            len(dims), d.data_ptr(), r.data_ptr(), _pointers(ts), rows.data_ptr(),
            _pointers(xs), e - s, out[s:e].data_ptr())

    for code in _parallel([call(s, e) for s, e in _tt_spans(n)]):
        _check_tt(code)
    return out


def tt_backward(dims: Sequence[int], ranks: Sequence[int], tables: Sequence[torch.Tensor],
                indices: Sequence[torch.Tensor | None], grad: torch.Tensor,
                outputs: Sequence[torch.Tensor | None], dense: Sequence[bool]) -> None:
    """Each core's gradient from the chain's output gradient ``grad`` (n, D): ``outputs[j]`` is
    None (not needed), the ids' row gradients (n, w_j), or, where ``dense[j]``, a zeroed
    (R_j, w_j) gradient to add to."""
    indices = [None if x is None else x.contiguous() for x in indices]
    d, r, rows = _tt_shapes(dims, ranks, tables)
    flags = torch.tensor([bool(x) for x in dense], dtype=torch.uint8)
    grad = grad.contiguous()
    spans = _tt_spans(grad.shape[0])
    # every chunk but the first adds its dense gradients into a zeroed copy, summed after
    extra = [[torch.zeros_like(o) if o is not None and dense[j] else None
              for j, o in enumerate(outputs)] for _ in spans[1:]]  # fmt: skip

    def call(k: int, s: int, e: int) -> Callable[[], int]:
        ts, xs = _tt_chunk(tables, indices, s, e)
        outs = [None if o is None else (o if k == 0 else extra[k - 1][j]) if dense[j]
                else o[s:e] for j, o in enumerate(outputs)]  # fmt: skip
        return lambda: _load().compemb_tt_backward(  # type: ignore[union-attr]
            len(dims), d.data_ptr(), r.data_ptr(), _pointers(ts), rows.data_ptr(),
            _pointers(xs), grad[s:e].data_ptr(), e - s, flags.data_ptr(), _pointers(outs))

    for code in _parallel([call(k, s, e) for k, (s, e) in enumerate(spans)]):
        _check_tt(code)
    for more in extra:
        for o, x in zip(outputs, more, strict=True):
            if x is not None:
                o.add_(x)
