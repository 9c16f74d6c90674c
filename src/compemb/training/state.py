"""What a run has done so far: the part of a checkpoint that is not tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Progress of a run, saved with every checkpoint so a resumed run continues exactly.

    ``loss_sum``/``loss_rows`` accumulate the training loss since the last metrics record;
    ``history`` holds every record written to ``metrics.jsonl`` so far.
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: float = 0.0
    loss_rows: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        return cls(**raw)

    def take_train_loss(self) -> float | None:
        """Mean training loss since the last call, and reset the running sum."""
        mean = self.loss_sum / self.loss_rows if self.loss_rows else None
        self.loss_sum, self.loss_rows = 0.0, 0
        return mean
