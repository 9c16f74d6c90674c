"""Plots drawn like the paper's figures: a mean with a one-std band or error bars per series.

Every function takes the ``results`` dict of :func:`compemb.experiments.runner.run_experiment`
and writes one PNG (matplotlib's Agg backend: no display needed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

Results = dict[str, Any]
_COLORS = plt.get_cmap("tab20")  # more series than the default cycle's 10 stay apart


def _series(results: Results) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in results["summary"]:
        groups.setdefault(entry["series"], []).append(entry)
    return groups


def _full_line(ax: Axes, entry: dict[str, Any], key: str) -> None:
    """The full-table baseline as a horizontal line with its one-std band."""
    mean = entry[f"{key}_mean"] if f"{key}_mean" in entry else entry[key]
    std = entry.get(f"{key}_std", 0.0)
    ax.axhline(mean, color="black", linestyle="--", linewidth=1, label="full table")
    if std:
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.1)


def _curve(ax: Axes, results: Results) -> None:
    for label, curve in results["curves"].items():
        steps, mean, std = curve["steps"], curve["mean"], curve["std"]
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.25)  # fmt: skip
    ax.set_ylabel("validation log loss")


def _legend(series: str, entries: list[dict[str, Any]]) -> str:
    """The series' name; a one-point series whose label says more (a fitted knob: ``robe
    size=14380``) is named by that label and the compression it reached."""
    only = entries[0]
    if len(entries) > 1 or only["label"] == series:
        return series
    return f"{only['label']} ({only['compression']:.1f}x)"


def _against(x_key: str, y_key: str, log_x: bool, log_y: bool) -> Callable[[Axes, Results], None]:
    """Per series, ``y_key`` (mean, with std error bars) against ``x_key``; full as a line."""

    def draw(ax: Axes, results: Results) -> None:
        for i, (series, entries) in enumerate(_series(results).items()):
            if series == "full":
                if x_key not in ("num_parameters", "embedding_parameters"):
                    _full_line(ax, entries[0], y_key)
                    continue
            entries = sorted(entries, key=lambda e: e[x_key])
            xs = [e[x_key] for e in entries]
            ys = [e[f"{y_key}_mean"] if f"{y_key}_mean" in e else e[y_key] for e in entries]
            errs = [e.get(f"{y_key}_std", 0.0) for e in entries]
            own = {"marker": "os^vDP"[i % 6], "color": _COLORS(i % 20)}
            style = {"marker": "*", "color": "black", "linestyle": "none", "markersize": 12} \
                if series == "full" else own  # fmt: skip
            ax.errorbar(xs, ys, yerr=errs, capsize=3, label=_legend(series, entries), **style)
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel({"test_logloss": "test log loss",
                       "num_parameters": "number of parameters"}[y_key])  # fmt: skip

    return draw


def _bars(ax: Axes, results: Results) -> None:
    entries = results["summary"]
    labels = [e["label"] for e in entries]
    ax.errorbar([e["test_logloss_mean"] for e in entries], range(len(entries)),
                xerr=[e["test_logloss_std"] for e in entries], fmt="o", capsize=3)  # fmt: skip
    ax.set_yticks(range(len(entries)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_ylabel("variant")


_DRAW: dict[str, Callable[[Axes, Results], None]] = {
    "curve": _curve,
    "params": _against("num_parameters", "test_logloss", log_x=True, log_y=False),
    "embedding_params": _against("embedding_parameters", "test_logloss", log_x=True, log_y=False),
    "threshold": _against("x", "test_logloss", log_x=True, log_y=False),
    "threshold_params": _against("x", "num_parameters", log_x=True, log_y=True),
    "hidden": _against("x", "test_logloss", log_x=True, log_y=False),
    "bars": _bars,
}


_FRONTIER_X = (("embedding_parameters", "embedding parameters"),
               ("embedding_bytes", "embedding memory (bytes: parameters and id maps)"),
               ("table_step_vs_full", "table step time / full tables'"))


def _served_points(ax: Axes, summary: list[dict[str, Any]], paired: bool,
                   optimum: float | None, precisions: list[str] | None) -> None:
    """Every variant served quantized (``--quantize``): at its quantized bytes, its float
    point moved by the mean change the quantization made to its runs' test loss."""
    for p, marker in zip(precisions or (), "1x+", strict=False):
        points = [(e[f"served_{p}_embedding_bytes"],
                   (e["paired_logloss_median"] if paired
                    else e["test_logloss_mean"] - (optimum or 0.0))
                   + e[f"served_{p}_logloss_change_mean"])
                  for e in summary if e.get(f"served_{p}_logloss_change_mean") is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, linestyle="none", marker=marker, color="dimgray", markersize=7,
                    label=f"any variant served in {p}")


