"""The memory-versus-loss frontier: every scheme over a range of embedding-parameter budgets.

Each :class:`Line` is one line of the plot: fixed model fields and a knob (by default the
registered scheme's own, :attr:`compemb.scheme.Scheme.knob`; ``k`` for mixed radix) that sets
its size. For every target compression of :data:`TARGET_COMPRESSIONS` (the full
tables' embedding parameters over the scheme's, about 2x to 1000x) the knob value whose
compression on the data's cardinalities comes nearest is trained, if it lands within a factor
:data:`~compemb.embeddings.budget.TOLERANCE` of the target (the factor a config's budget
must be reached within); a scheme that cannot reach a target (QR saturates near
``c = sqrt(n)``, mixed radix only has a few sizes, small features keep full tables) skips it,
and the report says so. Sizes are counted on the meta device with the library's own modules,
so they are the trained models' sizes.

A new line is one more entry of :data:`FRONTIER_SCHEMES`. The frequency-aware ones are there:
ids renumbered by training frequency before partitioning (``order``), and ``hot`` private rows
for each feature's most frequent categories with the tail composed (or hashed); for those the
library's :func:`~compemb.embeddings.budget.fit_budget` splits each target's budget between hot
rows and collisions (``hot_share``). So are the methods users compare compositional embeddings
with (mixed dimensions, TT-Rec, ROBE, DHE, ...): their knobs grow the tables (a width, a rank, an
array's size), and ``fit_budget`` sets them to each target's budget.

>>> exp = build_frontier((943, 1682, 61, 2, 21, 795, 72, 19), targets=(2, 4))
>>> [v.label for v in exp.variants][:4]
['full', 'hash c=2', 'hash c=4', 'qr concat c=2']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from compemb.embeddings.budget import TOLERANCE, fit_budget
from compemb.embeddings.budget import embedding_parameters as _collection_parameters
from compemb.experiments.variants import Experiment, Variant
from compemb.scheme import SCHEMES
from compemb.spec import EmbeddingSpec

TARGET_COMPRESSIONS = (2, 4, 16, 60, 250, 1000)
_VARIANT_FIELDS = {f.name for f in fields(Variant)}


@dataclass(frozen=True)
class Line:
    """One line of the frontier: a scheme with some settings fixed.

    Attributes:
        series: its legend entry.
        fields: fixed ``ModelConfig`` fields (scheme, operation, path_hidden, ...).
        knob: the setting that sets the size; None: the registered scheme's knob.
        values: the knob's candidate values; None: collisions from 2 upward, four per octave
            (or, for a knob that grows the tables, the value ``fit_budget`` picks per target).
        mirrored: collisions past the square root of the largest cardinality only mirror smaller
            ones (QR's quotient and remainder swap roles; concat then reaches 2x with a
            3-row quotient table), so candidates stop there; False for the hashing trick.
        hot_share: the share of each target's budget spent on ``hot`` private rows; the
            library's ``fit_budget`` then picks hot and collisions (the knob is not searched).
        train: fixed ``TrainConfig`` fields the scheme needs (none of the built-in lines:
            CCE reclusters on the default schedule).
    """

    series: str
    fields: tuple[tuple[str, Any], ...]
    knob: str | None = None
    values: tuple[float, ...] | None = None
    mirrored: bool = True
    hot_share: float | None = None
    train: tuple[tuple[str, Any], ...] = ()

    @property
    def setting(self) -> str:
        """The knob's name."""
        return self.knob or SCHEMES.lookup(dict(self.fields)["scheme"]).knob

    @property
    def fitted(self) -> bool:
        """Sized by ``fit_budget`` per target (hot rows, or a knob that grows the tables)
        rather than by picking among candidate values."""
        return self.hot_share is not None or (
            self.values is None and SCHEMES.lookup(dict(self.fields)["scheme"]).knob_grows)


