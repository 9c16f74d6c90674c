"""The units of an experiment: a :class:`Variant` (one model, trained once per trial) and an
:class:`Experiment` (a named grid of them and how to plot it)."""

from __future__ import annotations

from dataclasses import dataclass

from compemb.scheme import SCHEMES

__all__ = ["Experiment", "Variant"]


@dataclass(frozen=True)
class Variant:
    """One model of a grid, trained once per trial.

    Attributes:
        series: the legend entry it belongs to ("qr mult", "hash", "full").
        scheme, operation, collisions, threshold, path_hidden: its ``EmbeddingSpec`` fields
            (of them, the settings its scheme has).
        x: its coordinate on the plot's x axis (collisions, threshold or hidden units).
        optimizer: adagrad or amsgrad; None takes the experiment's choice.
        init: an init rule of :data:`compemb.operations.INIT_RULES` (the spec's ``init``);
            None is the library's default.
    """

    series: str
    scheme: str
    operation: str = "mult"
    collisions: int | None = None
    threshold: int = 0
    path_hidden: int = 64
    x: float | None = None
    optimizer: str | None = None
    init: str | None = None

    @property
    def label(self) -> str:
        """Short unique description, e.g. ``qr mult c=4 t=200``."""
        parts = [self.series]
        if self.collisions is not None:
            parts.append(f"c={self.collisions}")
        if self.threshold:
            parts.append(f"t={self.threshold}")
        if "path_hidden" in self._own() and "h=" not in self.series:
            parts.append(f"h={self.path_hidden}")
        if self.optimizer:
            parts.append(self.optimizer)
        if self.init:
            parts.append(f"init={self.init}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return self.label.replace(" ", "-").replace("=", "")

    def _own(self) -> tuple[str, ...]:
        return SCHEMES.lookup(self.scheme).setting_names()

    def model_fields(self) -> dict[str, object]:
        """Its ``EmbeddingSpec`` fields (those its scheme has): the config's ``model.embedding``
        section."""
        fields: dict[str, object] = {"scheme": self.scheme, "threshold": self.threshold}
        fields.update({name: getattr(self, name) for name in ("operation", "collisions",
                                                              "path_hidden")
                       if name in self._own()})  # fmt: skip
        if self.init is not None:
            fields["init"] = self.init
        return fields

    def train_fields(self) -> dict[str, object]:
        """``TrainConfig`` fields of its own (the experiment's settings give the rest)."""
        return {}


@dataclass(frozen=True)
class Experiment:
    """A named grid and how to show it.

    Attributes:
        name: one of ``compemb.experiments.grids.EXPERIMENTS``.
        title: one line for plots and reports.
        variants: the models to train.
        plot: curve (val loss vs iterations), params (test loss vs parameters), threshold
            (test loss vs threshold), threshold_params (parameters vs threshold), hidden
            (test loss vs hidden units), bars (test loss per variant) or frontier (test loss vs
            embedding parameters, bytes and table step time).
        x_label: the x axis' name.
        curves: record the validation curve (about 25 points per run).
        notes: how the grid was adapted to the data, for the report.
        speed: also time each variant's table step against the grid's first variant's (the
            full tables; :mod:`compemb.experiments.speed`).
    """

    name: str
    title: str
    variants: tuple[Variant, ...]
    plot: str
    x_label: str
    curves: bool = False
    notes: tuple[str, ...] = ()
    speed: bool = False