def _frontier_figure(results: Results) -> Figure:
    """The frontier on three axes: loss against parameters, bytes, and table step time (the
    last only where measured). With several seeds the loss is each run's minus the full tables'
    at the same seed (median, bars to min and max); otherwise the test loss (its excess over the
    planted optimum where there is one)."""
    summary = results["summary"]
    axes_x = [x for x in _FRONTIER_X if all(x[0] in e for e in summary)]
    optimum = results.get("optimum_test_logloss")
    # with several seeds, each run against the full tables' of its seed (runner.aggregate)
    paired = summary[0]["trials"] > 1 and all("paired_logloss_median" in e for e in summary)
    fig, axes = plt.subplots(1, len(axes_x), figsize=(5 * len(axes_x) + 2.5, 5), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, (key, label) in zip(axes[0], axes_x, strict=True):
        for i, (series, entries) in enumerate(_series(results).items()):
            entries = sorted(entries, key=lambda e: e[key])
            if paired:  # the median seed, bars to the best and worst (a stalled run shows)
                ys = [e["paired_logloss_median"] for e in entries]
                errs = [[y - e["paired_logloss_min"] for y, e in zip(ys, entries, strict=True)],
                        [e["paired_logloss_max"] - y for y, e in zip(ys, entries, strict=True)]]
            else:
                ys = [e["test_logloss_mean"] - (optimum or 0.0) for e in entries]
                errs = [e["test_logloss_std"] for e in entries]
            style = ({"marker": "*", "color": "black", "linestyle": "none", "markersize": 12}
                     if series == "full" else
                     {"marker": "os^vDP<>"[i % 8], "color": _COLORS(i % 20)})  # fmt: skip
            if key == "table_step_vs_full":  # the budgets' points, not a curve in speed
                style["linestyle"] = "none"
            ax.errorbar([e[key] for e in entries], ys,
                        yerr=errs, capsize=3,
                        label=series, **style)  # fmt: skip
        if key == "embedding_bytes":
            _served_points(ax, summary, paired, optimum, results["settings"].get("quantize"))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        if key == "table_step_vs_full":
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(
        "test log loss minus the full tables' (same seed):\nmedian over seeds, bars to min and max"
        if paired
        else "excess test log loss over the planted optimum" if optimum is not None
        else "test log loss")  # fmt: skip
    settings, full = results["settings"], summary[0]
    where = (f"; full tables {full['test_logloss_mean'] - optimum:+.4f} over the planted "
             f"optimum" if optimum is not None else "")
    spread = "median, min and max" if paired else "mean ± 1 std"
    fig.suptitle(f"{results['title']}\n{results['dataset']}, {settings['model'].upper()}, "
                 f"{settings['trials']} trial(s): {spread}{where}", fontsize=10)  # fmt: skip
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def figure_for(results: Results) -> Figure:
    """A figure of ``results`` drawn the way its experiment asks (``results["plot"]``)."""
    plot = results["plot"]
    if plot == "frontier":
        return _frontier_figure(results)
    if plot not in _DRAW:
        raise ValueError(f"unknown plot kind {plot!r}; valid: {', '.join([*_DRAW, 'frontier'])}")
    height = 0.25 * len(results["summary"]) + 1.5 if plot == "bars" else 4.5
    fig, ax = plt.subplots(figsize=(7, height))
    _DRAW[plot](ax, results)
    ax.set_xlabel(results["x_label"])
    settings = results["settings"]
    ax.set_title(f"{results['title']}\n{results['dataset']}, {settings['model'].upper()}, "
                 f"{settings['trials']} trial(s): mean ± 1 std", fontsize=9)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    if plot != "bars":
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_results(results: Results, path: str | Path) -> Path:
    """Write :func:`figure_for` ``(results)`` to the PNG ``path``."""
    fig = figure_for(results)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
