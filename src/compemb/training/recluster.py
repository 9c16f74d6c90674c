"""When a run reclusters (CCE's k-means), and reclustering the features that can.

The CCE authors' schedule (github.com/thomasahle/cce, ``examples/movielens.py``): recluster at
the end of each epoch until a cut-off, ``int(0.75 * epochs)`` epochs (``--last-cluster``), and
never after, so the model trains its last quarter on a fixed assignment. Their runs are many
epochs long (10 by default: 7 reclusterings); a run whose first epoch ends after the cut-off (one
epoch of DLRM) would never recluster under that rule, so it gets ``times`` reclusterings spaced
evenly up to the cut-off instead. :func:`recluster_steps` states both; the schedule is a function
of the run's config and its data's length alone, so a resumed run reclusters where the
uninterrupted one did.

Each feature's k-means draws from a seed of (train seed, feature index, step)
(:func:`feature_seed`): a feature reclusters alike whatever the other features are embedded by.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["feature_seed", "recluster_local", "recluster_steps"]


def recluster_steps(total_steps: int, steps_per_epoch: int, *, every: int | None = None,
                    until: float = 0.75, times: int = 3) -> tuple[int, ...]:
    """The steps after which a run of ``total_steps`` reclusters, in order.

    The cut-off is step C = floor(``until`` x ``total_steps``); no step after it reclusters,
    nor the last step (its model would be evaluated with no training after the rewrite).

    Args:
        total_steps: T, the run's optimizer steps (``train.max_steps`` included).
        steps_per_epoch: S, steps of one epoch.
        every: None: at the end of each epoch (steps e S) up to the cut-off, the authors'
            schedule (with T = E S that is the ends of epochs 1 .. floor(until E), as their
            ``int(0.75 * epochs)``); where no epoch ends by then, ``times`` steps
            floor(j C / times), j = 1 .. times. N > 0: every N steps up to the cut-off.
            0: never.
        until: the cut-off, a share of the run in (0, 1].
        times: K, reclusterings of a run whose first epoch ends after the cut-off.

    >>> recluster_steps(50, 5)  # 10 epochs of 5 steps: the ends of epochs 1 .. 7
    (5, 10, 15, 20, 25, 30, 35)
    >>> recluster_steps(625, 625)  # one epoch: 3 spread over its first 468 steps
    (156, 312, 468)
    >>> recluster_steps(12, 100, every=4, until=1.0)  # never the last step
    (4, 8)
    """
    if every == 0 or total_steps < 2:
        return ()
    cut = math.floor(until * total_steps)
    last = min(cut, total_steps - 1)
    if every is not None:
        return tuple(range(every, last + 1, every))
    ends = tuple(range(steps_per_epoch, last + 1, steps_per_epoch))
    if ends:
        return ends
    return tuple(sorted({s for j in range(1, times + 1) if 0 < (s := j * cut // times) <= last}))


def feature_seed(seed: int, feature: int, step: int) -> int:
    """The seed of feature ``feature``'s reclustering after step ``step`` of a run seeded
    ``seed``.

    >>> feature_seed(0, 3, 100) == feature_seed(0, 3, 100) != feature_seed(0, 4, 100)
    True
    """
    return int(np.random.SeedSequence([seed, feature, step]).generate_state(1)[0])


def recluster_local(arch: nn.Module, seed: int, step: int,
                    all_reduce: Callable[[torch.Tensor], None] | None = None) -> None:
    """Recluster every feature of a local collection (``EmbeddingBagCollection``) whose scheme
    ``reclusters``, each seeded by :func:`feature_seed`. ``all_reduce`` sums a tensor over the
    ranks in place (replicated runs: the ranks' seen ids are merged first)."""
    for f, plan in enumerate(arch.plans):
        if plan.scheme.reclusters:
            arch.reclusterer(f).recluster(feature_seed(seed, f, step), all_reduce=all_reduce)
