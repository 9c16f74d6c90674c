"""ROBE features looked up together: every feature's block offsets in one hash call, every block
of the batch in one gather.

G features of one ROBE spec (M, Z, L = D / Z blocks per id). Their hashes are stacked (G, 2, L),
so the universal hash (``_universal.universal_hash``) computes the offsets of the whole
(B, G) batch in one call (each column with its feature's hashes), and one gather reads every
block through the fused ``compose_lookup`` (row gradients routed to ``FusedAdagrad``). The table
is row-indexed:

- ROBE-Z (``shared``): the collection's one array as (M / Z, Z), held by the group (saved as
  ``shared.<key>.weight``, as the per-feature collection saves it); an unaligned block at
  offset o lies in rows o // Z and o // Z + 1 (mod M / Z): :func:`unaligned_blocks` reads it
  (Z elements from o, in a compiled kernel where built) and gives those rows their
  gradients (one row where o is a multiple of Z);
- an array per feature, aligned: the features' (M / Z, Z) arrays one under the other;
- an array per feature, unaligned: their (M, 1) arrays one under the other, a block being Z
  rows (each element its own row, as the per-feature module keeps it).

Letters: B batch, G features, D width, Z block size, L blocks per id, M array size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compemb import _kernels
from compemb.embeddings._fused import compose_lookup
from compemb.embeddings._universal import universal_hash
from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS
from compemb.embeddings.robe import read_blocks, robe_coefficients, robe_table_shape
from compemb.embeddings.stacked import StackedGroup, StackKey
from compemb.operations import get_operation
from compemb.optim.fused import Sink, gradient_sink

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

__all__ = ["RobeGroup", "RobeStack", "block_dense_grad", "block_row_grads", "unaligned_blocks"]

_ONE = get_operation("add")  # one table: its rows as they are


@dataclass(frozen=True)
class RobeStack(StackKey):
    """The key of ROBE features of one spec's array and blocks (the seed only draws hashes)."""

    embedding_dim: int
    size: int
    block: int
    aligned: bool
    shared: bool

    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> RobeGroup:
        return RobeGroup(plans, sparse=sparse, device=device, dtype=dtype)


