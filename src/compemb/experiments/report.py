"""The markdown report and the console table of an experiment's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Results = dict[str, Any]


def _pm(entry: dict[str, Any], metric: str, digits: int = 4) -> str:
    return f"{entry[f'{metric}_mean']:.{digits}f} ± {entry[f'{metric}_std']:.{digits}f}"


def table_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """Header and rows: scheme, operation, parameters, compression, test loss, AUC (mean ± std)."""
    excess = results.get("optimum_test_logloss") is not None
    header = ["scheme", "operation", "optimizer", "parameters", "compression",
              "test log loss", "test AUC"]  # fmt: skip
    if excess:
        header.append("excess log loss")
    rows = []
    schemes = [" ".join([e["scheme"]]
                        + [f"{k}={e[key]}" for k, key in (("c", "collisions"), ("k", "k"),
                           ("t", "threshold"), ("h", "path_hidden"), ("init", "init"))
                           if e.get(key)])
               for e in results["summary"]]  # fmt: skip
    keys = [(scheme, e["operation"]) for scheme, e in zip(schemes, results["summary"], strict=True)]
    for e, scheme, key in zip(results["summary"], schemes, keys, strict=True):
        if keys.count(key) > 1:  # fields the summary lacks (order, hot) tell them apart
            scheme = e["label"]
        row = [scheme, e["operation"] or "-", e["optimizer"], f"{e['num_parameters']:,}",
               f"{e['compression']:.1f}x", _pm(e, "test_logloss"), _pm(e, "test_auc")]  # fmt: skip
        if excess:
            row.append(f"{e['excess_logloss_mean']:+.4f}")
        rows.append(row)
    return header, rows


def format_table(results: Results) -> str:
    """Aligned plain-text table for the console."""
    header, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    """The same table in markdown."""
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + " |"]  # fmt: skip
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    results: Results, folder: str | Path, plot: str | None = None, command: str | None = None
) -> Path:
    """``report.md`` in ``folder``: settings, the table, the plot and the grid notes."""
    folder = Path(folder)
    s = results["settings"]
    lines = [f"# {results['experiment']}: {results['title']}", ""]
    if command:
        lines += ["```", command, "```", ""]
    optimizer = s["optimizer"] + (" (the better one per operation: see `grids.AUTO_OPTIMIZER`)"
                                  if s["optimizer"] == "auto" else "")  # fmt: skip
    train_seconds = sum(r["train_seconds"] for r in results["trials"])
    steps = f", at most {s['max_steps']} steps" if s["max_steps"] else ""
    lines += [
        f"Data {results['dataset']} (`{s['dataset']}`), {s['model'].upper()}, D = "
        f"{s['embedding_dim']} for every scheme (concat splits it among its tables), "
        f"optimizer {optimizer} unless a row names its own, default settings, batch "
        f"{s['batch_size']}, "
        f"{s['epochs']} epoch(s){steps}, {s['trials']} trial(s) per row (seeds "
        f"{s['first_seed']}..{s['first_seed'] + s['trials'] - 1}); mean ± one sample std over "
        f"trials. Parameters count the whole model; compression is the full tables' embedding "
        f"parameters over the variant's. {len(results['trials'])} runs, "
        f"{train_seconds:.0f} s of training in all; this invocation took "
        f"{results['seconds']:.0f} s of wall time (finished runs are read, not repeated).",
        "",
    ]
    if results.get("optimum_test_logloss") is not None:
        lines += [f"The planted model's test log loss is {results['optimum_test_logloss']:.5f}; "
                  f"excess log loss = test log loss minus that optimum.", ""]  # fmt: skip
    lines += [f"- {note}" for note in results["notes"]] + ([""] if results["notes"] else [])
    lines += [markdown_table(results), ""]
    if plot:
        lines += [f"![{results['experiment']}]({Path(plot).name})", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
