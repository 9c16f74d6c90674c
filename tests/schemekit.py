"""The one shared list of schemes the parametrized tests run over (module = collection = TorchRec
collection, parameter counts, save and load): a scheme registered in the package adds its specs
here, and ``test_every_registered_scheme_is_tested`` fails until it does.

Specs that read the training split's counts (``spec.needs_counts``: frequency ranks, hot rows)
are built with :func:`kit_counts` wherever the shared tests build them."""

from collections.abc import Sequence

import numpy as np

from compemb.embeddings import EmbeddingSpec

SCHEME_SPECS: dict[str, list[EmbeddingSpec]] = {
    "full": [EmbeddingSpec("full")],
    "hash": [EmbeddingSpec("hash", collisions=4)],
    "qr": [EmbeddingSpec("qr", "concat", collisions=4), EmbeddingSpec("qr", "add", collisions=4),
           EmbeddingSpec("qr", "mult", collisions=4)],
    "mixed_radix": [EmbeddingSpec("mixed_radix", "mult", k=3)],
    "crt": [EmbeddingSpec("crt", "concat", k=3), EmbeddingSpec("crt", "mult", collisions=5)],
    "path": [EmbeddingSpec("path", collisions=4, path_hidden=6),
             EmbeddingSpec("path", collisions=4, path_transform="linear")],
    "feature": [EmbeddingSpec("feature", collisions=4)],
    "md": [EmbeddingSpec("md", alpha=0.3, base_width=4, multiple_of=4),
           EmbeddingSpec("md", alpha=0.3, base_width=4, multiple_of=4, bias=True, init="ldim")],
    "tt": [EmbeddingSpec("tt", rank=2), EmbeddingSpec("tt", rank=3, num_cores=2)],
    "robe": [EmbeddingSpec("robe", size=64, block=4, shared=True, aligned=False),
             EmbeddingSpec("robe", size=96, block=2, seed=3, shared=False, aligned=True)],
    "md_block": [EmbeddingSpec("md_block", alpha=0.3, num_blocks=3, multiple_of=4,
                               order="frequency"),
                 EmbeddingSpec("md_block", alpha=0.5, base_width=4, multiple_of=4,
                               init="unit_norm", order="frequency")],
    "md_qr": [EmbeddingSpec("md_qr", collisions=4, multiple_of=4, order="frequency"),
              EmbeddingSpec("md_qr", "add", collisions=3, head=20, alpha=0.5, base_width=4,
                            multiple_of=4, init="unit_norm", order="frequency")],
    "dhe": [EmbeddingSpec("dhe", width=8, hashes=16),
            EmbeddingSpec("dhe", width=6, depth=1, hashes=8, encoding="gaussian")],
    "cce": [EmbeddingSpec("cce", rows=8, chunks=2),
            EmbeddingSpec("cce", rows=5, chunks=1, seed=3)],
}
SPECS = [spec for specs in SCHEME_SPECS.values() for spec in specs]


def spec_id(spec: EmbeddingSpec) -> str:
    """A test id: the scheme and the settings that differ from a plain spec's."""
    shown = [str(v) for k, v in spec.to_dict().items()
             if k != "scheme" and v not in (None, 0, False, "sum", "natural", "default")]
    return "-".join([spec.scheme, *shown])


def kit_counts(spec: EmbeddingSpec, cardinalities: Sequence[int]) -> list[np.ndarray] | None:
    """Zipf-like training counts for every feature (seeded, the same on every call; each
    feature's hottest ids scattered, not first), or None when the spec needs none."""
    if not spec.needs_counts:
        return None
    return [np.random.default_rng(f).zipf(1.5, int(n)).astype(np.int64)
            for f, n in enumerate(cardinalities)]
