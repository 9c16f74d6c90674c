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

    def _apply_every(self, z: torch.Tensor, bucket: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
        """Each row through its own bucket's map by running all m: z (B, G, in) -> (B, G, out).

        Shapes stay static (for torch.export); costs m times the necessary multiply-adds."""
        every = torch.einsum("bgi,gmoi->bgmo", z, weight)
        out = weight.shape[2]
        picked = every.gather(2, bucket[..., None, None].expand(*bucket.shape, 1, out))
        flat = torch.arange(bias.shape[0], device=z.device) * bias.shape[1] + bucket
        return picked.squeeze(2) + F.embedding(flat, bias.reshape(-1, out))

    def _lookup(self, ids: torch.Tensor, cols: slice | list[int]) -> torch.Tensor:
        z = F.embedding(self.index(ids, cols, 0), self.weight, sparse=self.sparse_first)
        bucket = self.index(ids, cols, 1, offset=False)
        params = [p[cols] for p in self.layers]
        if torch.compiler.is_compiling():
            z = self._apply_every(z, bucket, params[0], params[1])
            if self.transform == "mlp":
                z = self._apply_every(torch.relu(z), bucket, params[2], params[3])
            return z
        return self._apply_segments(z, bucket, params)

    def _apply_segments(self, z: torch.Tensor, bucket: torch.Tensor,
                        params: list[torch.Tensor]) -> torch.Tensor:
        """Rows sorted into one padded segment per (feature, bucket), each segment through its
        map by one batched matmul: z (B, G, D) -> (B, G, D), no wasted multiply-adds beyond the
        padding to the fullest segment."""
        b, g, d = z.shape
        m = self.num_buckets
        key = (torch.arange(g, device=z.device) * m + bucket).reshape(-1)
        order = torch.argsort(key, stable=True)
        skey = key[order]
        counts = torch.bincount(skey, minlength=g * m)
        width = max(int(counts.max()), 1) if skey.numel() else 1
        # Each row's slot in the padded (G*m, width) layout, in the rows' own order.
        slot = torch.empty_like(order)
        ranks = torch.arange(skey.numel(), device=z.device) - (counts.cumsum(0) - counts)[skey]
        slot[order] = skey * width + ranks
        x = z.new_zeros(g * m * width, d).index_copy(0, slot, z.reshape(-1, d))
        x = x.view(g * m, width, d)
        for i in range(0, len(params), 2):
            weight, bias = params[i], params[i + 1]
            out, inp = weight.shape[2], weight.shape[3]
            x = torch.baddbmm(bias.reshape(g * m, 1, out), x,
                              weight.reshape(g * m, out, inp).transpose(1, 2))
            if i + 2 < len(params):
                x = x.relu_()
        return x.reshape(-1, x.shape[-1]).index_select(0, slot).view(b, g, -1)

    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G) (or of the group's features ``members`` only) -> (B, G', D)."""
        return self._lookup(ids, slice(None) if members is None else members)

    def forward_bag(self, f: int, bags: Bags, mode: str) -> torch.Tensor:
        """One multi-hot feature: compose per id, then pool -> (B, D)."""
        return pool(self._lookup(bags.ids.unsqueeze(1), [f]).squeeze(1), bags, mode, False)
