"""Features that share a table layout, looked up together.

One weight tensor per partition position holds the rows of every feature in the group (feature
f's rows start at a per-feature offset), so a batch costs a few large operations instead of two
small ones per feature. Every full table, hashing trick, and modulo or mixed-radix partition set
reduces to the same arithmetic: bucket j of id i is ``(i // place_j) mod modulus_j``.

Letters: B batch, G features in the group, k partitions, D width, N ids of a bag feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._bags import Bags, pool
from compemb.embeddings._fused import compose_lookup
from compemb.operations import Operation
from compemb.partitions import Digit, HotSlots, digit, hot_slot, relabel_dtype

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

# Stacked tables up to this many rows get dense gradients even with sparse=True.
DENSE_GRAD_MAX_ROWS = 4096

# One Digit (or HotSlots) per partition of one feature.
Layout = tuple[Digit | HotSlots, ...]


@dataclass(frozen=True)
class TableStack:
    """Which :class:`TableGroup` a feature joins: features with equal keys share one.

    Attributes:
        operation: the operation composing the tables; None: each table is its own output
            (feature generation).
        widths: the tables' widths, in partition order.
        kinds: ``digit`` or ``hot`` for each partition.
        relabelled: whether ids are renumbered first.
    """

    operation: str | None
    widths: tuple[int, ...]
    kinds: tuple[str, ...]
    relabelled: bool

    @classmethod
    def of(cls, plan: FeaturePlan, operation: str | None) -> TableStack | str:
        """The key of ``plan``'s feature, or why its partitions cannot be stacked."""
        layout = plan.partitions.layout()
        if layout is None:
            return (f"{type(plan.partitions).__name__} is not index arithmetic of the form "
                    f"(i // place) mod modulus")
        kinds = tuple("hot" if isinstance(d, HotSlots) else "digit" for d in layout)
        return cls(operation, tuple(t.width for t in plan.tables), kinds,
                   plan.partitions.relabeling() is not None)