FRONTIER_SCHEMES: tuple[Line, ...] = (
    Line("hash", (("scheme", "hash"),), mirrored=False),
    Line("qr concat", (("scheme", "qr"), ("operation", "concat"))),
    Line("qr add", (("scheme", "qr"), ("operation", "add"))),
    Line("qr mult", (("scheme", "qr"), ("operation", "mult"))),
    Line("mixed radix mult", (("scheme", "mixed_radix"), ("operation", "mult")), "k",
           (2, 3, 4, 5)),
    Line("crt mult", (("scheme", "crt"), ("operation", "mult"))),
    # table1 found the path loss flat in the hidden size: the smallest MLPs make its frontier.
    Line("path h=16", (("scheme", "path"), ("path_hidden", 16))),
    Line("feature", (("scheme", "feature"),)),
    # Frequency-aware: renumbered by training frequency (contiguous ranks, or interleaved so the
    # most frequent categories land in different rows), and hot rows + a composed or hashed tail.
    Line("qr mult freq", (("scheme", "qr"), ("operation", "mult"), ("order", "frequency"))),
    Line("qr mult interleaved",
           (("scheme", "qr"), ("operation", "mult"), ("order", "interleaved"))),
    Line("qr mult hot", (("scheme", "qr"), ("operation", "mult")), hot_share=0.2),
    Line("hash hot", (("scheme", "hash"),), hot_share=0.2),
    # The methods compared with: knobs that grow the tables, fitted to each budget.
    # MD's widths are at least 1, so it compresses at most D-fold; d0 = D (the reference's) for
    # the smallest feature, and alpha (the power rule's exponent) sets the size.
    Line("md", (("scheme", "md"),), "alpha",
         (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)),
    # Block MD (widths falling over frequency blocks inside a feature) and MD + QR (private
    # head rows, a QR-composed tail at the MD rule's width) rank ids by training frequency.
    Line("md block", (("scheme", "md_block"), ("order", "frequency")), "alpha",
         (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0)),
    Line("md+qr", (("scheme", "md_qr"), ("order", "frequency"))),
    Line("tt", (("scheme", "tt"),)),
    Line("robe", (("scheme", "robe"),)),
    # ROBE as compemb had it before ROBE-Z: an array per feature, block-aligned offsets, every
    # feature given its array (the earlier "robe" points)
    Line("robe per feature", (("scheme", "robe"), ("shared", False), ("aligned", True),
                              ("cap_at_full", False))),
    # ROBE-Z's one array with block-aligned offsets: which of the two changes matters
    Line("robe aligned", (("scheme", "robe"), ("aligned", True))),
    Line("dhe", (("scheme", "dhe"),)),
    # CCE reclusters on the run's default schedule (compemb.training.recluster): in a
    # one-epoch run, train.recluster_times evenly up to 75 % of its steps.
    Line("cce", (("scheme", "cce"),)),
)


@dataclass(frozen=True)
class FrontierVariant(Variant):
    """A :class:`Variant` with embedding fields of its own beyond Variant's (``k``, ...).

    Attributes:
        extra: ``(field, value)`` pairs added to the ``EmbeddingSpec``.
        tag: what the label adds to Variant's (``k=3``, ``hot=120``).
        train: ``(field, value)`` pairs added to the ``TrainConfig``.
    """

    extra: tuple[tuple[str, Any], ...] = ()
    tag: str = ""
    train: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return f"{super().label} {self.tag}" if self.tag else super().label

    def model_fields(self) -> dict[str, object]:
        return {**super().model_fields(), **dict(self.extra)}

    def train_fields(self) -> dict[str, object]:
        return dict(self.train)


def make_variant(
    scheme: Line, value: float | None, x: float | None = None, **more: Any
) -> FrontierVariant:
    """The variant of ``scheme`` with its knob at ``value`` (None: the scheme as it stands) and
    the fields ``more`` (``hot=...``) set."""
    given = dict(scheme.fields)
    if value is not None:
        given[scheme.setting] = value
    given.update(more)
    own = {k: v for k, v in given.items() if k in _VARIANT_FIELDS}
    extra = tuple((k, v) for k, v in given.items() if k not in _VARIANT_FIELDS)
    shown = ([f"{scheme.setting}={value}"] if value is not None and scheme.setting not in own
             else [])
    tag = " ".join(shown + [f"{k}={v}" for k, v in more.items()])
    return FrontierVariant(scheme.series, x=x, extra=extra, tag=tag, train=scheme.train, **own)


@cache
def _parameters(cardinalities: tuple[int, ...], embedding_dim: int, spec: EmbeddingSpec) -> int:
    return _collection_parameters(cardinalities, embedding_dim, spec)


def embedding_parameters(
    variant: Variant, cardinalities: Sequence[int], embedding_dim: int = 16
) -> int:
    """Embedding parameters of ``variant`` over features of ``cardinalities`` (meta device)."""
    spec = EmbeddingSpec(**variant.model_fields())  # type: ignore[arg-type]
    return _parameters(tuple(cardinalities), embedding_dim, spec)


def collision_candidates(cardinalities: Sequence[int], mirrored: bool = False) -> tuple[int, ...]:
    """2, 3, 4, 5, 6, 7, 8, 10, ... (four per octave) while below half the largest feature
    (``mirrored``: up to its square root, rounded up)."""
    largest = max(cardinalities)
    top = math.isqrt(largest - 1) + 1 if mirrored else largest // 2
    steps = int(4 * math.log2(max(top, 2) / 2)) + 1
    return tuple(sorted({c for i in range(steps) if 2 <= (c := round(2 * 2 ** (i / 4))) <= top}))


def pick_values(
    scheme: Line,
    cardinalities: Sequence[int],
    targets: Sequence[float] = TARGET_COMPRESSIONS,
    embedding_dim: int = 16,
) -> dict[float, tuple[float, float]]:
    """Per reachable target: the knob value nearest it (in log compression) and its compression.

    With ``scheme.hot_share`` use :func:`fitted_variants` instead."""
    full = sum(cardinalities) * embedding_dim
    values = scheme.values or collision_candidates(cardinalities, scheme.mirrored)
    sizes = {}
    for value in values:
        try:
            sizes[value] = full / embedding_parameters(
                make_variant(scheme, value), cardinalities, embedding_dim
            )
        except ValueError:  # a size the scheme refuses for these cardinalities
            continue
    picked: dict[float, tuple[float, float]] = {}
    for target in targets:
        if not sizes:
            break
        value = min(sizes, key=lambda v: (abs(math.log(sizes[v] / target)), v))
        if abs(math.log(sizes[value] / target)) <= math.log(TOLERANCE):
            picked[target] = (value, sizes[value])
    return picked


