"""One CCE reclustering at Criteo size: time per feature, total and peak memory.

Builds a CCE collection on the 26 Criteo Kaggle cardinalities (D = 16, c = 4), fitted by
``fit_budget`` to the full tables' parameters over ``--budget`` (10x: R = 280,696 rows per chunk
table; the features with 2R >= n keep their full tables and have nothing to recluster), marks
ids seen, and runs one ``recluster`` of every feature on one thread (``--threads``), as the
trainer does (``compemb.training.recluster.feature_seed``: train seed 0, step 1). Prints each
reclustered feature's CPU and wall time, the total, and the process's peak RSS before and after.

Seen ids (``--seen``): ``all`` marks every id (n per feature; 133 M (id, chunk) assignments at
10x, the most a reclustering can face: on Criteo Kaggle an id is in the vocabulary because some
day holds it); ``zipf`` marks the ids of ``--rows`` draws from a Zipf law of exponent
``--zipf-a`` over each feature's ids (a sample of training rows). The chunk tables hold their
init (uniform), not trained vectors: k-means' cost depends on the counts, its quality (not
measured here; tests/embeddings/test_embeddings_kmeans.py) on the vectors.

    nice .venv/bin/python benchmarks/cce_recluster.py [--budget 10x] [--seen all] \
        [--features 2 11] [--exact-rows 4096] [--max-queries 33554432]

Run it under ``/usr/bin/time -f %M`` for the peak RSS as the system counts it (kB).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from tqdm import tqdm

from compemb.data import CRITEO_KAGGLE_CARDINALITIES
from compemb.embeddings import EmbeddingSpec, fit_budget, make_embedding_bag
from compemb.embeddings.cce import CCEEmbeddingBag
from compemb.training.recluster import feature_seed


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _mark_seen(bag: CCEEmbeddingBag, how: str, rows: int, a: float, seed: int) -> None:
    n = bag.num_categories
    if how == "all":
        bag.seen.fill_(True)
        return
    # Zipf ranks wrap around at n; a seeded permutation spreads the frequent ids over the range
    ranks = np.random.default_rng(seed).zipf(a, rows) - 1
    ids = torch.from_numpy(ranks % n)
    bag.seen[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[ids]] = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="10x")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--seen", choices=("all", "zipf"), default="all")
    parser.add_argument("--rows", type=int, default=5_000_000, help="zipf: rows drawn")
    parser.add_argument("--zipf-a", type=float, default=1.1)
    parser.add_argument("--features", type=int, nargs="*",
                        help="recluster only these feature indices (0-25); default every one")
    parser.add_argument("--exact-rows", type=int, default=None,
                        help="kmeans_exact_rows (default: the scheme's)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="kmeans_max_queries (default: the scheme's)")
    parser.add_argument("--chunks-timed", type=int, default=None,
                        help="recluster only each feature's first K chunk tables (a partial "
                             "measurement, to extrapolate from); default all")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cards = list(CRITEO_KAGGLE_CARDINALITIES)
    overrides = {k: v for k, v in (("kmeans_exact_rows", args.exact_rows),
                                   ("kmeans_max_queries", args.max_queries)) if v is not None}
    spec = fit_budget(cards, 16, EmbeddingSpec("cce", rows=1, chunks=args.chunks, **overrides),
                      args.budget)
    s = spec.settings
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); 26 Criteo Kaggle "
          f"features, D = 16, cce {args.budget}: R = {s.rows}, c = {s.chunks}, k-means "
          f"{s.kmeans_iters} rounds, {s.kmeans_samples} points per centroid, exact up to "
          f"R = {s.kmeans_exact_rows}, tree path capped at {s.kmeans_max_queries:,} "
          f"assignments; seen: {args.seen}", flush=True)
    wanted = set(range(len(cards)) if args.features is None else args.features)
    t0 = time.perf_counter()
    bags: dict[int, CCEEmbeddingBag] = {}
    for f, n in enumerate(cards):
        if f not in wanted or 2 * s.rows >= n:  # kept full: nothing to recluster
            continue
        torch.manual_seed(f)
        bag = make_embedding_bag(n, 16, spec)
        _mark_seen(bag, args.seen, args.rows, args.zipf_a, seed=f)
        bags[f] = bag
    seen = {f: int(b.seen.sum()) for f, b in bags.items()}
    print(f"built {len(bags)} CCE features in {time.perf_counter() - t0:.1f} s; "
          f"{sum(seen.values()) * s.chunks:,} (id, chunk) assignments; peak RSS "
          f"{_peak_rss_mb():,.0f} MB", flush=True)

    total_cpu = total_wall = 0.0
    lines = []
    work = [(f, i) for f, bag in bags.items()
            for i in range(bag.chunks if args.chunks_timed is None else args.chunks_timed)]
    for f, i in tqdm(work, desc="recluster", unit="chunk"):
        bag = bags[f]
        c0, w0 = time.process_time(), time.perf_counter()
        # as bag.recluster(seed) does, one chunk at a time (one process: no seen ids to merge)
        bag.recluster_table(i, bag.tables[i], feature_seed(0, f, 1))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        total_cpu, total_wall = total_cpu + cpu, total_wall + wall
        lines.append(f"  C{f + 1:<3} chunk {i}  n = {bag.num_categories:>10,}  seen "
                     f"{seen[f]:>10,}  CPU {cpu:7.1f} s  wall {wall:7.1f} s")
        tqdm.write(lines[-1])
    print("one recluster of every CCE feature (the other features are full tables)"
          if args.chunks_timed is None else f"the first {args.chunks_timed} chunk(s) of each")
    print("\n".join(lines))
    print(f"  total CPU {total_cpu:.1f} s ({total_cpu / 60:.1f} min), wall {total_wall:.1f} s; "
          f"peak RSS {_peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
