"""ROBE (Desai et al., "Random Offset Block Embedding", MLSys 2022): an array of M parameters; an
id's D-wide vector is L = D / Z blocks of Z contiguous elements read at hashed offsets.

Block j of id x starts at offset ``o_j(x) = h_j(x) mod M`` (``h_j`` the seeded universal hash of
``compemb.embeddings._universal``, drawn per feature, so the offset depends on the feature, the
id and the block) and reads elements ``o_j, o_j + 1, ..., o_j + Z - 1`` of the array, wrapping
past its end to its start. That is the paper's ROBE-Z; the array is shared by every feature
of a collection (``shared``) or one per feature. With block-aligned offsets (a deviation
kept as a setting) o_j is a multiple of Z: ``Z (h_j(x) mod M / Z)``.

The array is kept as a table of M / Z rows of width Z, so a block at offset o lies in rows
``o // Z`` and ``o // Z + 1`` (mod M / Z): :func:`read_blocks` looks both up and slices the
block out (one row when aligned). The per-feature unaligned form of before keeps the array as
M rows of width 1 (its checkpoints' shape), a block being Z of them. Gradients of every id
that reads an element accumulate into it, and sparse gradients work as for any table.

Letters: N ids, D output width, Z block size, M array size, L = D / Z blocks per id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compemb.embeddings._universal import check_hashable, hash_coefficients, universal_hash
from compemb.embeddings.base import BagModule, full_table_bound

__all__ = ["RobeEmbeddingBag", "block_offsets", "blocks_from_rows", "read_blocks",
           "robe_coefficients"]


def robe_coefficients(blocks: int, seed: int, member: int | None) -> torch.Tensor:
    """(2, L) int32 (the values are below 2^31 - 1): the hashes of a feature's L blocks. A
    feature with an array of its own draws them from ``seed`` (as compemb always has); the
    ``member``-th feature of a shared array from ``(seed, member)``, so every feature hashes its
    ids to other offsets."""
    drawn = hash_coefficients(blocks, seed if member is None else (seed, member))
    return drawn.to(torch.int32)


def block_offsets(ids: torch.Tensor, coefficients: torch.Tensor, size: int, block: int,
                  aligned: bool) -> torch.Tensor:
    """Where each id's blocks start in the array: ids (N,), coefficients (2, L) -> (N, L) in
    [0, M) (multiples of Z when ``aligned``).

    >>> block_offsets(torch.tensor([1]), torch.tensor([[1, 2], [0, 7]]), 8, 4, False).tolist()
    [[1, 1]]
    """
    if aligned:
        return universal_hash(ids, coefficients, size // block) * block
    return universal_hash(ids, coefficients, size)


def read_blocks(array: torch.Tensor, offsets: torch.Tensor, aligned: bool,
                sparse: bool = False) -> torch.Tensor:
    """Blocks of Z contiguous elements of the array, read circularly: ``array`` (M / Z, Z),
    offsets (N, L) in [0, M) -> (N, L Z), each id's blocks in order.

    >>> array = torch.arange(8.0).reshape(4, 2)
    >>> read_blocks(array, torch.tensor([[3, 7]]), aligned=False).tolist()
    [[3.0, 4.0, 7.0, 0.0]]
    """
    rows, z = array.shape
    first = torch.div(offsets, z, rounding_mode="floor")
    if aligned:
        return F.embedding(first, array, sparse=sparse).flatten(1)  # N may be 0
    pairs = torch.stack([first, (first + 1) % rows], dim=-1)  # (N, L, 2)
    two = F.embedding(pairs, array, sparse=sparse)
    return blocks_from_rows(two, offsets % z)


def blocks_from_rows(two: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Each block sliced out of the two rows it lies in: rows (N, L, 2, Z) (or (N L 2, Z)),
    within (N, L) the block's start in its first row -> (N, L Z)."""
    n, blocks = within.shape
    z = two.shape[-1]
    pairs = two.reshape(n, blocks, 2 * z)
    cols = within[:, :, None] + torch.arange(z, device=within.device)
    return pairs.gather(2, cols).reshape(n, blocks * z)


