"""Planted synthetic CTR data: Criteo-shaped, Zipf-distributed categories, a known optimum.

Rows are drawn independently. Feature f takes category id ``k`` in ``[0, n_f)`` with probability
proportional to ``(k + 1) ** -zipf`` (a truncated power law sampled by its inverse CDF, so a
10-million-category feature costs nothing to set up); id 0 is the most frequent, as with
first-seen enumeration. Dense feature j is ``log(1 + floor(exp(1 + 1.2 z_j)))`` for a standard
normal ``z_j``. The label is Bernoulli(sigmoid(logit)) under a hidden model::

    logit = bias + sum_j w_j z_j / sqrt(D)                         (dense)
                 + sum_f s_f[id_f] / sqrt(F)                       (one weight per category)
                 + sum_{f<g} <u_f[id_f], u_g[id_g]> / sqrt(P k)    (pairwise, P = F(F-1)/2)

where each category's weight ``s`` and latent vector ``u`` (k = 4) are derived from a
counter-based hash of ``(seed, feature, id)``: nothing is stored, so memory does not grow with
cardinality. A model that gives every category its own embedding can learn all of it; merging
categories loses the difference between their ``s`` and ``u``.

The requested cardinalities are the *population* the categories are drawn from. What is written
is numbered as preprocessing a real log numbers it (``numbering``, recorded in the metadata's
options):

- ``first-seen`` (default): ids in order of first appearance over the row stream (train, then
  test, then validation, as the Criteo reference enumerates all 7 days), and each feature's
  cardinality is the number of distinct categories present. Frequent categories tend to get small
  ids, but not in exact order.
- ``rank``: the categories present, numbered by their population rank (the generator's id 0 is
  the most probable); cardinality as for first-seen.
- ``random``: the categories present under a seeded random permutation (no order left).
- ``population``: the generator's own ids and the requested cardinalities (``compemb synth
  --keep-cardinalities``): what memory and speed benchmarks at Criteo size need, but most ids of
  a large feature never occur, so compression that merges ids ``i mod m`` merges almost nothing.

The three renumberings take a first pass over the (deterministic) block stream that draws the ids
only, building one population-sized int32 map per feature (135 MB for Criteo's 33.8 M), then the
second pass writes. The training split's per-id counts are recorded (``train/counts.npy``).

Splits follow the Criteo protocol (:func:`~compemb.data.storage.day_split`): rows cut into 7 equal
"days", days 1-6 train, the last day's first half test and second half validation. The metadata
records the hidden model's own test log loss (the best any model can reach) and the constant
predictor's (the test base rate's entropy).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from compemb.data.criteo import CRITEO_KAGGLE_CARDINALITIES
from compemb.data.storage import (
    DatasetMetadata,
    SplitWriter,
    atomic_output_dir,
    day_split,
    write_category_counts,
)

__all__ = [
    "NUMBERINGS",
    "SynthOptions",
    "category_hash",
    "generate_synthetic",
    "parse_cardinalities",
    "zipf_ids",
]

_LATENT_DIM = 4
_BIAS = -1.0
# Rows per generated block; part of the random stream, so fixed (not an option).
_BLOCK_ROWS = 1 << 17
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
NUMBERINGS = ("first-seen", "rank", "random", "population")


@dataclass(frozen=True)
class SynthOptions:
    """Options of :func:`generate_synthetic`.

    Attributes:
        rows: number of rows over all splits.
        cardinalities: number of categories of each categorical feature.
        seed: seed of everything (rows and hidden model).
        zipf: exponent of the per-feature power law (> 0; larger = more skewed).
        num_dense: number of dense features.
        numbering: how the written ids are numbered (see the module docstring): first-seen,
            rank, random, or population (the requested cardinalities kept).
    """

    rows: int
    cardinalities: tuple[int, ...]
    seed: int = 0
    zipf: float = 1.1
    num_dense: int = 13
    numbering: str = "first-seen"

    def __post_init__(self) -> None:
        if self.rows < 7:
            raise ValueError(f"rows must be at least 7 (one per day), got {self.rows}")
        if not self.cardinalities or min(self.cardinalities) < 1:
            raise ValueError(f"cardinalities must be positive, got {self.cardinalities}")
        if max(self.cardinalities) > np.iinfo(np.int32).max:
            raise ValueError(f"a cardinality exceeds the int32 id range: {self.cardinalities}")
        if not self.zipf > 0:
            raise ValueError(f"zipf exponent must be positive, got {self.zipf}")
        if self.num_dense < 0 or self.seed < 0:
            raise ValueError(f"num_dense and seed must be >= 0, got {self.num_dense}, {self.seed}")
        if self.numbering not in NUMBERINGS:
            raise ValueError(
                f"numbering must be one of {', '.join(NUMBERINGS)}, got {self.numbering!r}"
            )


def parse_cardinalities(text: str) -> tuple[int, ...]:
    """``--cardinalities``: "criteo-kaggle" or a comma-separated list of positive integers."""
    if text.strip().lower() == "criteo-kaggle":
        return CRITEO_KAGGLE_CARDINALITIES
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--cardinalities {text!r}: expected 'criteo-kaggle' or e.g. '1000,50,7'")
    return tuple(int(p) for p in parts)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective avalanche of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def category_hash(seed: int, feature: int, ids: np.ndarray) -> np.ndarray:
    """64 pseudo-random bits ((N,) uint64) per category id of ``feature``, fixed by ``seed``."""
    key = (seed * 1_000_003 + feature + 1) % (1 << 64)
    base = _mix(np.array([key], dtype=np.uint64) * _GOLDEN)
    return _mix(ids.astype(np.uint64) * _GOLDEN + base)


def _unit_uniforms(bits: np.ndarray, count: int) -> np.ndarray:
    """``count`` values of unit variance, uniform on [-sqrt 3, sqrt 3], from 12-bit fields."""
    fields = [(bits >> np.uint64(12 * j)) & np.uint64(0xFFF) for j in range(count)]
    u = (np.stack(fields, axis=-1).astype(np.float64) + 0.5) / 4096.0
    return (2.0 * u - 1.0) * math.sqrt(3.0)


def zipf_ids(uniforms: np.ndarray, cardinality: int, exponent: float) -> np.ndarray:
    """Ids in [0, cardinality) with P(k) ~ (k + 1) ** -exponent, by inverse CDF of ``uniforms``."""
    top = cardinality + 1.0
    if abs(exponent - 1.0) < 1e-9:
        x = top**uniforms
    else:
        e = 1.0 - exponent
        x = (1.0 + uniforms * (top**e - 1.0)) ** (1.0 / e)
    return np.minimum(np.floor(x).astype(np.int64) - 1, cardinality - 1).clip(0)


def _block_ids(rng: np.random.Generator, options: SynthOptions, rows: int) -> np.ndarray:
    """A block's population ids (rows, F) int32: the first draws of the block's stream."""
    ids = np.empty((rows, len(options.cardinalities)), dtype=np.int32)
    for f, card in enumerate(options.cardinalities):
        ids[:, f] = zipf_ids(rng.random(rows), card, options.zipf)
    return ids


def _block(options: SynthOptions, index: int, rows: int):
    """One block: ids (rows, F) int32, dense (rows, D) float32, labels (rows,) uint8, p (rows,)."""
    rng = np.random.default_rng([options.seed, index])
    num_features = len(options.cardinalities)
    ids = _block_ids(rng, options, rows)
    first = np.zeros(rows)
    latent_sum = np.zeros((rows, _LATENT_DIM))
    latent_sq = np.zeros(rows)
    for f in range(num_features):
        values = _unit_uniforms(category_hash(options.seed, f, ids[:, f]), _LATENT_DIM + 1)
        first += values[:, 0]
        latent = values[:, 1:]
        latent_sum += latent
        latent_sq += (latent * latent).sum(axis=1)
    pairs = num_features * (num_features - 1) // 2
    logit = _BIAS + first / math.sqrt(num_features)
    if pairs:
        pairwise = 0.5 * ((latent_sum * latent_sum).sum(axis=1) - latent_sq)
        logit += pairwise / math.sqrt(pairs * _LATENT_DIM)
    z = rng.standard_normal((rows, options.num_dense))
    if options.num_dense:
        weights = _unit_uniforms(category_hash(options.seed, -1, np.arange(options.num_dense)), 1)
        logit += z @ weights[:, 0] / math.sqrt(options.num_dense)
    dense = np.log1p(np.floor(np.exp(1.0 + 1.2 * z))).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-logit))
    labels = (rng.random(rows) < p).astype(np.uint8)
    return ids, dense, labels, p


def _blocks(rows: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + _BLOCK_ROWS, rows)) for lo in range(0, rows, _BLOCK_ROWS)]


def _numbering_maps(options: SynthOptions, disable: bool | None) -> list[np.ndarray]:
    """Per feature, population id -> written id ((cardinality,) int32, -1 for ids never drawn).

    First pass over the block stream, drawing ids only (the same draws :func:`_block` makes).
    """
    maps = [np.full(card, -1, dtype=np.int32) for card in options.cardinalities]
    sizes = [0] * len(maps)
    with tqdm(total=options.rows, unit="row", unit_scale=True, disable=disable,
              desc=f"numbering ({options.numbering})") as bar:  # fmt: skip
        for index, (lo, hi) in enumerate(_blocks(options.rows)):
            ids = _block_ids(np.random.default_rng([options.seed, index]), options, hi - lo)
            for f, mapping in enumerate(maps):
                if options.numbering != "first-seen":
                    mapping[ids[:, f]] = 0  # present; numbered below
                    continue
                values, first = np.unique(ids[:, f], return_index=True)
                new = mapping[values] < 0
                values = values[new][np.argsort(first[new], kind="stable")]
                mapping[values] = np.arange(sizes[f], sizes[f] + len(values), dtype=np.int32)
                sizes[f] += len(values)
            bar.update(hi - lo)
    if options.numbering != "first-seen":
        for f, mapping in enumerate(maps):
            present = np.flatnonzero(mapping >= 0)
            order = np.arange(len(present), dtype=np.int32)
            if options.numbering == "random":
                # A stream of its own (key 2**32 - 1 - f), apart from every block's [seed, index].
                order = np.random.default_rng([options.seed, 2**32 - 1 - f]).permutation(order)
            mapping[present] = order
    return maps


def _log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))


def generate_synthetic(
    output_dir: str | os.PathLike[str], options: SynthOptions, *, progress: bool | None = None
) -> dict[str, float]:
    """Write a planted synthetic dataset folder (same layout as the Criteo preprocessor's).

    Returns the recorded losses: ``optimal_test_log_loss`` (the hidden model's) and
    ``constant_test_log_loss`` (predicting the test base rate).
    """
    bounds = day_split(options.rows, 7)
    test_lo, test_hi = bounds["test"]
    train_hi = bounds["train"][1]
    test_labels, test_p = [], []
    disable = None if progress is None else not progress
    maps = None if options.numbering == "population" else _numbering_maps(options, disable)
    if maps is None:
        cardinalities = tuple(options.cardinalities)
    else:
        cardinalities = tuple(int(m.max()) + 1 for m in maps)
    counts = [np.zeros(card, dtype=np.int64) for card in cardinalities]
    with atomic_output_dir(output_dir) as tmp:
        num_features = len(options.cardinalities)
        writers = {
            name: SplitWriter(tmp / name, num_features, options.num_dense) for name in bounds
        }
        with tqdm(total=options.rows, unit="row", unit_scale=True, disable=disable,
                  desc="writing") as bar:  # fmt: skip
            for index, (lo, hi) in enumerate(_blocks(options.rows)):
                ids, dense, labels, p = _block(options, index, hi - lo)
                for f in range(num_features):
                    if maps is not None:
                        ids[:, f] = maps[f][ids[:, f]]
                    values, n = np.unique(ids[: max(0, train_hi - lo), f], return_counts=True)
                    counts[f][values] += n
                for name, (a, b) in bounds.items():
                    a, b = max(a, lo) - lo, min(b, hi) - lo
                    if b > a:
                        writers[name].append(ids[a:b], dense[a:b], labels[a:b])
                a, b = max(test_lo, lo) - lo, min(test_hi, hi) - lo
                if b > a:
                    test_labels.append(labels[a:b])
                    test_p.append(p[a:b])
                bar.update(hi - lo)
        for writer in writers.values():
            writer.close()
        y, p = np.concatenate(test_labels), np.concatenate(test_p)
        rate = float(y.mean())
        losses = {
            "optimal_test_log_loss": _log_loss(y, p),
            "constant_test_log_loss": _log_loss(y, np.full(len(y), rate)),
            "test_base_rate": rate,
        }
        write_category_counts(tmp, counts)
        DatasetMetadata(
            name="synthetic",
            feature_names=tuple(f"C{i + 1}" for i in range(num_features)),
            dense_names=tuple(f"I{j + 1}" for j in range(options.num_dense)),
            cardinalities=cardinalities,
            rows={name: writers[name].rows for name in ("train", "val", "test")},
            split_lines={name: bounds[name] for name in bounds},
            counts=True,
            hidden_model={
                "latent_dim": _LATENT_DIM,
                "bias": _BIAS,
                "terms": ["dense", "per-category weight", "pairwise latent dot products"],
                **losses,
            },
            options={
                "rows": options.rows,
                "cardinalities": list(options.cardinalities),
                "seed": options.seed,
                "zipf": options.zipf,
                "num_dense": options.num_dense,
                "numbering": options.numbering,
            },
        ).write(tmp)
    return losses
