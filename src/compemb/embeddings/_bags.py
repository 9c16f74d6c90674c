"""``nn.EmbeddingBag`` input conventions: checking bags and pooling per-category vectors.

Letters: B bags, L ids per bag (2-D input), N ids in all, D embedding width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

MODES = ("sum", "mean", "max")
_INDEX_DTYPES = (torch.int64, torch.int32)


class Bags(NamedTuple):
    """A batch of bags, flattened.

    ids: (N,) int64 category ids.
    offsets: (B,) or (B + 1,) int64 bag starts for 1-D input; None for 2-D input.
    weights: (N,) per-sample weights or None.
    batch: B.
    length: L for 2-D input, None for 1-D input.
    single: 1-D input whose offsets are 0, 1, ..., B - 1 (one id per bag: pooling is the
        identity, the common one-hot case).
    """

    ids: torch.Tensor
    offsets: torch.Tensor | None
    weights: torch.Tensor | None
    batch: int
    length: int | None
    single: bool = False


def check_mode(mode: str, where: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    return mode


def prepare_bags(
    where: str,
    num_categories: int,
    input: torch.Tensor,
    offsets: torch.Tensor | None,
    per_sample_weights: torch.Tensor | None,
    mode: str,
    include_last_offset: bool,
    validate: bool,
) -> Bags:
    """Check ``nn.EmbeddingBag``-style input and flatten it.

    Shape and dtype errors are always raised; the checks that read the values (index range,
    offsets) run only when ``validate`` is true.

    Args:
        where: the module's name for error messages.
        input: (B, L) ids, or (N,) ids with ``offsets``.
        offsets: (B,) bag starts (or (B + 1,) with ``include_last_offset``) for 1-D input.
        per_sample_weights: a float tensor of ``input``'s shape; only with mode ``"sum"``.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{where}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dtype not in _INDEX_DTYPES:
        raise TypeError(
            f"{where}: input must be an int64 or int32 tensor of category ids, got dtype "
            f"{input.dtype}"
        )
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(
                f"{where}: per_sample_weights are only supported with mode='sum', the module's "
                f"mode is {mode!r}"
            )
        if per_sample_weights.shape != input.shape:
            raise ValueError(
                f"{where}: per_sample_weights has shape {tuple(per_sample_weights.shape)}, "
                f"expected input's shape {tuple(input.shape)}"
            )
        if not per_sample_weights.is_floating_point():
            raise TypeError(
                f"{where}: per_sample_weights must be floating point, got "
                f"{per_sample_weights.dtype}"
            )
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(f"{where}: offsets must be None for 2-D input (B, L); got offsets")
        batch, length = input.shape
        single = False
        ids = input.reshape(-1)
        weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError(f"{where}: 1-D input needs offsets (bag starts); got None")
        if offsets.dim() != 1 or offsets.dtype not in _INDEX_DTYPES:
            raise ValueError(
                f"{where}: offsets must be a 1-D int64 tensor, got shape "
                f"{tuple(offsets.shape)} dtype {offsets.dtype}"
            )
        ids, weights, length = input, per_sample_weights, None
        batch = offsets.numel() - 1 if include_last_offset else offsets.numel()
        if batch < 0:
            raise ValueError(f"{where}: include_last_offset=True needs at least one offset")
        offsets = offsets.long()
        # One comparison over B offsets; skipped while exporting (the batch is symbolic).
        single = (not torch.compiler.is_compiling() and input.shape[0] == batch
                  and torch.equal(offsets, torch.arange(offsets.shape[0],
                                                        device=offsets.device)))  # fmt: skip
        if validate and not single:  # 0, 1, ..., B - 1 are valid offsets
            _check_offsets(where, offsets, input.numel(), include_last_offset)
    else:
        raise ValueError(
            f"{where}: input must be 1-D (with offsets) or 2-D (B, L), got shape "
            f"{tuple(input.shape)}"
        )
    ids = ids.long()
    if validate and ids.numel():
        _check_range(where, ids, num_categories)
    return Bags(ids, offsets, weights, batch, length, single)


def _check_range(where: str, ids: torch.Tensor, num_categories: int) -> None:
    lo, hi = torch.aminmax(ids)
    if lo.item() < 0 or hi.item() >= num_categories:
        bad = (ids < 0) | (ids >= num_categories)
        pos = int(bad.nonzero()[0, 0])
        raise IndexError(
            f"{where}: category id {int(ids[pos])} at flat position {pos} is out of range; "
            f"valid ids are 0..{num_categories - 1}"
        )


def _check_offsets(where: str, offsets: torch.Tensor, n: int, include_last: bool) -> None:
    if offsets.numel() == 0:
        return
    first = int(offsets[0])
    if first != 0:
        raise ValueError(f"{where}: offsets[0] must be 0, got {first}")
    if offsets.numel() > 1:
        step = offsets[1:] - offsets[:-1]
        if bool((step < 0).any()):
            pos = int((step < 0).nonzero()[0, 0]) + 1
            raise ValueError(
                f"{where}: offsets must be non-decreasing; offsets[{pos}]={int(offsets[pos])} "
                f"< offsets[{pos - 1}]={int(offsets[pos - 1])}"
            )
    last = int(offsets[-1])
    if last > n or (include_last and last != n):
        expected = f"== {n}" if include_last else f"<= {n}"
        raise ValueError(
            f"{where}: offsets[-1]={last} points past the input: expected {expected} "
            f"(the number of ids)"
        )


def pool(values: torch.Tensor, bags: Bags, mode: str, include_last_offset: bool) -> torch.Tensor:
    """Pool per-id vectors into per-bag vectors, applying per-sample weights once.

    Args:
        values: (N, D) one composed vector per id, in ``bags.ids`` order.

    Returns:
        (B, D). An empty bag gives zeros, as ``nn.EmbeddingBag`` does.
    """
    if bags.length is not None:
        if bags.weights is not None:
            values = values * bags.weights.unsqueeze(-1).to(values.dtype)
        if bags.length == 1:
            return values
        if bags.length == 0:
            return values.new_zeros(bags.batch, values.shape[-1])
        grouped = values.view(bags.batch, bags.length, -1)
        if mode == "sum":
            return grouped.sum(1)
        if mode == "mean":
            return grouped.mean(1)
        return grouped.amax(1)
    if bags.single:  # each bag's vector is its id's own
        if bags.weights is not None:
            values = values * bags.weights.unsqueeze(-1).to(values.dtype)
        return values
    # embedding_bag over the composed vectors themselves (row i = id i) is one fused segment
    # reduction with nn.EmbeddingBag's exact semantics for offsets, empty bags and weights.
    positions = torch.arange(values.shape[0], device=values.device)
    return F.embedding_bag(
        positions,
        values,
        bags.offsets,
        mode=mode,
        per_sample_weights=bags.weights,
        include_last_offset=include_last_offset,
    )

