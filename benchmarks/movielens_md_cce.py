"""MD with the reference's threshold, MD's projection bias and init, and CCE's reclustering
schedule on MovieLens-100k (issue 24, items 2, 3, 9 and 10).

DLRM, D = 16, Adagrad (lr 0.01), batch 128, one epoch, as the frontier's runs
(``compemb experiment frontier``: no validation during the run, the test split at the end);
only ``model.embedding`` and the reclustering settings change. Every variant is trained with
each seed; the table gives mean ± sample std of the test log loss and AUC, and the test log
loss minus the full tables' of the same seed (mean ± std over seeds).

    .venv/bin/python benchmarks/movielens_md_cce.py [--variants NAME ...] [--seeds 0 1 2 3 4]
        [--out runs/md-cce] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from compemb.config import config_from_dict
from compemb.data import open_dataset
from compemb.training import train

MD = {"scheme": "md", "alpha": 0.25}
# name -> (model.embedding, train fields of its own)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "full": ({"scheme": "full"}, {}),
    # the frontier's MD point at 4.4x, then the reference's threshold (widths over every
    # feature) against compemb's earlier planning (over the compressed features only)
    "md a=0.25": (MD, {}),
    "md a=0.25 t=200": ({**MD, "threshold": 200}, {}),
    "md a=0.25 t=200 compressed-only": ({**MD, "threshold": 200, "widths_over_all": False}, {}),
    "md a=0.5 t=200": ({**MD, "alpha": 0.5, "threshold": 200}, {}),
    "md a=0.5 t=200 compressed-only": ({**MD, "alpha": 0.5, "threshold": 200,
                                        "widths_over_all": False}, {}),
    # the projection's bias and init, apart and together
    "md a=0.25 bias": ({**MD, "bias": True}, {}),
    "md a=0.25 init=ldim": ({**MD, "init": "ldim"}, {}),
    "md a=0.25 init=ldim bias": ({**MD, "init": "ldim", "bias": True}, {}),
}
for rows in (120, 18):  # the frontier's CCE points at 4x and 16x
    cce = {"scheme": "cce", "rows": rows}
    VARIANTS.update({
        # the frontier's schedule before the authors': once, at step 500 of 625
        f"cce R={rows} every 500 to the end (earlier)": (cce, {"recluster_every": 500,
                                                              "recluster_until": 1.0}),
        f"cce R={rows} K=3 (default)": (cce, {}),
        f"cce R={rows} K=7": (cce, {"recluster_times": 7}),
        f"cce R={rows} K=1": (cce, {"recluster_times": 1}),
        f"cce R={rows} never": (cce, {"recluster_every": 0}),
    })  # fmt: skip


def run(name: str, seed: int, out: Path, dataset: object) -> dict:
    embedding, own = VARIANTS[name]
    raw = {"data": {"dataset": "movielens"},
           "model": {"name": "dlrm", "embedding_dim": 16, "embedding": embedding},
           "train": {"optimizer": "adagrad", "seed": seed, "batch_size": 128, "epochs": 1,
                     "eval_every": 0, "checkpoint_every": 10**9, **own}}  # fmt: skip
    config = config_from_dict(raw, f"movielens_md_cce {name}")
    folder = out / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}-s{seed}"
    if (folder / "final.json").is_file():
        return json.loads((folder / "final.json").read_text())
    resume = (folder / "config.yaml").is_file()  # an interrupted run starts again
    final = train(config, folder, resume=resume, dataset=dataset, progress=False)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return final


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("runs/md-cce"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dataset = open_dataset("movielens")
    names = ["full", *(n for n in args.variants if n != "full")]
    full = [run("full", s, args.out, dataset)["test_logloss"] for s in args.seeds]
    print("| variant | embedding parameters | test log loss | test AUC | vs full, same seed |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = []
    for name in names:
        finals = [run(name, s, args.out, dataset) for s in args.seeds]
        losses = [f["test_logloss"] for f in finals]
        aucs = [f["test_auc"] for f in finals]
        diffs = [a - b for a, b in zip(losses, full, strict=True)]
        rows.append({"variant": name, "embedding_parameters": finals[0]["embedding_parameters"],
                     "test_logloss": losses, "test_auc": aucs, "vs_full": diffs})
        print(f"| {name} | {finals[0]['embedding_parameters']:,} | {_mean_std(losses)} | "
              f"{_mean_std(aucs)} | {statistics.mean(diffs):+.4f} ± "
              f"{statistics.stdev(diffs) if len(diffs) > 1 else 0:.4f} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
