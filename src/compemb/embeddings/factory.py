"""One factory for every embedding scheme: a spec becomes a plan, the plan's scheme makes the
module."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compemb.spec import EmbeddingSpec, FeaturePlan, plan_feature

__all__ = ["make_embedding_bag", "module_from_plan"]


def module_from_plan(
    plan: FeaturePlan,
    *,
    validate: bool = True,
    include_last_offset: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    shared: nn.Module | None = None,
) -> nn.Module:
    """The per-feature module a plan describes (its scheme builds it), initialized by the
    plan's rule; its state-dict keys are the plan's parameter names.

    ``shared``: for a plan that reads a :class:`~compemb.spec.SharedPlan`, the collection's
    module holding its tensors, which the module reads instead of a copy of its own (None:
    the module holds its own, as a collection of this one feature would)."""
    spec = plan.spec
    more = {} if shared is None else {"shared": shared}
    return plan.scheme.module(plan, mode=spec.mode, sparse=spec.sparse, validate=validate,
                              include_last_offset=include_last_offset, device=device,
                              dtype=dtype, **more)


def make_embedding_bag(
    num_categories: int,
    embedding_dim: int,
    spec: EmbeddingSpec | None = None,
    *,
    counts: np.ndarray | None = None,
    validate: bool = True,
    include_last_offset: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **spec_fields: object,
) -> nn.Module:
    """Build the embedding module for one feature.

    Give either a spec or its fields as keywords:
    ``make_embedding_bag(10**6, 16, scheme="qr", collisions=4, operation="mult")``.
    Every module maps a bag to width ``embedding_dim`` (concat splits it among its tables);
    ``feature`` returns (B, k, D), every other scheme (B, D).

    ``counts``: the feature's training-split count of each category (n,), for specs that
    need them (``spec.needs_counts``: frequency ranks, hot rows).

    Raises:
        ValueError: for unknown names, or a compression that cannot shrink the table
            (collisions >= num_categories); raise ``threshold`` to keep such features full.
    """
    if spec is None:
        spec = EmbeddingSpec(**spec_fields)  # type: ignore[arg-type]
    elif spec_fields:
        raise ValueError(f"give a spec or spec fields, not both: {sorted(spec_fields)}")
    plan = plan_feature(num_categories, embedding_dim, spec, strict=True, counts=counts)
    return module_from_plan(plan, validate=validate, include_last_offset=include_last_offset,
                            device=device, dtype=dtype)
