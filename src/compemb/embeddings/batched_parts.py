"""Features cut into frequency parts of mixed widths, looked up together: block MD (each block a
part) and MD + QR (a head part and a QR-composed tail part).

Every feature's categories, ranked by frequency (its ``relabel`` map; without one, the ids are
the ranks), are cut into parts of consecutive ranks; part p is a table (or a quotient and a
remainder table composed by an operation) of width w_p, projected to D by a (D, w_p) matrix
where w_p < D. The parts of one kind and width (a *class*) share stacked tables, so a batch costs
one gather per class (a quotient and a remainder computed for that class's ids only). The
projections are applied by one batched matmul over the features: each id's row is copied (one
row copy per id) to its part's columns of a zero (B, G, W) tensor (W: the widest feature's
projected widths side by side) and multiplied by each feature's projections laid side by side
((G, D, W), assembled from the classes' stacked projections); rows of parts at width D (no
projection) are copied to the output as they are.

Letters: B batch, G features, D width, Q parts of the group, W the widest concatenation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compemb.embeddings._fused import compose_lookup
from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS
from compemb.embeddings.mixed_dim import init_projection
from compemb.embeddings.stacked import StackedGroup, StackKey
from compemb.operations import Operation, get_operation

if TYPE_CHECKING:
    from compemb.spec import FeaturePlan

__all__ = ["Part", "PartedGroup", "PartedStack"]

_ONE = get_operation("add")  # one table: its rows as they are
_MAP_DTYPES = {1: torch.uint8, 2: torch.uint16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Part:
    """Ranks [start, stop) of one feature, embedded by the tables ``tables`` (their names in the
    plan: one table read at rank - start, or a quotient and a remainder table read at
    (rank - start) // collisions and (rank - start) % collisions and composed), of composed
    width ``width``, projected by the plan's dense parameter ``projection`` (None: width D)."""

    start: int
    stop: int
    width: int
    tables: tuple[str, ...]
    projection: str | None
    collisions: int = 1


@dataclass(frozen=True)
class PartedStack(StackKey):
    """The key of parted features: ``cut`` (a module-level function of the scheme) gives a
    plan's parts and its per-feature module's parameter names in order; ``operation`` composes
    two-table parts."""

    embedding_dim: int
    operation: str | None
    cut: Callable[[FeaturePlan], tuple[list[Part], list[str]]]

    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> PartedGroup:
        cuts = [self.cut(plan) for plan in plans]
        op = None if self.operation is None else get_operation(self.operation)
        return PartedGroup(plans, [p for p, _ in cuts], [o for _, o in cuts], op,
                           sparse=sparse, device=device, dtype=dtype)


def _windows(flat: torch.Tensor, width: int) -> torch.Tensor:
    """Every run of ``width`` consecutive elements of a 1-D tensor as a row: row s is
    ``flat[s : s + width]`` (rows overlap; each call reads or writes disjoint ones)."""
    return flat.as_strided((flat.numel() - width + 1, width), (1, 1))


class _Place(torch.autograd.Function):
    """Write rows of values into a copy of ``base`` (zeros of ``size`` when None): row j of
    values i at flat positions ``starts[i][j]`` onward; the backward reads them back."""

    @staticmethod
    def forward(ctx, base: torch.Tensor | None, size: int, starts: tuple[torch.Tensor, ...],
                *values: torch.Tensor):
        if base is None:
            out = values[0].new_zeros(size)
        else:  # a non-contiguous base (the projections' transposed output) is copied once
            out = base.clone() if base.is_contiguous() else base.contiguous()
        flat = out.view(-1)
        # one row copy per id (index_copy_ along rows), not one indexed write per element
        for at, v in zip(starts, values, strict=True):
            _windows(flat, v.shape[1]).index_copy_(0, at, v)
        ctx.starts, ctx.widths = starts, [v.shape[1] for v in values]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.contiguous().view(-1)
        base = None
        if ctx.needs_input_grad[0]:  # overwritten positions take no gradient
            base = g.clone().view(grad.shape)
            for at, w in zip(ctx.starts, ctx.widths, strict=True):
                _windows(base.view(-1), w).index_fill_(0, at, 0.0)
        return (base, None, None, *(_windows(g, w).index_select(0, at)
                                    for at, w in zip(ctx.starts, ctx.widths, strict=True)))


class PartedGroup(StackedGroup):
    """G features cut into frequency parts (module docstring).

    Args:
        plans: the members' plans (their tables, projections and ``relabel`` maps by name).
        parts: each member's parts, covering its ranks [0, n) in order.
        order: each member's parameter names in its per-feature module's order.
        operation: what composes a two-table part (None: no such part).

    Init: each table from its plan's bounds, each projection by its plan's rule.

    Shapes: ids (B, G) -> (B, G, D).
    """

    def __init__(self, plans: Sequence[FeaturePlan], parts: Sequence[Sequence[Part]],
                 order: Sequence[Sequence[str]], operation: Operation | None, *, sparse: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.plans, self.parts, self.order = tuple(plans), [tuple(p) for p in parts], order
        self.operation = operation
        d = self.embedding_dim = self.plans[0].embedding_dim
        ns = [p.num_categories for p in self.plans]
        self.id_starts = [sum(ns[:f]) for f in range(len(ns))]
        shape = {(f, p.name): p.shape for f, plan in enumerate(self.plans) for p in plan.tables}
        # classes: parts of one kind and table widths share stacked tables
        flat = [(f, part) for f, ps in enumerate(self.parts) for part in ps]
        kinds = [(tuple(shape[f, t][1] for t in part.tables), part.width) for f, part in flat]
        self.classes = sorted(set(kinds))
        self._class = [self.classes.index(k) for k in kinds]
        # where each part's tables sit: (class, position among its tables) -> row offset
        self._rows: dict[tuple[int, str], tuple[int, int, int]] = {}  # (f, name) -> (k, t, s)
        heights = [[0] * len(widths) for widths, _ in self.classes]
        for (f, part), k in zip(flat, self._class, strict=True):
            for t, name in enumerate(part.tables):
                self._rows[f, name] = (k, t, heights[k][t])
                heights[k][t] += shape[f, name][0]
        kw = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(h, w, **kw))
            for (widths, _), hs in zip(self.classes, heights, strict=True)
            for w, h in zip(widths, hs, strict=True))
        self._table_index = [sum(len(w) for w, _ in self.classes[:k])
                             for k in range(len(self.classes))]
        self._sparse = [sparse and w.shape[0] > DENSE_GRAD_MAX_ROWS for w in self.weights]
        # projections: per class (parts with one, D, w); each feature's side by side in W columns
        self._proj: dict[tuple[int, str], tuple[int, int]] = {}  # (f, name) -> (k, j)
        counts = [0] * len(self.classes)
        column, offsets = [0] * len(self.plans), []
        for (f, part), k in zip(flat, self._class, strict=True):
            if part.projection is None:
                offsets.append(-1)
                continue
            self._proj[f, part.projection] = (k, counts[k])
            counts[k] += 1
            offsets.append(column[f])
            column[f] += part.width
        self.columns = max(column)
        self.projections = nn.ParameterDict({
            str(k): nn.Parameter(torch.empty(c, d, w, **kw))
            for k, ((_, w), c) in enumerate(zip(self.classes, counts, strict=True)) if c})
        where = [[] for _ in self.classes]  # flat positions in (G, D, W) of each class's entries
        for (f, part), k, o in zip(flat, self._class, offsets, strict=True):
            if part.projection is not None:
                at = (f * d + torch.arange(d)[:, None]) * self.columns + o + torch.arange(
                    part.width)  # fmt: skip
                where[k].append(at.reshape(-1))
        for k, at in enumerate(where):
            self.register_buffer(f"_pwhere{k}", torch.cat(at).to(device) if at else None,
                                 persistent=False)

        def buffer(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        starts = [self.id_starts[f] + part.start for f, part in flat]
        self.register_buffer("_bounds", buffer(starts[1:]), persistent=False)
        self.register_buffer("_start", buffer(starts), persistent=False)
        # row offsets of each part's (first, last) table in its class's stacked tables
        self.register_buffer("_row", buffer([self._rows[f, part.tables[0]][2]
                                             for f, part in flat]), persistent=False)
        self.register_buffer("_rem", buffer([self._rows[f, part.tables[-1]][2]
                                             for f, part in flat]), persistent=False)
        self.register_buffer("_shift", self._row - self._start, persistent=False)  # rank -> row
        self.register_buffer("_c", buffer([part.collisions for _, part in flat]),
                             persistent=False)
        self.register_buffer("_klass", buffer(self._class).to(
            torch.uint8 if len(self.classes) < 256 else torch.int64), persistent=False)
        self._one_table = any(len(widths) == 1 for widths, _ in self.classes)
        self.register_buffer("_offset", buffer(offsets), persistent=False)
        self.register_buffer("_id_start", buffer(self.id_starts), persistent=False)
        relabel = {p.name: p for p in self.plans[0].maps}.get("relabel")
        ranks = [plan.partitions.relabeling() for plan in self.plans]
        self.register_buffer("relabel", None if relabel is None else torch.cat(ranks).to(
            device=device, dtype=_MAP_DTYPES[relabel.itemsize]))  # None: ids are the ranks
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def _named(self, i: int) -> dict[str, torch.Tensor]:
        """The i-th member's parameters by plan name (views)."""
        out = {}
        for p in self.plans[i].params:
            if (i, p.name) in self._rows:
                k, t, s = self._rows[i, p.name]
                out[p.name] = self.weights[self._table_index[k] + t][s : s + p.rows]
            elif (i, p.name) in self._proj:
                k, j = self._proj[i, p.name]
                out[p.name] = self.projections[str(k)][j]
        return out

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i, plan in enumerate(self.plans):
                named = self._named(i)
                for p in plan.tables:
                    named[p.name].uniform_(*p.bounds)
                for p in plan.dense:
                    init_projection(named[p.name], p.init, self.embedding_dim)

    def tables(self, i: int) -> list[torch.Tensor]:
        named = self._named(i)
        return [named[name] for name in self.order[i]]

    def table_parameters(self) -> list[nn.Parameter]:
        return list(self.weights)

    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        keys: list[tuple[str, str, Any]] = []
        for i, f in enumerate(features):
            plan = self.plans[i]
            for p in plan.params:
                if (i, p.name) in self._rows:
                    k, t, s = self._rows[i, p.name]
                    keys.append((f"features.{f}.{p.name}",
                                 f"{prefix}.weights.{self._table_index[k] + t}",
                                 slice(s, s + p.rows)))
                elif (i, p.name) in self._proj:
                    k, j = self._proj[i, p.name]
                    keys.append((f"features.{f}.{p.name}", f"{prefix}.projections.{k}", j))
                elif p.name == "relabel":
                    a = self.id_starts[i]
                    keys.append((f"features.{f}.relabel", f"{prefix}.relabel",
                                 slice(a, a + plan.num_categories)))
                else:
                    raise ValueError(f"feature {f}: the stacked parts hold no {p.name!r}")
        return keys

    def _projection_matrix(self, cols: slice | list[int], device: torch.device) -> torch.Tensor:
        """Each feature's projections side by side: (G', D, W)."""
        g = len(self.plans)
        places = [(getattr(self, f"_pwhere{k}"), p) for k, p in self.projections.items()]
        full = _Place.apply(None, g * self.embedding_dim * self.columns,
                            tuple(w for w, _ in places), *(p.reshape(-1, 1) for _, p in places))
        full = full.view(g, self.embedding_dim, self.columns)
        return full if isinstance(cols, slice) else full[torch.tensor(cols, device=device)]

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of the group's features ``members`` (all when None) -> (B, G', D)."""
        cols = slice(None) if members is None else members
        b, g = ids.shape
        d, width = self.embedding_dim, self.columns
        first = self._id_start[cols]  # each feature's first rank
        ranks = (ids + first).reshape(-1)
        if self.relabel is not None:
            ranks = (self.relabel.index_select(0, ranks).long().view(b, g) + first).reshape(-1)
        part = torch.bucketize(ranks, self._bounds, right=True)  # (N,) part of each id
        # index_select rather than t[i]: a 1-D gather at a quarter of advanced indexing's cost
        klass = self._klass.index_select(0, part)
        # each id's table row (one-table parts) and place in (B, G', W), for all ids at once:
        # two gathers per class then, rather than a chain of small ones
        n = ranks.numel()
        row = ranks + self._shift.index_select(0, part) if self._one_table else None
        place = torch.add(self._offset.index_select(0, part),
                          torch.arange(n, device=ids.device), alpha=width)  # fmt: skip
        x_places, x_values, out_places, out_values = [], [], [], []
        for k, (widths, _) in enumerate(self.classes):
            sel = (klass == k).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            t = self._table_index[k]
            if len(widths) == 1:
                values = compose_lookup(_ONE, [row.index_select(0, sel)], [self.weights[t]],
                                        [self._sparse[t]])
            else:  # QR digits of this class's ids only
                at = part.index_select(0, sel)
                local = ranks.index_select(0, sel) - self._start.index_select(0, at)
                c = self._c.index_select(0, at)
                values = compose_lookup(
                    self.operation,
                    [torch.div(local, c, rounding_mode="floor") + self._row.index_select(0, at),
                     torch.remainder(local, c) + self._rem.index_select(0, at)],
                    [self.weights[t], self.weights[t + 1]], self._sparse[t : t + 2])
            if str(k) not in self.projections:  # width D: the rows are the output
                out_places.append(sel * d)
                out_values.append(values)
            else:
                x_places.append(place.index_select(0, sel))
                x_values.append(values)
        if x_values:
            x = _Place.apply(None, b * g * width, tuple(x_places), *x_values)
            # (G', B, W) x (G', W, D): the batch's rows of each feature, one matmul per feature
            p = self._projection_matrix(cols, ids.device)
            out = torch.bmm(x.view(b, g, width).transpose(0, 1),
                            p.transpose(1, 2)).transpose(0, 1)
        else:
            out = self.weights[0].new_zeros(b, g, d)
        if out_values:
            out = _Place.apply(out, 0, tuple(out_places), *out_values)
        return out.contiguous()
