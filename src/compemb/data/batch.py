"""One mini-batch, the unit every dataset yields and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """A mini-batch of B rows with F single-valued features and K multi-hot bags.

    Attributes:
        dense: (B, num_dense) float32; (B, 0) when the dataset has no dense features.
        categorical: (B, F) int64, one id per single-valued feature.
        bags: K pairs (values (N,) int64, offsets (B,) int64), one per multi-hot feature, in the
            ``nn.EmbeddingBag`` convention: row b's ids are ``values[offsets[b]:offsets[b+1]]``
            (``offsets[0] == 0``, non-decreasing).
        labels: (B,) float32 in {0., 1.}.

    Example::

        >>> b = Batch(torch.zeros(2, 0), torch.tensor([[1], [2]]), (), torch.tensor([0., 1.]))
        >>> len(b)
        2
    """

    dense: torch.Tensor
    categorical: torch.Tensor
    bags: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            dense=move(self.dense),
            categorical=move(self.categorical),
            bags=tuple((move(v), move(o)) for v, o in self.bags),
            labels=move(self.labels),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])
