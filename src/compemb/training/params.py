"""Parameter and memory accounting of a model, built on the meta device so Criteo-size full
tables cost no memory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from compemb.embeddings import EmbeddingSpec, resolve_budget
from compemb.models import RankingModel, build_model
from compemb.optim import optimizer_kind


def load_cardinalities(spec: str) -> tuple[int, ...]:
    """``"criteo-kaggle"`` or a file of integers (JSON list, or separated by commas/spaces)."""
    if spec.lower() in ("criteo-kaggle", "criteo"):
        from compemb.data import CRITEO_KAGGLE_CARDINALITIES

        return tuple(CRITEO_KAGGLE_CARDINALITIES)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"cardinalities {spec!r}: not 'criteo-kaggle' and no such file (give a file of "
            f"integers, e.g. '1460, 583, 10131227')"
        )
    text = path.read_text().strip()
    try:
        values = json.loads(text) if text.startswith("[") else text.replace(",", " ").split()
        numbers = tuple(int(v) for v in values)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: expected integers (JSON list or comma/space separated)") from err
    if not numbers or min(numbers) < 1:
        raise ValueError(f"{path}: expected at least one cardinality, all >= 1; got {numbers}")
    return numbers


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def parameter_report(model: RankingModel, optimizer: str | None = None) -> dict[str, Any]:
    """Counts and bytes of a model: ``total``, ``embedding``, ``dense`` and their ``*_bytes``.

    With ``optimizer`` also ``optimizer_state_bytes`` (dense state, as torch keeps it) and
    ``train_bytes`` (parameters plus state). ``full_embedding`` is what full tables would hold.
    """
    total, total_bytes = _count(model)
    emb, emb_bytes = _count(model.sparse_arch)
    report: dict[str, Any] = {
        "total": total,
        "embedding": emb,
        "dense": total - emb,
        "total_bytes": total_bytes,
        "embedding_bytes": emb_bytes,
        "dense_bytes": total_bytes - emb_bytes,
        "full_embedding": model.sparse_arch.full_parameters,
        "compression_ratio": model.sparse_arch.compression_ratio,
        # frequency-aware embeddings also keep their id maps (relabelling, hot ids)
        "index_bytes": model.sparse_arch.index_bytes,
    }
    if optimizer is not None:
        kind = optimizer_kind(optimizer)
        tables = {id(t) for t in model.sparse_arch.table_parameters()}
        state = sum(kind.state_numel(p.shape, table=id(p) in tables) * p.element_size()
                    for p in model.parameters())  # fmt: skip
        report.update(optimizer_state_bytes=state, train_bytes=total_bytes + state)
    return report


def count_parameters(
    model: str,
    cardinalities: Sequence[int],
    spec: EmbeddingSpec,
    *,
    embedding_dim: int = 16,
    num_dense: int = 13,
    optimizer: str | None = None,
) -> dict[str, Any]:
    """:func:`parameter_report` of a model built on the meta device (allocates nothing).

    A spec with a budget (``spec.budget``) gets its knob chosen for these cardinalities first
    (:func:`~compemb.embeddings.budget.resolve_budget`); the report then also holds ``budget``
    and ``fitted``, the knob and the value it chose.

    >>> from compemb.data import CRITEO_KAGGLE_CARDINALITIES as C
    >>> count_parameters("dlrm", C, EmbeddingSpec("full"))["total"]
    540677217
    >>> report = count_parameters("dlrm", C, EmbeddingSpec("qr", budget="100x"))
    >>> report["fitted"], round(report["compression_ratio"])
    ({'collisions': 101}, 100)
    """
    spec = resolve_budget(spec, cardinalities, embedding_dim)
    # Frequency-aware specs size the same whatever the counts: count with uniform ones.
    counts = [np.zeros(n, dtype=np.int64) for n in cardinalities] if spec.needs_counts else None
    built = build_model(model, cardinalities, num_dense, embedding_dim, spec, counts=counts,
                        device="meta")
    report = {"model": model, **parameter_report(built, optimizer)}
    if spec.budget is not None:
        knob = spec.owner.knob
        report.update(budget=str(spec.budget), fitted={knob: getattr(spec, knob)})
    return report
