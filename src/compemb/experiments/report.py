"""The markdown report and the console table of an experiment's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Results = dict[str, Any]


def _pm(entry: dict[str, Any], metric: str, digits: int = 4) -> str:
    return f"{entry[f'{metric}_mean']:.{digits}f} ± {entry[f'{metric}_std']:.{digits}f}"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n < 1e7 else f"{n / 1e6:.1f} MB"


def table_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """Header and rows: scheme, operation, parameters, compression, test loss, AUC (mean ± std),
    and where recorded the excess over a planted optimum, the embedding layer's bytes
    (parameters and id maps) and its table step time over the full tables'."""
    excess = results.get("optimum_test_logloss") is not None
    summary = results["summary"]
    # results of earlier versions lack the byte counts and step times
    memory = all("embedding_bytes" in e for e in summary)
    speed = all("table_step_vs_full" in e for e in summary)
    header = ["scheme", "operation", "optimizer", "parameters", "compression",
              "test log loss", "test AUC"]  # fmt: skip
    if excess:
        header.append("excess log loss")
    paired = all("paired_logloss_mean" in e for e in summary) and summary[0]["trials"] > 1
    if paired:
        header.append(f"vs {summary[0]['label']}, same seed")
    if memory:
        header.append("embedding memory")
    if speed:
        header.append("table step vs full")
    rows = []
    schemes = [" ".join([e["scheme"]]
                        + [f"{k}={e[key]}" for k, key in (("c", "collisions"), ("k", "k"),
                           ("t", "threshold"), ("h", "path_hidden"), ("init", "init"))
                           if e.get(key)])
               for e in results["summary"]]  # fmt: skip
    keys = [(scheme, e["operation"]) for scheme, e in zip(schemes, results["summary"], strict=True)]
    for e, scheme, key in zip(results["summary"], schemes, keys, strict=True):
        # fields the summary lacks (order, hot, a growing knob) tell them apart
        if keys.count(key) > 1 or scheme == e["scheme"]:
            scheme = e["label"]
        row = [scheme, e["operation"] or "-", e["optimizer"], f"{e['num_parameters']:,}",
               f"{e['compression']:.1f}x", _pm(e, "test_logloss"), _pm(e, "test_auc")]  # fmt: skip
        if excess:
            row.append(f"{e['excess_logloss_mean']:+.4f}")
        if paired:
            row.append(f"{e['paired_logloss_mean']:+.4f} ± {e['paired_logloss_std']:.4f} "
                       f"(median {e['paired_logloss_median']:+.4f})")
        if memory:
            row.append(_megabytes(e["embedding_bytes"]))
        if speed:
            row.append(f"{e['table_step_vs_full']:.2f}x")
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
    # results written before the setting ran at a rate held to the end
    decay = s.get("lr_decay", 0.0)
    schedule = (f"the learning rate decayed over the last {decay:.0%} of steps" if decay
                else "the learning rate held to the last step")  # fmt: skip
    lines += [
        f"Data {results['dataset']} (`{s['dataset']}`), {s['model'].upper()}, D = "
        f"{s['embedding_dim']} for every scheme (concat splits it among its tables), "
        f"optimizer {optimizer} unless a row names its own, default settings ({schedule}), "
        f"batch {s['batch_size']}, "
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
    first = results["summary"][0]
    if "paired_logloss_mean" in first and first["trials"] > 1:
        lines += [f"vs {first['label']}, same seed: test log loss minus the {first['label']} "
                  f"run's of the same seed, mean ± std and median over seeds (the seed's data "
                  f"order and dense init move every variant alike; the difference removes that).",
                  ""]
    if all("table_step_vs_full" in e for e in results["summary"]):
        lines += ["Table step vs full: the embedding layer's forward, backward and optimizer "
                  "update on the data's own batches, its time over the full tables' (median of "
                  "per-round ratios, variants interleaved, CPU time; above 1x is slower). "
                  "Embedding memory: the layer's parameters and id maps, in bytes.", ""]
    lines += [f"- {note}" for note in results["notes"]] + ([""] if results["notes"] else [])
    lines += [markdown_table(results), ""]
    lines += served_table(results)
    if plot:
        lines += [f"![{results['experiment']}]({Path(plot).name})", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def served_table(results: Results) -> list[str]:
    """Report lines on every variant served quantized (``--quantize``): embedding bytes, test
    log loss and its change from the same run in float32, per precision; none without."""
    precisions = list(results["settings"].get("quantize") or ())
    if not precisions:
        return []
    lines = ["## Served quantized", "",
             "The same trained runs served with their tables row-wise quantized (FBGEMM's "
             "inference formats; `compemb.serving`), no retraining: embedding bytes (tables "
             "with scales and biases, id maps, dense parts of the embedding layer), test log "
             "loss, and its change from the same run in float32 (mean ± std over trials). A "
             "dash: the precision refuses a table width of the variant.", "",
             "| variant | float32 bytes | " + " | ".join(
                 f"{p} bytes | {p} test loss | {p} change" for p in precisions) + " |",
             "|" + " --- |" * (2 + 3 * len(precisions))]
    for e in results["summary"]:
        cells = [e["label"], _megabytes(e["embedding_bytes"])]
        for p in precisions:
            key = f"served_{p}"
            if e.get(f"{key}_test_logloss_mean") is None:
                cells += ["-", "-", "-"]
                continue
            cells += [_megabytes(e[f"{key}_embedding_bytes"]), _pm(e, f"{key}_test_logloss"),
                      f"{e[f'{key}_logloss_change_mean']:+.5f} ± "
                      f"{e[f'{key}_logloss_change_std']:.5f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]
