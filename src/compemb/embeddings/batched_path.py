"""Path-based features (eq. 7, two partitions) looked up together.

G features, each with a first table and m per-bucket functions. The first tables are stacked as
in :class:`~compemb.embeddings.batched.TableGroup`; the functions are stacked per feature. In
eager mode the batch's rows are sorted into one zero-padded segment per (feature, bucket) and
every layer is one batched matmul over the G x m segments. Under ``torch.export`` (shapes must
not depend on the data) every feature's m functions run on all its rows and each row keeps its
own bucket's result, which costs m times the multiply-adds, so groups are only formed for small
m (``PATH_MAX_BUCKETS``).

Letters: B batch, G features, m buckets, D width, H hidden units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._bags import Bags, pool
from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS, BucketIndex, Layout
from compemb.embeddings.path import apply_paths, init_path_layer_
from compemb.operations import full_table_bound

# Path features are grouped up to this many buckets per function: under torch.export every
# bucket's function runs on every row.
PATH_MAX_BUCKETS = 8


@dataclass(frozen=True)
class PathStack:
    """Which :class:`PathGroup` a two-partition path feature joins: features with equal keys
    share one.

    Attributes:
        transform: linear or mlp.
        dim: D.
        hidden: hidden units of each function.
        buckets: m, the second partition's buckets (one function each).
        kinds, relabelled: as :class:`~compemb.embeddings.batched.TableStack`'s.
    """

    transform: str
    dim: int
    hidden: int
    buckets: int
    kinds: tuple[str, ...]
    relabelled: bool


class PathGroup(nn.Module):
    """G two-partition path features sharing (transform, hidden, m).

    Shapes: ids (B, G) -> (B, G, D).
    """

    def __init__(
        self,
        transform: str,
        embedding_dim: int,
        hidden: int,
        num_categories: Sequence[int],
        layouts: Sequence[Layout],
        *,
        sparse: bool,
        relabels: Sequence[torch.Tensor | None] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        g, m, d = len(layouts), layouts[0][1][2], embedding_dim
        self.transform, self.num_buckets, self.hidden = transform, m, hidden
        self.num_categories = tuple(num_categories)
        self.index = BucketIndex(num_categories, layouts, relabels=relabels, device=device)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(sum(self.index.rows[0]), d, **kw))
        self.sparse_first = sparse and self.weight.shape[0] > DENSE_GRAD_MAX_ROWS
        shapes = [(d, d)] if transform == "linear" else [(hidden, d), (d, hidden)]
        # Per layer: weights (G, m, out, in) and biases (G, m, out), as BucketedLinear per feature.
        self.layers = nn.ParameterList()
        for out, inp in shapes:
            self.layers.append(nn.Parameter(torch.empty(g, m, out, inp, **kw)))
            self.layers.append(nn.Parameter(torch.empty(g, m, out, **kw)))
        self.reset_parameters()

    @property
    def num_rows(self) -> int:
        """Buckets of both partitions, as PathEmbeddingBag counts them."""
        return self.weight.shape[0] + sum(self.index.rows[1])

    def reset_parameters(self) -> None:
        """PathEmbeddingBag's rule, feature by feature."""
        with torch.no_grad():
            for f, n in enumerate(self.num_categories):
                s, r = self.index.starts[0][f], self.index.rows[0][f]
                a = full_table_bound(n)
                self.weight[s : s + r].uniform_(-a, a)
        for i in range(0, len(self.layers), 2):
            init_path_layer_(self.layers[i], self.layers[i + 1], self.transform, first=i == 0)

    def tables(self, i: int) -> list[torch.Tensor]:
        """Feature i's parameters in PathEmbeddingBag's order (views)."""
        s, r = self.index.starts[0][i], self.index.rows[0][i]
        return [self.weight[s : s + r], *(p[i] for p in self.layers)]

    def _lookup(self, ids: torch.Tensor, cols: slice | list[int]) -> torch.Tensor:
        ids = self.index.relabelled(ids, cols)
        z = F.embedding(self.index(ids, cols, 0, relabelled=True), self.weight,
                        sparse=self.sparse_first)
        bucket = self.index(ids, cols, 1, offset=False, relabelled=True)
        params = [p[cols] for p in self.layers]
        return apply_paths(z, bucket, list(zip(params[0::2], params[1::2], strict=True)))

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G) (or of the group's features ``members`` only) -> (B, G', D)."""
        return self._lookup(ids, slice(None) if members is None else members)

    def forward_bag(self, f: int, bags: Bags, mode: str) -> torch.Tensor:
        """One multi-hot feature: compose per id, then pool -> (B, D)."""
        return pool(self._lookup(bags.ids.unsqueeze(1), [f]).squeeze(1), bags, mode, False)