class BucketIndex(nn.Module):
    """Bucket arithmetic of G features with k partitions each, on stacked tables.

    Row of id i in the stacked table of position j: ``(i' // place) mod modulus + start`` with
    the feature's place, modulus and row offset (``start``) at that position, where i' is the
    relabelled id (frequency order: one stacked int32 map, saved with the model) or i itself.
    A :class:`~compemb.partitions.HotSlots` position gives i' its slot among the feature's hot
    ids (saved with the model too), or the feature's shared tail row.
    """

    def __init__(self, num_categories: Sequence[int], layouts: Sequence[Layout], *,
                 relabels: Sequence[torch.Tensor | None] | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        k = max(len(lay) for lay in layouts)
        # A feature without a partition at some position (rows 0) points at row 0 there; the
        # group masks that part out. Layouts are padded to k with Digit(1, 1, 0).
        layouts = [tuple(lay) + (Digit(1, 1, 0),) * (k - len(lay)) for lay in layouts]
        self.rows = [[lay[j].rows for lay in layouts] for j in range(k)]
        self.starts = [[sum(r[:f]) if r[f] else 0 for f in range(len(r))] for r in self.rows]
        self._hot = [any(isinstance(lay[j], HotSlots) for lay in layouts) for j in range(k)]
        for j in range(k):
            if self._hot[j] and not all(isinstance(lay[j], HotSlots) or lay[j].rows == 0
                                        for lay in layouts):
                raise ValueError(f"position {j} mixes hot slots and digits: cannot stack")

        def table(values: list[list[int]]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        def field(j: int, name: str) -> list[int]:
            return [getattr(lay[j], name) if isinstance(lay[j], Digit) else 1 for lay in layouts]

        self.register_buffer("place", table([field(j, "place") for j in range(k)]),
                             persistent=False)
        self.register_buffer("modulus", table([field(j, "modulus") for j in range(k)]),
                             persistent=False)
        self.register_buffer("start", table(self.starts), persistent=False)
        # Skip the division where every place is 1, and the remainder where no digit reaches
        # its modulus (full tables, the top digit of a radix).
        self._divide = [any(p != 1 for p in field(j, "place")) for j in range(k)]
        self._reduce = [
            any(-(-n // p) > m for n, p, m
                in zip(num_categories, field(j, "place"), field(j, "modulus"), strict=True))
            for j in range(k)
        ]  # fmt: skip
        for j in range(k):
            if not self._hot[j]:
                continue
            none = torch.empty(0, dtype=torch.int64)
            hots = [lay[j].ids if isinstance(lay[j], HotSlots) else none for lay in layouts]
            width = max(1, max(h.numel() for h in hots))
            padded = torch.full((len(hots), width), torch.iinfo(torch.int64).max,
                                dtype=torch.int64)
            for f, h in enumerate(hots):
                padded[f, : h.numel()] = h
            # The hot ids are part of the model: evaluation maps ids as training did.
            self.register_buffer(f"hot{j}", padded.to(device))
            self.register_buffer(f"_tail{j}", table([[h.numel() for h in hots]])[0],
                                 persistent=False)
        self.hot_counts = {j: [lay[j].rows - 1 if isinstance(lay[j], HotSlots) else 0
                               for lay in layouts] for j in range(k) if self._hot[j]}
        self.relabel_rows: list[int] = []
        if relabels is not None and any(r is not None for r in relabels):
            if any(r is None for r in relabels):
                raise ValueError("a stacked group relabels all its features or none")
            self.relabel_rows = [r.numel() for r in relabels]
            dtype = relabel_dtype(max(self.relabel_rows))
            stacked = torch.cat([r.to(dtype) for r in relabels])
            self.register_buffer("relabel", stacked.to(device))
            starts = [sum(self.relabel_rows[:f]) for f in range(len(relabels))]
            self.register_buffer("_relabel_start", table([starts])[0], persistent=False)

    def relabelled(self, ids: torch.Tensor, cols: slice | int | list[int]) -> torch.Tensor:
        """ids (any shape, last dim the features ``cols``) -> the ids the digits read."""
        if not self.relabel_rows:
            return ids
        return self.relabel[ids + self._relabel_start[cols]].long()

    def forward(self, ids: torch.Tensor, cols: slice | int | list[int], j: int,
                offset: bool = True, relabelled: bool = False) -> torch.Tensor:
        """ids (any shape, last dim the features ``cols``) -> rows at position j (same shape).
        ``relabelled``: the ids are already relabelled (:meth:`relabelled`)."""
        if not relabelled:
            ids = self.relabelled(ids, cols)
        if self._hot[j]:
            hot = getattr(self, f"hot{j}")[cols]
            b = torch.minimum(hot_slot(ids, hot.view(-1, hot.shape[-1])),
                              getattr(self, f"_tail{j}")[cols])
        else:
            b = digit(ids, self.place[j, cols], self.modulus[j, cols], divide=self._divide[j],
                      reduce=self._reduce[j])
        return b + self.start[j, cols] if offset else b

    def buckets(self, ids: torch.Tensor, cols: slice | int | list[int]) -> list[torch.Tensor]:
        """Rows at every position, relabelling once."""
        ids = self.relabelled(ids, cols)
        return [self(ids, cols, j, relabelled=True) for j in range(len(self.rows))]


class TableGroup(nn.Module):
    """G features composed by one operation from k stacked tables (one per partition position),
    or, with ``operation=None``, G feature-generation features (each table its own output).

    Features with fewer than k partitions (full tables among QR ones) contribute the
    operation's identity where they have no table.

    Shapes: ids (B, G) -> (B, G, D), or (B, G * k, D) for feature generation.
    """

    def __init__(
        self,
        operation: Operation | None,
        dims: Sequence[int],
        num_categories: Sequence[int],
        layouts: Sequence[Layout],
        bounds: Sequence[Sequence[tuple[float, float]]],
        *,
        sparse: bool,
        relabels: Sequence[torch.Tensor | None] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.op = operation
        self.dims = tuple(dims)
        self.sparse = sparse
        self._bounds = [list(b) for b in bounds]
        k = len(self.dims)
        self.index = BucketIndex(num_categories, layouts, relabels=relabels, device=device)
        rows, starts = self.index.rows, self.index.starts
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(sum(rows[j]), self.dims[j], device=device, dtype=dtype))
            for j in range(k)
        )
        self._rows, self._starts = rows, starts
        # Small tables take dense gradients: every batch touches most of their rows anyway.
        self._sparse = tuple(sparse and sum(r) > DENSE_GRAD_MAX_ROWS for r in rows)
        # Features with fewer partitions (full tables among QR ones) lack some positions.
        self._absent = [[f for f, r in enumerate(rows[j]) if r == 0] for j in range(k)]
        for j, cols in enumerate(self._absent):
            self.register_buffer(f"_absent{j}", torch.tensor(cols, device=device) if cols else None,
                                 persistent=False)
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def tables(self, i: int) -> list[torch.Tensor]:
        """The group's i-th feature's tables: views into the stacked weights."""
        return [w[self._starts[j][i] : self._starts[j][i] + self._rows[j][i]]
                for j, w in enumerate(self.weights) if self._rows[j][i]]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for f, bounds in enumerate(self._bounds):
                for j, (lo, hi) in enumerate(bounds):
                    s, r = self._starts[j][f], self._rows[j][f]
                    self.weights[j][s : s + r].uniform_(lo, hi)

    def _buckets(self, ids: torch.Tensor, cols: slice | int | list[int]) -> list[torch.Tensor]:
        return self.index.buckets(ids, cols)

    def _lookup(self, ids: torch.Tensor, cols: slice | int | list[int]) -> torch.Tensor:
        """Composed vectors (*ids.shape, D), or (*ids.shape, k, D) for feature generation."""
        buckets = self._buckets(ids, cols)
        if self.op is None:
            return torch.stack([F.embedding(b, w, sparse=s) for b, w, s
                                in zip(buckets, self.weights, self._sparse, strict=True)], -2)
        absent = [self._absent_in(j, cols, ids.device) for j in range(len(buckets))]
        return compose_lookup(self.op, buckets, list(self.weights), self._sparse, absent)

    def _absent_in(self, j: int, cols: slice | int | list[int],
                   device: torch.device) -> torch.Tensor | None:
        """Positions, among the columns ``cols``, of the features without a table at j."""
        if not self._absent[j]:
            return None
        if isinstance(cols, slice):
            return getattr(self, f"_absent{j}")
        picked = [i for i, f in enumerate(cols) if f in self._absent[j]]
        return torch.tensor(picked, device=device) if picked else None

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G) of this group's features in group order (or of the group's features
        ``members`` only) -> (B, G', D)."""
        out = self._lookup(ids, slice(None) if members is None else members)
        return out.flatten(1, 2) if self.op is None else out

    def forward_bag(self, f: int, bags: Bags, mode: str) -> torch.Tensor:
        """One multi-hot feature (the group's f-th): compose per id, then pool -> (B, D) or
        (B, k, D) for feature generation (each partition pooled on its own)."""
        out = self._lookup(bags.ids.unsqueeze(1), [f]).squeeze(1)
        if self.op is None:
            return torch.stack([pool(out[:, j], bags, mode, False)
                                for j in range(out.shape[1])], dim=1)
        return pool(out, bags, mode, False)
