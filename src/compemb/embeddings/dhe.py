"""DHE (Kang et al., "Learning to Embed Categorical Features without Embedding Tables for
Recommendation", KDD 2021): no table; an id's vector is an MLP applied to a dense encoding of k
seeded hashes of the id.

Encoding, as the paper's dense hash encoding: k universal hashes h_1..h_k of the id into
[0, m), m = 10^6 (``compemb.embeddings._universal``, exact int64), each made real by one of
the paper's two transforms, computed in float32 whatever the module's dtype (a hash value up
to 10^6 is inf in float16, and bfloat16 keeps 8 of its 20 bits) and only then cast to it:

- ``uniform``: 2 h / (m - 1) - 1, uniform on [-1, 1];
- ``gaussian``: Box-Muller on the pairs (h_j, h_{j + k/2}) with u_1 = (h_j + 1) / m in (0, 1]
  and u_2 = h_{j + k/2} / m: sqrt(-2 ln u_1) cos(2 pi u_2) and sqrt(-2 ln u_1) sin(2 pi u_2),
  approximately N(0, 1) (k even).

The k hash coefficients are the buffer ``coefficients`` (2, k) int64, saved in the state dict:
a checkpoint brings its own hashes, whatever ``seed`` the loading module was built with (one
written before they were saved lacks them and keeps the seed's, which made them).

Decoding: ``depth`` hidden layers of ``width`` units with the paper's Mish activation, then a
linear layer to D. The paper also puts batch normalization after the hidden layers; it is left
out here so an id's vector does not depend on the rest of its batch (the module then equals the
collections and the TorchRec route id by id).

Cost per id (multiply-adds): k width + (depth - 1) width^2 + width D,
:attr:`DHEEmbeddingBag.flops_per_id`.

Letters: N ids, k hashes, D output width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compemb import _kernels
from compemb.embeddings._universal import check_hashable, hash_coefficients, universal_hash
from compemb.embeddings.base import BagModule

__all__ = ["DHE_ENCODINGS", "HASH_BUCKETS", "DHEEmbeddingBag", "check_dhe", "dhe_encoding"]

DHE_ENCODINGS = ("uniform", "gaussian")
HASH_BUCKETS = 10**6  # the paper's m; exact in float32 (< 2^24)


def dhe_encoding(ids: torch.Tensor, coefficients: torch.Tensor, encoding: str,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense hash encoding: ids (N,), coefficients (2, k) -> (N, k) of ``dtype``,
    computed in float32 (float64 when asked for) and then cast.

    >>> dhe_encoding(torch.tensor([0]), torch.tensor([[1], [0]]), "uniform").tolist()
    [[-1.0]]
    """
    scale = 2.0 / (HASH_BUCKETS - 1)
    if encoding == "uniform" and dtype in (torch.float32, torch.float16, torch.bfloat16):
        fast = _kernels.hash_affine(ids, coefficients, HASH_BUCKETS, scale, -1.0)  # one pass
        if fast is not None:
            return fast.to(dtype)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    h = universal_hash(ids, coefficients, HASH_BUCKETS).to(wide)
    if encoding == "uniform":
        x = h * scale - 1.0
    elif encoding == "gaussian":
        first, second = h.chunk(2, dim=1)
        radius = torch.sqrt(-2.0 * torch.log((first + 1.0) / HASH_BUCKETS))
        angle = (2.0 * math.pi / HASH_BUCKETS) * second
        x = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    else:
        raise ValueError(f"encoding must be one of {DHE_ENCODINGS}, got {encoding!r}")
    return x.to(dtype)


def check_dhe(hashes: int, width: int | None, depth: int, encoding: str, where: str) -> None:
    """k, width and depth ints >= 1, a known encoding, k even for ``gaussian``."""
    for name, v in (("hashes", hashes), ("width", width), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {v!r}")
    if encoding not in DHE_ENCODINGS:
        raise ValueError(f"{where}: encoding must be one of {DHE_ENCODINGS}, got {encoding!r}")
    if encoding == "gaussian" and hashes % 2:
        raise ValueError(f"{where}: the gaussian encoding pairs the hashes (Box-Muller); "
                         f"hashes must be even, got {hashes}")


class DHEEmbeddingBag(BagModule):
    """``nn.EmbeddingBag``'s interface over a deep hash embedding.

    Args:
        num_categories: n (ids are checked against it; the network does not depend on it).
        embedding_dim: D.
        hashes: k, the encoding's width (even for ``gaussian``; the paper's 1024 by default).
        width: units of each hidden layer.
        depth: hidden layers (>= 1).
        encoding: ``uniform`` or ``gaussian`` (:data:`DHE_ENCODINGS`).
        seed: seeds the k hashes (the buffer ``coefficients``, which checkpoints keep).
        mode, include_last_offset, validate, device, dtype: as ``nn.EmbeddingBag``.
        sparse: accepted for the common interface; there is no table to be sparse.

    The linear layers start as ``nn.Linear``'s default (Kaiming uniform weights).

    Forward: ``(input, offsets=None, per_sample_weights=None) -> (B, D)``.

    >>> bag = DHEEmbeddingBag(10**6, 16, hashes=32, width=64, depth=2)
    >>> bag(torch.tensor([[1, 2], [3, 999_999]])).shape, bag.num_parameters
    (torch.Size([2, 16]), 7312)
    """

    def __init__(self, num_categories: int, embedding_dim: int, hashes: int = 1024,
                 width: int = 64, depth: int = 2, encoding: str = "uniform", seed: int = 0,
                 mode: str = "sum", *, sparse: bool = False, include_last_offset: bool = False,
                 validate: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(num_categories, embedding_dim, mode, include_last_offset, validate)
        check_hashable(num_categories, type(self).__name__)
        check_dhe(hashes, width, depth, encoding, type(self).__name__)
        self.hashes, self.width, self.depth, self.encoding = hashes, width, depth, encoding
        self.register_buffer("coefficients", hash_coefficients(hashes, seed).to(device))
        self.register_load_state_dict_pre_hook(_keep_seeded_coefficients)
        layers: list[nn.Module] = []
        for inputs in [hashes] + [width] * (depth - 1):
            layers += [nn.Linear(inputs, width, device=device, dtype=dtype), nn.Mish()]
        layers.append(nn.Linear(width, embedding_dim, device=device, dtype=dtype))
        self.mlp = nn.Sequential(*layers)

    @property
    def num_rows(self) -> int:
        """Table rows: none."""
        return 0

    @property
    def flops_per_id(self) -> int:
        """Multiply-adds of one id's vector: k w + (depth - 1) w^2 + w D."""
        w = self.width
        return self.hashes * w + (self.depth - 1) * w * w + w * self.embedding_dim

    def reset_parameters(self) -> None:
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, k)."""
        return dhe_encoding(ids, self.coefficients, self.encoding, self.mlp[0].weight.dtype)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(ids))


def _keep_seeded_coefficients(module: DHEEmbeddingBag, state_dict: dict, prefix: str,
                              *args: object) -> None:
    """A checkpoint written before the coefficients were saved: they came from the seed, as
    the module's own did."""
    state_dict.setdefault(prefix + "coefficients", module.coefficients)
