"""Path-based features (eq. 7, two partitions) looked up together.

G features, each with a first table and m per-bucket functions. The first tables are stacked as
in :class:`~compemb.embeddings.batched.TableGroup`; the functions are stacked per feature, and
every feature's m functions run on its rows as one batched matmul (``einsum`` over features),
each row keeping its own bucket's result. That spends m times the necessary multiply-adds to
turn G x m small matmuls into two large ones, so groups are only formed for small m
(``PATH_MAX_BUCKETS``).

Letters: B batch, G features, m buckets, D width, H hidden units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._bags import Bags, pool
from compemb.embeddings.batched import DENSE_GRAD_MAX_ROWS, BucketIndex, Layout


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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        g, m, d = len(layouts), layouts[0][1][2], embedding_dim
        self.transform, self.num_buckets, self.hidden = transform, m, hidden
        self.num_categories = tuple(num_categories)
        self.index = BucketIndex(num_categories, layouts, device=device)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(sum(self.index.rows[0]), d, **kw))
        self._sparse = sparse and self.weight.shape[0] > DENSE_GRAD_MAX_ROWS
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
                a = math.sqrt(1.0 / n)
                self.weight[s : s + r].uniform_(-a, a)
            for i in range(0, len(self.layers), 2):
                w, b = self.layers[i], self.layers[i + 1]
                b.zero_()
                if self.transform == "linear":
                    w.copy_(torch.eye(w.shape[-1], dtype=w.dtype).expand_as(w))
                else:
                    bound = math.sqrt((6.0 if i == 0 else 3.0) / w.shape[-1])
                    w.uniform_(-bound, bound)

    def tables(self, i: int) -> list[torch.Tensor]:
        """Feature i's parameters in PathEmbeddingBag's order (views)."""
        s, r = self.index.starts[0][i], self.index.rows[0][i]
        return [self.weight[s : s + r], *(p[i] for p in self.layers)]

    def _apply(self, z: torch.Tensor, bucket: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
        """Each row through its own bucket's map: z (B, G, in) -> (B, G, out)."""
        every = torch.einsum("bgi,gmoi->bgmo", z, weight)
        out = weight.shape[2]
        picked = every.gather(2, bucket[..., None, None].expand(*bucket.shape, 1, out))
        flat = torch.arange(bias.shape[0], device=z.device) * bias.shape[1] + bucket
        return picked.squeeze(2) + F.embedding(flat, bias.reshape(-1, out))

    def _lookup(self, ids: torch.Tensor, cols: slice | list[int]) -> torch.Tensor:
        z = F.embedding(self.index(ids, cols, 0), self.weight, sparse=self._sparse)
        bucket = self.index(ids, cols, 1, offset=False)
        params = [p[cols] for p in self.layers]
        z = self._apply(z, bucket, params[0], params[1])
        if self.transform == "mlp":
            z = self._apply(torch.relu(z), bucket, params[2], params[3])
        return z

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G) (or of the group's features ``members`` only) -> (B, G', D)."""
        return self._lookup(ids, slice(None) if members is None else members)

    def forward_bag(self, f: int, bags: Bags, mode: str) -> torch.Tensor:
        """One multi-hot feature: compose per id, then pool -> (B, D)."""
        return pool(self._lookup(bags.ids.unsqueeze(1), [f]).squeeze(1), bags, mode, False)