def fitted_variants(
    scheme: Line,
    cardinalities: Sequence[int],
    targets: Sequence[float] = TARGET_COMPRESSIONS,
    embedding_dim: int = 16,
) -> dict[float, tuple[FrontierVariant, float]]:
    """Per reachable target: the variant whose knob (and hot rows) ``fit_budget`` picks for the
    target's budget (``scheme.hot_share`` of it in hot rows, if given), and its compression."""
    full = sum(cardinalities) * embedding_dim
    owner = SCHEMES.lookup(dict(scheme.fields)["scheme"])
    start = make_variant(scheme, owner.knob_placeholder(dict(scheme.fields)))
    base = EmbeddingSpec(**start.model_fields())  # type: ignore[arg-type]
    out: dict[float, tuple[FrontierVariant, float]] = {}
    for target in targets:
        try:
            spec = fit_budget(cardinalities, embedding_dim, base, int(full / target),
                              hot_share=scheme.hot_share)  # fmt: skip
        except ValueError:  # the budget is below the scheme's smallest embedding
            continue
        hot = {"hot": spec.hot} if scheme.hot_share is not None else {}
        variant = make_variant(scheme, getattr(spec, scheme.setting), x=target, **hot)
        compression = full / embedding_parameters(variant, cardinalities, embedding_dim)
        if abs(math.log(compression / target)) <= math.log(TOLERANCE):
            out[target] = (variant, compression)
    return out


def select_lines(names: Sequence[str] | None) -> tuple[Line, ...]:
    """The lines of :data:`FRONTIER_SCHEMES` named (by series), in that order; None: all."""
    if names is None:
        return FRONTIER_SCHEMES
    by_series = {line.series: line for line in FRONTIER_SCHEMES}
    unknown = [n for n in names if n not in by_series]
    if unknown:
        raise ValueError(f"no frontier line {', '.join(map(repr, unknown))}; the lines: "
                         f"{', '.join(repr(s) for s in by_series)}")
    return tuple(by_series[n] for n in names)


def sized_variants(
    scheme: Line,
    cardinalities: Sequence[int],
    targets: Sequence[float] = TARGET_COMPRESSIONS,
    embedding_dim: int = 16,
) -> dict[float, tuple[FrontierVariant, float]]:
    """Per reachable target: the variant of ``scheme`` sized to it and its compression
    (:func:`fitted_variants` for a fitted line, else :func:`pick_values`' nearest candidate)."""
    if scheme.fitted:
        return fitted_variants(scheme, cardinalities, targets, embedding_dim)
    return {t: (make_variant(scheme, value, x=t), c)
            for t, (value, c) in pick_values(scheme, cardinalities, targets,
                                             embedding_dim).items()}  # fmt: skip


def place_lines(
    cardinalities: Sequence[int],
    schemes: Sequence[Line],
    targets: Sequence[float],
    embedding_dim: int = 16,
) -> tuple[list[FrontierVariant], list[str]]:
    """Every line of ``schemes`` at every target it reaches (a knob value picked twice is
    trained once), and a note per line on the targets it cannot reach."""
    if not targets or any(not t > 1 for t in targets):
        raise ValueError(f"target compressions must be > 1, got {list(targets)}")
    variants: list[FrontierVariant] = []
    notes = []
    for scheme in schemes:
        picked = sized_variants(scheme, cardinalities, targets, embedding_dim)
        seen = set()
        for variant, _ in picked.values():
            if variant.label not in seen:
                seen.add(variant.label)
                variants.append(variant)
        missed = [t for t in targets if t not in picked]
        if missed:
            reach = ", ".join(f"{c:.1f}x" for c in sorted(c for _, c in picked.values()))
            notes.append(f"{scheme.series}: no {scheme.setting} within {TOLERANCE}x of "
                         f"{', '.join(f'{t:g}x' for t in missed)} on these cardinalities "
                         f"(reached: {reach or 'none'})")  # fmt: skip
    return variants, notes


def build_frontier(
    cardinalities: Sequence[int],
    schemes: Sequence[Line] = FRONTIER_SCHEMES,
    targets: Sequence[float] = TARGET_COMPRESSIONS,
    embedding_dim: int = 16,
) -> Experiment:
    """The frontier grid for data of ``cardinalities``: the full table, then every scheme at
    every target compression it can reach (:func:`place_lines`)."""
    variants, notes = place_lines(cardinalities, schemes, targets, embedding_dim)
    return Experiment(
        "frontier",
        "test loss against embedding parameters, every scheme",
        (Variant("full", "full"), *variants),
        "frontier",
        "embedding parameters",
        notes=tuple(notes),
        speed=True,
    )
