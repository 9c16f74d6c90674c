"""ROBE (Desai et al., "Random Offset Block Embedding", MLSys 2022): one shared array of M
parameters; an id's D-wide vector is D / Z blocks of Z contiguous elements read at hashed
offsets.

Block j of id x starts at offset ``o_j(x) = h_j(x) mod M'`` (``h_j`` the seeded universal hash of
``compemb.embeddings._universal``) and reads elements ``o_j, o_j + 1, ..., o_j + Z - 1`` of the
array, wrapping past its end to its start. With block-aligned offsets the offsets are multiples
of Z (M' = M / Z choices, times Z), so the array is a table of M / Z rows of width Z and a block
is one row; otherwise M' = M and the array is kept as a table of M rows of width 1, a block
being Z of them. Either way the array is one ``weight`` and each id reads D / Z (aligned) or D
(unaligned) of its rows, so gradients of every id that reads an element accumulate into it and
sparse gradients work as for any table.

Letters: N ids, D output width, Z block size, M array size, L = D / Z blocks per id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._universal import check_hashable, hash_coefficients, universal_hash
from compemb.embeddings.base import BagModule, full_table_bound

__all__ = ["RobeEmbeddingBag", "robe_rows"]


def robe_rows(ids: torch.Tensor, coefficients: torch.Tensor, size: int, block: int,
              aligned: bool) -> torch.Tensor:
    """The rows of the ROBE table each id reads, in output order: ids (N,) -> (N, D / W), W the
    table's width (Z aligned, 1 unaligned); ``coefficients`` (2, L) as ``hash_coefficients``.

    >>> robe_rows(torch.tensor([1]), torch.tensor([[1, 2], [0, 0]]), 8, 4, False).tolist()
    [[1, 2, 3, 4, 2, 3, 4, 5]]
    """
    if aligned:
        return universal_hash(ids, coefficients, size // block)
    start = universal_hash(ids, coefficients, size)  # (N, L)
    within = torch.arange(block, device=ids.device)
    return ((start[:, :, None] + within) % size).reshape(ids.shape[0], -1)


class RobeEmbeddingBag(BagModule):
    """``nn.EmbeddingBag``'s interface over a ROBE array.

    Args:
        num_categories: n.
        embedding_dim: D, a multiple of ``block``.
        size: M, parameters in the shared array (a multiple of ``block`` when aligned).
        block: Z, elements per block.
        aligned: offsets are multiples of Z (the array is a table of M / Z rows of width Z).
        seed: seeds the L hashes.
        mode, sparse, include_last_offset, validate, device, dtype: as ``nn.EmbeddingBag``.

    The array starts U(-sqrt(1/n), sqrt(1/n)), the full table's init: every element of an id's
    vector is one of its elements, so vectors start distributed as the full table's rows.

    Forward: ``(input, offsets=None, per_sample_weights=None) -> (B, D)``.

    >>> bag = RobeEmbeddingBag(10_000, 16, size=512, block=4)
    >>> bag(torch.tensor([[1, 2], [3, 9999]])).shape, bag.num_parameters, tuple(bag.weight.shape)
    (torch.Size([2, 16]), 512, (128, 4))
    """

    def __init__(self, num_categories: int, embedding_dim: int, size: int, block: int = 4,
                 aligned: bool = True, seed: int = 0, mode: str = "sum", *,
                 sparse: bool = False, include_last_offset: bool = False, validate: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        check_robe(embedding_dim, size, block, aligned, type(self).__name__)
        check_hashable(num_categories, type(self).__name__)
        self.size, self.block, self.aligned, self.sparse = size, block, aligned, sparse
        rows, width = robe_table_shape(size, block, aligned)
        self.weight = nn.Parameter(torch.empty(rows, width, device=device, dtype=dtype))
        self.register_buffer("coefficients", hash_coefficients(embedding_dim // block, seed),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        a = full_table_bound(self.num_categories)
        with torch.no_grad():
            self.weight.uniform_(-a, a)

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The table rows each id reads: (N,) -> (N, D / W)."""
        return robe_rows(ids, self.coefficients, self.size, self.block, self.aligned)

    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The rows of the one table, as a TorchRec route's ``lookup``: [(N, D / W)]."""
        return [self.rows(ids)]

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        blocks = F.embedding(self.rows(ids), self.weight, sparse=self.sparse)
        return blocks.reshape(ids.shape[0], self.embedding_dim)


def robe_table_shape(size: int, block: int, aligned: bool) -> tuple[int, int]:
    """The array as a table: (M / Z, Z) aligned, (M, 1) otherwise."""
    return (size // block, block) if aligned else (size, 1)


def check_robe(embedding_dim: int, size: int, block: int, aligned: bool, where: str) -> None:
    """D a multiple of Z, and M a multiple of Z when aligned."""
    if embedding_dim % block:
        raise ValueError(f"{where}: embedding_dim={embedding_dim} must be a multiple of the "
                         f"block size {block}")
    if aligned and size % block:
        raise ValueError(f"{where}: with aligned offsets the array size {size} must be a "
                         f"multiple of the block size {block}")
    if size < block:
        raise ValueError(f"{where}: the array size {size} must hold one block of {block}")