class RobeEmbeddingBag(BagModule):
    """``nn.EmbeddingBag``'s interface over a ROBE array.

    Args:
        num_categories: n.
        embedding_dim: D, a multiple of ``block``.
        size: M, parameters in the array (a multiple of ``block`` unless per-feature and
            unaligned).
        block: Z, elements per block.
        aligned: offsets are multiples of Z.
        seed: seeds the L hashes.
        member: this feature's place among those sharing an array (None: an array of its
            own, the per-feature form); picks its hashes.
        shared: the module holding the shared array as ``weight`` (the collection's), read
            instead of an array of this module's own; None: one of its own.
        mode, sparse, include_last_offset, validate, device, dtype: as ``nn.EmbeddingBag``.

    State: ``weight`` (its own array: (M / Z, Z), or (M, 1) per-feature unaligned) and
    ``coefficients`` (2, L) int32, the hashes, saved so that a checkpoint reproduces every
    vector whatever seed it is loaded under (one written before they were saved loads
    without them: its seed's draw is kept).

    Its own array starts U(-sqrt(1/n), sqrt(1/n)), the full table's init: every element of an
    id's vector is one of its elements, so vectors start distributed as the full table's rows.

    Forward: ``(input, offsets=None, per_sample_weights=None) -> (B, D)``.

    >>> bag = RobeEmbeddingBag(10_000, 16, size=512, block=4, member=0)
    >>> bag(torch.tensor([[1, 2], [3, 9999]])).shape, bag.num_parameters, tuple(bag.weight.shape)
    (torch.Size([2, 16]), 512, (128, 4))
    """

    def __init__(self, num_categories: int, embedding_dim: int, size: int, block: int = 4,
                 aligned: bool = False, seed: int = 0, mode: str = "sum", *,
                 member: int | None = None, shared: nn.Module | None = None,
                 sparse: bool = False, include_last_offset: bool = False, validate: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        per_element = member is None and not aligned
        check_robe(embedding_dim, size, block, not per_element, type(self).__name__)
        check_hashable(num_categories, type(self).__name__)
        self.size, self.block, self.aligned, self.sparse = size, block, aligned, sparse
        # Not registered: the collection owns (saves, moves) the shared array.
        self._shared = () if shared is None else (shared,)
        if shared is None:
            rows, width = robe_table_shape(size, block, per_element)
            self.weight = nn.Parameter(torch.empty(rows, width, device=device, dtype=dtype))
        else:
            self.weight = None
        coefficients = robe_coefficients(embedding_dim // block, seed, member)
        if device is not None and torch.device(device).type != "meta":
            coefficients = coefficients.to(device)  # on the meta device: kept on the CPU
        self.register_buffer("coefficients", coefficients)
        self.register_load_state_dict_pre_hook(_keep_seeded_coefficients)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            a = full_table_bound(self.num_categories)
            with torch.no_grad():
                self.weight.uniform_(-a, a)

    @property
    def array(self) -> torch.Tensor:
        """The array this feature reads: its own or the shared one."""
        return self.weight if not self._shared else self._shared[0].weight

    @property
    def num_rows(self) -> int:
        return self.array.shape[0]

    def offsets(self, ids: torch.Tensor) -> torch.Tensor:
        """Where each id's blocks start: (N,) -> (N, L)."""
        return block_offsets(ids, self.coefficients, self.size, self.block, self.aligned)

    def lookup(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The rows each id reads from the (M / Z, Z) table, as a TorchRec route's ``lookup``:
        [(N, L) rows] aligned; unaligned [(N, 2 L) rows (each block's two), (N, L) where each
        block starts in its first row]."""
        offsets = self.offsets(ids)
        first = torch.div(offsets, self.block, rounding_mode="floor")
        if self.aligned:
            return [first]
        rows = self.size // self.block
        pairs = torch.stack([first, (first + 1) % rows], dim=-1).flatten(1)
        return [pairs, offsets % self.block]

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        array, offsets = self.array, self.offsets(ids)
        if array.shape[1] == self.block:
            return read_blocks(array, offsets, self.aligned, self.sparse)
        # per-feature unaligned: M rows of width 1, each block Z of them
        within = torch.arange(self.block, device=ids.device)
        rows = (offsets[:, :, None] + within) % self.size
        return F.embedding(rows, array, sparse=self.sparse).reshape(-1, self.embedding_dim)


def _keep_seeded_coefficients(module: RobeEmbeddingBag, state_dict: dict, prefix: str,
                              *args: object) -> None:
    """A checkpoint written before the hashes were saved was made with its seed's draw."""
    state_dict.setdefault(prefix + "coefficients", module.coefficients)


def robe_table_shape(size: int, block: int, per_element: bool = False) -> tuple[int, int]:
    """The array as a table: (M / Z, Z); (M, 1) for the per-feature unaligned form."""
    return (size, 1) if per_element else (size // block, block)


def check_robe(embedding_dim: int, size: int, block: int, whole_blocks: bool, where: str
               ) -> None:
    """D a multiple of Z, and M a multiple of Z when the array is a table of blocks."""
    if embedding_dim % block:
        raise ValueError(f"{where}: embedding_dim={embedding_dim} must be a multiple of the "
                         f"block size {block}")
    if whole_blocks and size % block:
        raise ValueError(f"{where}: the array size {size} must be a multiple of the block size "
                         f"{block} (a table of size / block rows of width block)")
    if size < block:
        raise ValueError(f"{where}: the array size {size} must hold one block of {block}")