class RobeGroup(StackedGroup):
    """G ROBE features (module docstring): the array(s) as one table ``weight`` and the hashes
    ``coefficients`` (G, 2, L) int32.

    Init as :class:`~compemb.embeddings.robe.RobeEmbeddingBag`: each array U(lo, hi) as its
    plan says (the shared one by its :class:`~compemb.spec.SharedPlan`), each feature's hashes
    drawn from its seed (and its place among the features of the shared array).

    Shapes: ids (B, G) -> (B, G, D).

    >>> from compemb import EmbeddingBagCollection, EmbeddingSpec
    >>> ebc = EmbeddingBagCollection([5000, 800], 16, EmbeddingSpec("robe", size=1024))
    >>> (group,) = ebc.groups
    >>> tuple(group.weight.shape), tuple(group.coefficients.shape), group.shared_keys
    ((256, 4), (2, 2, 4), ('robe',))
    >>> sorted(ebc.state_dict())
    ['features.0.coefficients', 'features.1.coefficients', 'shared.robe.weight']
    """

    def __init__(self, plans: Sequence[FeaturePlan], *, sparse: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.plans = tuple(plans)
        s = self.plans[0].spec.settings
        self.embedding_dim = self.plans[0].embedding_dim
        self.size, self.block, self.aligned = s.size, s.block, s.aligned
        self.per_element = s.per_element
        self.shared = self.plans[0].shared if s.shared else None
        # rows of one array in the table; every feature's start in it
        self.rows, width = robe_table_shape(s.size, s.block, self.per_element)
        g = 1 if self.shared is not None else len(self.plans)
        self.starts = [0 if self.shared is not None else f * self.rows
                       for f in range(len(self.plans))]  # fmt: skip
        self.weight = nn.Parameter(torch.empty(g * self.rows, width, device=device, dtype=dtype))
        self._sparse = sparse and self.weight.shape[0] > DENSE_GRAD_MAX_ROWS
        blocks = self.embedding_dim // s.block
        coefficients = torch.stack([
            robe_coefficients(blocks, p.spec.settings.seed, p.member if s.shared else None)
            for p in self.plans])  # fmt: skip
        where = device if device is not None and torch.device(device).type != "meta" else None
        self.register_buffer("coefficients", coefficients.to(where))
        self.register_buffer("_start", torch.tensor(self.starts, device=where).view(1, -1, 1),
                             persistent=False)
        self.register_buffer("_within", torch.arange(s.block, device=where), persistent=False)
        self.reset_parameters()

    @property
    def shared_keys(self) -> tuple[str, ...]:
        return () if self.shared is None else (self.shared.key,)

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.shared is not None:
                self.weight.uniform_(*self.shared.tables[0].bounds)
                return
            for i, plan in enumerate(self.plans):
                self.tables(i)[0].uniform_(*plan.tables[0].bounds)

    def tables(self, i: int) -> list[torch.Tensor]:
        if self.shared is not None:
            return [self.weight]
        return [self.weight[self.starts[i] : self.starts[i] + self.rows]]

    def table_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        keys: list[tuple[str, str, Any]] = [
            (f"features.{f}.coefficients", f"{prefix}.coefficients", i)
            for i, f in enumerate(features)]  # fmt: skip
        if self.shared is not None:  # saved once, as the collection saves a shared plan
            (table,) = self.shared.tables
            return [*keys, (f"shared.{self.shared.key}.{table.name}", f"{prefix}.weight", None)]
        return keys + [(f"features.{f}.{self.plans[i].tables[0].name}", f"{prefix}.weight",
                        slice(self.starts[i], self.starts[i] + self.rows))
                       for i, f in enumerate(features)]  # fmt: skip

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of the group's features ``members`` (all when None) -> (B, G', D)."""
        cols = slice(None) if members is None else members
        co = self.coefficients[cols]
        z = self.block
        if self.aligned:  # the block's row itself
            rows = universal_hash(ids, co, self.size // z)
            if self.shared is None:
                rows = rows + self._start[:, cols]
            out = compose_lookup(_ONE, [rows], [self.weight], [self._sparse])
        elif self.per_element:  # Z rows of width 1 from the offset, circularly
            rows = universal_hash(ids, co, self.size).unsqueeze(-1) + self._within
            rows = torch.where(rows >= self.size, rows - self.size, rows)
            rows = rows + self._start[:, cols].unsqueeze(-1)
            out = compose_lookup(_ONE, [rows], [self.weight], [self._sparse])
        else:  # each block read from its offset, wrapping past the end
            out = unaligned_blocks(self.weight, universal_hash(ids, co, self.size), self._sparse)
        return out.view(*ids.shape, self.embedding_dim)  # sizes spelled out: B may be 0


class _UnalignedBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sink: Sink | None, sparse: bool, offsets: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
        flat = offsets.reshape(-1)
        out = _kernels.robe_read(weight, flat)
        if out is None:
            out = read_blocks(weight, flat.unsqueeze(1), aligned=False)
        ctx.sink, ctx.sparse, ctx.shape = sink, sparse, weight.shape
        ctx.save_for_backward(flat)
        return out.view(*offsets.shape[:-1], offsets.shape[-1] * weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[3]:
            return None, None, None, None
        (flat,) = ctx.saved_tensors
        grads = grad.reshape(-1, ctx.shape[1])
        if ctx.sink is not None and 2 * flat.numel() >= ctx.shape[0]:
            # The blocks' rows would number at least the table's: one dense gradient costs less
            # than sorting them, and the fused optimizer's dense update equals its row update
            # (rows without a gradient are left as they are).
            return None, None, None, block_dense_grad(ctx.shape, flat, grads)
        rows, values = block_row_grads(ctx.shape, flat, grads)
        if ctx.sink is not None:
            ctx.sink(rows, values)  # the optimizer updates these rows: no gradient
            return None, None, None, None
        if ctx.sparse:
            return None, None, None, torch.sparse_coo_tensor(rows.unsqueeze(0), values,
                                                             ctx.shape, check_invariants=False)
        return None, None, None, values.new_zeros(ctx.shape).index_add_(0, rows, values)


def block_row_grads(shape: tuple[int, int], offsets: torch.Tensor, grads: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of a (R, Z) table that blocks at ``offsets`` (N,) lie in, in block order (two per
    block; one where it starts a row: the next would get zeros), and their gradients (., Z):
    each block's gradient ``grads`` (N, Z) at its place in its rows, zeros around it.

    >>> rows, values = block_row_grads((3, 2), torch.tensor([1, 4]), torch.tensor([[1., 2.],
    ...                                                                          [3., 4.]]))
    >>> rows.tolist(), values.tolist()
    ([0, 1, 2], [[0.0, 1.0], [2.0, 0.0], [3.0, 4.0]])
    """
    rows, z = shape
    fast = _kernels.robe_row_grads(rows, offsets, grads)
    if fast is not None:
        return fast
    first = torch.div(offsets, z, rounding_mode="floor")
    within = offsets - first * z
    second = first + 1
    pairs = torch.stack([first, torch.where(second == rows, 0, second)], dim=1).view(-1)
    cols = within.unsqueeze(1) + torch.arange(z, device=offsets.device)
    values = grads.new_zeros(offsets.numel(), 2 * z).scatter_(1, cols, grads).view(-1, z)
    needed = torch.stack([torch.ones_like(within, dtype=torch.bool), within != 0], 1).view(-1)
    return pairs[needed], values[needed]


def block_dense_grad(shape: tuple[int, int], offsets: torch.Tensor, grads: torch.Tensor
                     ) -> torch.Tensor:
    """The gradient of a whole (R, Z) table from its blocks' at ``offsets`` (N,): each block's
    gradient ``grads`` (N, Z) added at its place, circularly.

    >>> block_dense_grad((2, 2), torch.tensor([1, 3]), torch.tensor([[1., 2.], [3., 4.]])).tolist()
    [[4.0, 1.0], [2.0, 3.0]]
    """
    fast = _kernels.robe_dense_grad(shape, offsets, grads)
    if fast is not None:
        return fast
    m = shape[0] * shape[1]
    index = offsets.unsqueeze(1) + torch.arange(shape[1], device=offsets.device)
    index = torch.where(index >= m, index - m, index)
    return grads.new_zeros(m).index_add_(0, index.view(-1), grads.reshape(-1)).view(shape)


def unaligned_blocks(weight: torch.Tensor, offsets: torch.Tensor, sparse: bool) -> torch.Tensor:
    """The blocks of Z elements of the array ``weight`` (M / Z, Z) at ``offsets`` (..., L) in
    [0, M), read circularly -> (..., L Z), each index's blocks in order. Its gradient is the
    rows each block lies in (:func:`block_row_grads`), sparse where ``sparse``, handed to a
    fused optimizer where one is routed (``compemb.optim.fused``); where one is routed and the
    rows would number at least the table's, the whole table's (:func:`block_dense_grad`).

    >>> unaligned_blocks(torch.arange(8.0).view(4, 2), torch.tensor([[3, 7]]), False).tolist()
    [[3.0, 4.0, 7.0, 0.0]]
    """
    sink = gradient_sink(weight) if sparse and torch.is_grad_enabled() and weight.requires_grad \
        else None
    return _UnalignedBlocks.apply(sink, sparse, offsets, weight)
