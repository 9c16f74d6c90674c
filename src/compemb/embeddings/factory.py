"""One factory for every embedding scheme, driven by a frozen :class:`EmbeddingSpec`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from compemb import partitions as P
from compemb.embeddings.base import FullEmbeddingBag
from compemb.embeddings.operation import (
    OPERATIONS,
    CompositionalEmbeddingBag,
    FeatureEmbeddingBag,
    HashEmbeddingBag,
)
from compemb.embeddings.path import TRANSFORMS, PathEmbeddingBag

SCHEMES = ("full", "hash", "qr", "mixed_radix", "crt", "path", "feature")


@dataclass(frozen=True)
class EmbeddingSpec:
    """How to embed one categorical feature (or every feature of a model).

    Attributes:
        scheme: full, hash, qr, mixed_radix, crt, path or feature (see the README's table).
        operation: concat, add or mult: how qr, mixed_radix and crt combine their tables.
        collisions: categories per bucket of the largest table (hash, qr, crt, path, feature).
        k: number of partitions for mixed_radix and crt (sizes near n^(1/k)) instead of
            collisions.
        threshold: a feature with at most this many categories keeps its full table (0: none).
        path_transform: linear or mlp, for scheme path.
        path_hidden: hidden units of each path MLP.
        mode: sum, mean or max pooling over a bag.
        sparse: sparse gradients for the tables (for Adagrad and SGD).
    """

    scheme: str = "full"
    operation: str = "mult"
    collisions: int | None = None
    k: int | None = None
    threshold: int = 0
    path_transform: str = "mlp"
    path_hidden: int = 64
    mode: str = "sum"
    sparse: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {self.operation!r}")
        if self.path_transform not in TRANSFORMS:
            raise ValueError(
                f"path_transform must be one of {TRANSFORMS}, got {self.path_transform!r}"
            )
        for name in ("collisions", "k"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ValueError(f"{name} must be an int >= 2 or None, got {v!r}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        needs = {
            "hash": "collisions", "qr": "collisions", "path": "collisions",
            "feature": "collisions or k", "mixed_radix": "k or collisions",
            "crt": "k or collisions",
        }  # fmt: skip
        if self.scheme in needs and self.collisions is None and self.k is None:
            raise ValueError(f"scheme {self.scheme!r} needs {needs[self.scheme]}")
        if self.scheme in ("hash", "qr", "path") and self.k is not None:
            raise ValueError(f"scheme {self.scheme!r} takes collisions, not k (k={self.k})")
        if self.collisions is not None and self.k is not None:
            raise ValueError(
                f"give collisions or k, not both (collisions={self.collisions}, k={self.k})"
            )

    def keeps_full(self, num_categories: int) -> bool:
        """Whether a feature of ``num_categories`` stays a full table under the threshold."""
        return self.scheme == "full" or num_categories <= self.threshold

    def with_(self, **changes: object) -> EmbeddingSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def spec_partitions(spec: EmbeddingSpec, num_categories: int) -> P.PartitionSet:
    """The partitions a spec uses for a feature of ``num_categories`` (not for full/hash)."""
    n, c, k = num_categories, spec.collisions, spec.k
    if spec.scheme == "crt":
        return P.balanced_chinese_remainder(n, k) if k else P.for_collisions(n, c, "crt")
    if k is not None:
        return P.balanced_mixed_radix(n, k)
    return P.quotient_remainder(n, c)


def resolve_spec(spec: EmbeddingSpec, num_categories: int) -> EmbeddingSpec:
    """The spec a feature of ``num_categories`` actually gets inside a multi-feature model.

    A feature that the spec cannot shrink (at most ``threshold`` categories, no more categories
    than ``collisions``, or partitions with as many rows as the full table) keeps its full table,
    as the paper's thresholding does; :func:`make_embedding_bag` alone refuses such a request.
    """
    n = num_categories
    if spec.scheme == "full":
        return spec
    if spec.keeps_full(n) or (spec.collisions is not None and spec.collisions >= n):
        return spec.with_(scheme="full")
    if spec.scheme != "hash" and spec_partitions(spec, n).num_buckets >= n:
        return spec.with_(scheme="full")
    return spec


def make_embedding_bag(
    num_categories: int,
    embedding_dim: int,
    spec: EmbeddingSpec | None = None,
    *,
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

    Raises:
        ValueError: for unknown names, or a compression that cannot shrink the table
            (collisions >= num_categories); raise ``threshold`` to keep such features full.
    """
    if spec is None:
        spec = EmbeddingSpec(**spec_fields)  # type: ignore[arg-type]
    elif spec_fields:
        raise ValueError(f"give a spec or spec fields, not both: {sorted(spec_fields)}")
    n = num_categories
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_categories must be an int >= 1, got {n!r}")
    common = {"mode": spec.mode, "sparse": spec.sparse, "validate": validate,
              "include_last_offset": include_last_offset, "device": device, "dtype": dtype}
    if spec.keeps_full(n):
        return FullEmbeddingBag(n, embedding_dim, **common)
    if spec.collisions is not None and spec.collisions >= n:
        raise ValueError(
            f"collisions={spec.collisions} >= num_categories={n}: the compressed tables would "
            f"hold at least as many rows as the full table; use fewer collisions or "
            f"threshold >= {n} to keep this feature full"
        )
    if spec.scheme == "hash":
        return HashEmbeddingBag(n, embedding_dim, -(-n // spec.collisions), **common)
    parts = spec_partitions(spec, n)
    if parts.num_buckets >= n:
        raise ValueError(
            f"{spec.scheme} partitions of sizes {parts.sizes} for num_categories={n} hold "
            f"{parts.num_buckets} rows, no fewer than the full table's {n}; use fewer partitions "
            f"or collisions, or threshold >= {n} to keep this feature full"
        )
    if spec.scheme == "feature":
        return FeatureEmbeddingBag(n, embedding_dim, parts, **common)
    if spec.scheme == "path":
        return PathEmbeddingBag(
            n, embedding_dim, parts, spec.path_transform, spec.path_hidden, **common
        )
    return CompositionalEmbeddingBag(n, embedding_dim, parts, spec.operation, **common)
