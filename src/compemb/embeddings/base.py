"""What every compemb embedding module shares: accounting against the full table, the full
table itself, and the initialization scale they all start from."""

from __future__ import annotations

import torch
from torch import nn

from compemb.embeddings._bags import Bags, check_mode, pool, prepare_bags
from compemb.operations import full_table_bound
from compemb.partitions import HeadPartitions, PartitionSet, relabel_dtype

__all__ = ["BagModule", "EmbeddingAccounting", "FullEmbeddingBag", "full_table_bound"]


class EmbeddingAccounting:
    """Parameter, memory and compression accounting, mixed into every embedding module.

    Needs ``num_categories`` and ``embedding_dim`` on the module; the full table it compares
    against is ``num_categories x embedding_dim``.
    """

    num_categories: int
    embedding_dim: int

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (works on the meta device: counts, never allocates)."""
        return sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]

    @property
    def num_bytes(self) -> int:
        """Bytes of the parameters at their dtype (optimizer state not included)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())  # type: ignore

    @property
    def full_parameters(self) -> int:
        """Parameters of the full table this module replaces: n x D."""
        return self.num_categories * self.embedding_dim

    @property
    def compression_ratio(self) -> float:
        """Full-table parameters over this module's parameters (> 1 means smaller)."""
        return self.full_parameters / max(self.num_parameters, 1)

    def _where(self) -> str:
        return f"{type(self).__name__}(num_categories={self.num_categories})"


class FullEmbeddingBag(nn.EmbeddingBag, EmbeddingAccounting):
    """The full table: ``nn.EmbeddingBag`` with checked input, accounting, and the reference's
    U(-sqrt(1/n), sqrt(1/n)) initialization.

    Forward: ``(input, offsets=None, per_sample_weights=None) -> (B, D)`` exactly as
    ``nn.EmbeddingBag``.

    >>> bag = FullEmbeddingBag(1000, 16)
    >>> bag(torch.tensor([[1, 2], [3, 999]])).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        mode: str = "sum",
        *,
        sparse: bool = False,
        include_last_offset: bool = False,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_mode(mode, "FullEmbeddingBag")
        super().__init__(
            num_categories,
            embedding_dim,
            mode=mode,
            sparse=sparse,
            include_last_offset=include_last_offset,
            device=device,
            dtype=dtype,
        )
        self.validate = validate

    @property
    def num_categories(self) -> int:  # type: ignore[override]
        return self.num_embeddings

    @property
    def num_rows(self) -> int:
        return self.num_embeddings

    def reset_parameters(self) -> None:
        a = full_table_bound(self.num_embeddings)
        with torch.no_grad():
            self.weight.uniform_(-a, a)

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bags = prepare_bags(
            self._where(), self.num_embeddings, input, offsets, per_sample_weights,
            self.mode, self.include_last_offset, self.validate,
        )  # fmt: skip
        if bags.length is not None:
            return super().forward(input.long(), None, per_sample_weights)
        return super().forward(bags.ids, bags.offsets, per_sample_weights)


class BagModule(nn.Module, EmbeddingAccounting):
    """Base of the compositional modules: ``nn.EmbeddingBag``'s input conventions and pooling."""

    def __init__(
        self,
        num_categories: int,
        embedding_dim: int,
        mode: str,
        include_last_offset: bool,
        validate: bool,
    ):
        super().__init__()
        for name, value in (("num_categories", num_categories), ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                where = type(self).__name__
                raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
        self.num_categories = num_categories
        self.embedding_dim = embedding_dim
        self.mode = check_mode(mode, type(self).__name__)
        self.include_last_offset = include_last_offset
        self.validate = validate

    def _keep_partitions(self, partitions: PartitionSet) -> None:
        """Use ``partitions``, and own their id maps (frequency renumbering, hot ids) as the
        buffers ``relabel`` (:func:`~compemb.partitions.relabel_dtype`: int32 below 2^31
        categories) and ``hot_ids``: saved with the module, and what its forward reads after a
        move (``_apply``) and a load."""
        self.partitions = partitions
        relabel = partitions.relabeling()
        if relabel is not None:
            self.register_buffer("relabel", relabel.to(relabel_dtype(partitions.num_categories)))
        if isinstance(partitions, HeadPartitions):
            self.register_buffer("hot_ids", partitions.hot)
        if relabel is not None:  # the partitions read the stored map
            self.partitions = partitions.on_maps(self.relabel, self._buffers.get("hot_ids"))

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (torch's signature)
        super()._apply(fn, recurse)
        maps = self._buffers
        if "relabel" in maps or "hot_ids" in maps:
            self.partitions = self.partitions.on_maps(maps.get("relabel"), maps.get("hot_ids"))
        return self

    def _bags(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None,
        per_sample_weights: torch.Tensor | None,
    ) -> Bags:
        return prepare_bags(
            self._where(), self.num_categories, input, offsets, per_sample_weights,
            self.mode, self.include_last_offset, self.validate,
        )  # fmt: skip

    def _pool(self, values: torch.Tensor, bags: Bags) -> torch.Tensor:
        return pool(values, bags, self.mode, self.include_last_offset)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's own vector, composed from its partitions' rows: (N,) -> (N, D)."""
        raise TypeError(f"{type(self).__name__} embeds bags in its own forward")

    def forward(
        self,
        input: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed bags: input (B, L) or (N,) with offsets -> (B, D). Composes each id's vector,
        then pools the bag: a per-sample weight scales its id's composed vector once."""
        bags = self._bags(input, offsets, per_sample_weights)
        return self._pool(self.compose(bags.ids), bags)
