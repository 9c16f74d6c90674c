"""Seeded universal hashing of ids in exact int64 arithmetic, shared by ROBE and DHE.

Hash j of id x is Carter and Wegman's ``h_j(x) = ((a_j x + b_j) mod P) mod m`` with the
Mersenne prime P = 2^31 - 1, a_j drawn from [1, P) and b_j from [0, P) by a NumPy generator
seeded with ``seed``. With 0 <= x < P and a_j < 2^31, a_j x + b_j < 2^62: int64 holds it
exactly, so every device computes the same bucket. On the CPU the compiled kernel
(``csrc/universal_hash.c``, where built) computes the same values in one pass.
"""

from __future__ import annotations

import numpy as np
import torch

from compemb import _kernels

__all__ = ["PRIME", "hash_coefficients", "universal_hash"]

PRIME = 2**31 - 1


def hash_coefficients(num_hashes: int, seed: int | tuple[int, ...]) -> torch.Tensor:
    """(2, num_hashes) int64: the a_j (row 0) and b_j (row 1) of ``num_hashes`` hashes; ``seed``
    an int or a tuple of them (NumPy's ``default_rng`` takes either).

    >>> hash_coefficients(3, 0).equal(hash_coefficients(3, 0))
    True
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, size=num_hashes, dtype=np.int64)
    b = rng.integers(0, PRIME, size=num_hashes, dtype=np.int64)
    return torch.from_numpy(np.stack([a, b]))


def universal_hash(ids: torch.Tensor, coefficients: torch.Tensor, buckets: int) -> torch.Tensor:
    """Every hash of every id: ids (N,) in [0, P), coefficients (2, H) -> (N, H) in
    [0, buckets); or each column its own hashes: ids (B, G), coefficients (G, 2, H) ->
    (B, G, H) (the features of a stacked group in one call).

    >>> universal_hash(torch.tensor([0, 5]), torch.tensor([[3], [7]]), 4).tolist()
    [[3], [2]]
    >>> universal_hash(torch.tensor([[0, 5]]), torch.tensor([[[3], [7]], [[1], [0]]]), 4).tolist()
    [[[3], [1]]]
    """
    fast = _kernels.universal_hash(ids, coefficients, buckets)
    if fast is not None:
        return fast
    a, b = coefficients.to(ids.device).long().unbind(-2)  # (H,) or (G, H) each
    return ((ids.long().unsqueeze(-1) * a + b) % PRIME) % buckets


def check_hashable(num_categories: int, where: str) -> None:
    """Ids must stay below P for the products to be exact."""
    if num_categories > PRIME:
        raise ValueError(f"{where}: num_categories={num_categories} exceeds the hash's prime "
                         f"{PRIME}; ids must be below it")
