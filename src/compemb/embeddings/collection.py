"""All categorical features of a model embedded in one call."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from compemb.embeddings._bags import prepare_bags
from compemb.embeddings.factory import EmbeddingSpec, make_embedding_bag, resolve_spec
from compemb.embeddings.operation import FeatureEmbeddingBag


class EmbeddingBagCollection(nn.Module):
    """F categorical features, each embedded by the module the spec gives it.

    Features with at most ``spec.threshold`` categories, or too few to compress, keep full
    tables (:func:`~compemb.embeddings.factory.resolve_spec`); ``specs`` records what each got.

    Shapes: ``ids`` (B, F1) int64, one id per single-valued feature; ``bags`` the remaining
    F - F1 multi-hot features as ``(values (N,), offsets (B,))`` pairs. Output (B, F_out, D):
    one vector per feature, k per feature under the ``feature`` scheme.

    >>> ebc = EmbeddingBagCollection([1000, 50], 16, EmbeddingSpec("qr", collisions=4))
    >>> ebc(torch.tensor([[3, 7], [999, 49]])).shape
    torch.Size([2, 2, 16])
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        embedding_dim: int,
        spec: EmbeddingSpec,
        *,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if len(cardinalities) == 0:
            raise ValueError("EmbeddingBagCollection needs at least one feature")
        self.cardinalities = tuple(int(n) for n in cardinalities)
        self.embedding_dim = embedding_dim
        self.spec = spec
        self.specs = tuple(resolve_spec(spec, n) for n in self.cardinalities)
        self.validate = validate
        self.embeddings = nn.ModuleList(
            make_embedding_bag(n, embedding_dim, s, validate=False, device=device, dtype=dtype)
            for n, s in zip(self.cardinalities, self.specs, strict=True)
        )
        self.register_buffer(
            "_limits", torch.tensor(self.cardinalities, device=device), persistent=False
        )

    @property
    def num_outputs(self) -> int:
        """F_out: vectors per sample (features, counting k for each feature-generation one)."""
        return sum(
            m.num_features if isinstance(m, FeatureEmbeddingBag) else 1 for m in self.embeddings
        )

    @property
    def num_rows(self) -> int:
        """Rows in all tables."""
        return sum(m.num_rows for m in self.embeddings)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    @property
    def full_parameters(self) -> int:
        """Parameters of the full tables: sum of n x D."""
        return sum(self.cardinalities) * self.embedding_dim

    @property
    def compression_ratio(self) -> float:
        return self.full_parameters / max(self.num_parameters, 1)

    def forward(
        self,
        ids: torch.Tensor,
        bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """Embed a batch: ids (B, F1) and F - F1 bags -> (B, F_out, D)."""
        if ids.dim() != 2 or ids.shape[1] + len(bags) != len(self.embeddings):
            raise ValueError(
                f"EmbeddingBagCollection: ids of shape {tuple(ids.shape)} and {len(bags)} bags "
                f"do not make the {len(self.embeddings)} features this collection embeds; "
                f"expected ids (B, F1) plus F - F1 bags"
            )
        single = ids.shape[1]
        if self.validate:
            self._check(ids, bags)
        outs = []
        for f, module in enumerate(self.embeddings):
            if f < single:
                out = module(ids[:, f : f + 1])
            else:
                out = module(*bags[f - single])
            outs.append(out if out.dim() == 3 else out.unsqueeze(1))
        return torch.cat(outs, dim=1)

    def _check(self, ids: torch.Tensor, bags: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"EmbeddingBagCollection: ids must be int64, got {ids.dtype}")
        limits = self._limits[: ids.shape[1]]
        bad = (ids < 0) | (ids >= limits)
        if bool(bad.any()):
            row, f = (int(v) for v in bad.nonzero()[0])
            raise IndexError(
                f"EmbeddingBagCollection: feature {f} id {int(ids[row, f])} in row {row} is out "
                f"of range; valid ids are 0..{self.cardinalities[f] - 1}"
            )
        for j, (values, offsets) in enumerate(bags):
            f = ids.shape[1] + j
            prepare_bags(
                f"EmbeddingBagCollection feature {f}", self.cardinalities[f], values, offsets,
                None, "sum", False, True,
            )  # fmt: skip
