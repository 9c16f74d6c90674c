"""The contract of a stacked group that a scheme brings with it: what the multi-feature collection
asks of every group beyond the built-in table and path stacks.

A scheme's :meth:`~compemb.scheme.Scheme.stacking` returns a :class:`StackKey`; the collection
puts the features whose keys are equal in one group, which :meth:`StackKey.build` makes from
their plans. The group holds every member's tensors stacked however it likes and names them by
feature (:meth:`StackedGroup.feature_keys`), so checkpoints of the per-feature modules load into
it and back.

Letters: B batch, G features in the group, D width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from compemb.embeddings._bags import Bags
    from compemb.spec import FeaturePlan

__all__ = ["Columns", "StackKey", "StackedGroup", "columns_of"]

# The group's features a call embeds: all of them in group order (a slice) or some, by position.
Columns = slice | list[int]


class StackKey(ABC):
    """Which group a feature joins (features with equal keys share one), and how to build it.
    Subclasses are frozen dataclasses, so equal settings make equal keys."""

    @abstractmethod
    def build(self, plans: Sequence[FeaturePlan], *, sparse: bool,
              device: torch.device | str | None, dtype: torch.dtype | None) -> StackedGroup:
        """The group of the features planned by ``plans`` (in group order)."""


class StackedGroup(nn.Module, ABC):
    """G features embedded together.

    Shapes: ``forward``: ids (B, G') of the features ``members`` (all G when None) -> (B, G', D).
    """

    @abstractmethod
    def forward(self, ids: torch.Tensor, members: list[int] | None = None) -> torch.Tensor:
        """ids (B, G') of this group's features ``members`` (by position; all when None)."""

    def forward_bag(self, i: int, bags: Bags, mode: str) -> torch.Tensor:
        """One multi-hot feature (the group's i-th): each id's vector, then pooled -> (B, D)."""
        from compemb.embeddings._bags import pool

        return pool(self(bags.ids.unsqueeze(1), [i]).squeeze(1), bags, mode, False)

    @abstractmethod
    def feature_keys(self, prefix: str, features: Sequence[int]) -> list[tuple[str, str, Any]]:
        """(``features.<f>.<name>``, internal key under ``prefix``, where in that tensor) for
        every tensor of every member's plan; ``features`` are the members' indices in the
        collection."""

    @abstractmethod
    def tables(self, i: int) -> list[torch.Tensor]:
        """The i-th member's parameters as its per-feature module orders them (views)."""

    @property
    def shared_keys(self) -> tuple[str, ...]:
        """Keys of the :class:`~compemb.spec.SharedPlan` tables this group holds for every
        feature that reads them (ROBE-Z's array): the collection keeps no other copy, and
        :meth:`feature_keys` saves them as ``shared.<key>.<name>``."""
        return ()

    @abstractmethod
    def table_parameters(self) -> list[nn.Parameter]:
        """The row-indexed tables (what a row-wise or fused optimizer treats row by row)."""

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Rows of every member's tables, as the per-feature modules count them."""


def columns_of(members: Columns, group: Sequence[int]) -> tuple[list[int], list[int]]:
    """Of the group members in ``group`` (positions in the group), those a call embeds:
    (their positions among the call's columns, their positions in ``group``)."""
    if isinstance(members, slice):
        return list(group), list(range(len(group)))
    at = {m: c for c, m in enumerate(members)}
    pairs = [(at[m], j) for j, m in enumerate(group) if m in at]
    return [c for c, _ in pairs], [j for _, j in pairs]
