"""``make demo``: every scheme trained on MovieLens-100k; ``compemb sizes``: what each costs.

:func:`run_demo` is the main job: the ``demo`` experiment (full table, hashing trick, QR with
concat, add and mult, path-based QR, at 4, 16 and 60 collisions, and the successors MD, ROBE,
CCE, TT-Rec and DHE with their knobs fitted to 4x; DLRM; 3 trials each) with its table, plot
and report under ``runs/demo/demo/``. :func:`run_sizes` builds each scheme's
embedding collection on the meta device (nothing is allocated, so Criteo-sized full tables cost
no memory) and tabulates rows, parameters and compression.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec

DEMO_SPECS: tuple[EmbeddingSpec, ...] = (
    EmbeddingSpec("full"),
    EmbeddingSpec("hash", collisions=4),
    EmbeddingSpec("qr", "concat", collisions=4),
    EmbeddingSpec("qr", "add", collisions=4),
    EmbeddingSpec("qr", "mult", collisions=4),
    EmbeddingSpec("qr", "mult", collisions=60),
    EmbeddingSpec("mixed_radix", "mult", k=3),
    EmbeddingSpec("crt", "mult", k=2),
    EmbeddingSpec("crt", "concat", k=3),
    EmbeddingSpec("path", collisions=4, path_transform="linear"),
    EmbeddingSpec("path", collisions=4, path_hidden=64),
    EmbeddingSpec("feature", collisions=4),
)


def size_table(
    cardinalities: Sequence[int], embedding_dim: int, specs: Sequence[EmbeddingSpec] = DEMO_SPECS
) -> list[dict[str, object]]:
    """One row per spec: scheme, operation, rows, parameters, bytes and compression ratio."""
    rows = []
    for spec in specs:
        ebc = EmbeddingBagCollection(cardinalities, embedding_dim, spec, device="meta")
        scheme, operation = spec.owner.describe(spec)
        rows.append({
            "scheme": scheme, "operation": operation, "rows": ebc.num_rows,
            "parameters": ebc.num_parameters, "bytes": ebc.num_bytes,
            "compression": ebc.compression_ratio,
            "full_features": sum(not plan.scheme.compresses for plan in ebc.plans),
        })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    lines = [f"{'scheme':16s} {'operation':10s} {'rows':>12s} {'parameters':>14s} "
             f"{'MiB':>9s} {'compression':>11s} {'full feats':>10s}"]
    for r in rows:
        lines.append(
            f"{r['scheme']:16s} {r['operation']:10s} {r['rows']:12,d} {r['parameters']:14,d} "
            f"{r['bytes'] / 2**20:9.1f} {r['compression']:10.1f}x {r['full_features']:10d}"
        )
    return "\n".join(lines)


def run_sizes(embedding_dim: int = 16) -> str:
    """The size table on MovieLens-100k and on Criteo Kaggle cardinalities."""
    from compemb.data.movielens import load_movielens_100k

    movielens = load_movielens_100k()
    parts = []
    for name, cards in (
        (f"MovieLens-100k ({len(movielens.cardinalities)} features: "
         f"{dict(zip(movielens.feature_names, movielens.cardinalities, strict=True))})",
         movielens.cardinalities),
        ("Criteo Kaggle (26 features, 33,762,577 categories)", CRITEO_KAGGLE_CARDINALITIES),
    ):  # fmt: skip
        parts.append(f"{name}, D={embedding_dim}\n{format_table(size_table(cards, embedding_dim))}")
    return "\n\n".join(parts)


def run_demo(
    out: str | Path = "runs/demo", trials: int = 3, workers: int = 2, progress: bool | None = None
) -> str:
    """Train the ``demo`` experiment on MovieLens-100k (resumable) and return its table.

    Two workers of one thread each: the runs are small, so two at once use both cores of a
    2-core machine better than one run with two threads.
    """
    from compemb.experiments.pipeline import run_named
    from compemb.experiments.report import format_table
    from compemb.experiments.runner import Settings

    command = f"compemb demo --out {out} --trials {trials} --workers {workers}"
    settings = Settings(trials=trials, workers=workers)
    outcome = run_named("demo", settings, out, progress=progress, command=command)
    r = outcome.results
    optimizers = ", ".join(sorted({t["optimizer"] for t in r["trials"]}))
    return (f"MovieLens-100k, DLRM, D=16, 1 epoch, batch 128, {trials} trials per row "
            f"(mean ± std), optimizer {optimizers}:\n{format_table(r)}\n\n"
            f"wrote {outcome.report} and {outcome.plot} ({len(r['trials'])} runs, "
            f"{outcome.seconds:.0f} s)")
