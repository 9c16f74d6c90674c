"""Each variant's table step against the full tables', measured side by side on the data.

A table step is what the embedding layer costs a training step: the lookup and composition
(forward), the backward from a fixed output gradient, and the optimizer's update of the tables
and dense parts, as the single-process trainer builds them (``make_optimizer(...,
fused=True)``), with gradients cleared before each step (a sparse gradient left over would be
summed into the next). The batches are the data's own (the first few of the shuffled training
split), so id skew and feature widths are the trained models'.

Variants are timed in rounds against the full tables, one variant at a time: the base layer
(the full tables) is built once, and in each round every other variant, in a rotated order, is
built, given one untimed warm-up step, timed back to back with the base (which of the two goes
first alternates by round) and dropped before the next is built. At most two embedding layers
exist at once, so a frontier of Criteo-size variants times in the memory of two runs; rebuilding
each round keeps the rounds interleaved, so noise on a shared machine that lasts a while hits
every variant's rounds alike. Each variant's time is divided by the base's timed beside it, and
the median of the per-round ratios is kept. The clock is the process's CPU time, so time spent
descheduled is not counted.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from compemb.config import Config
from compemb.data import Batch, Dataset
from compemb.optim import make_optimizer
from compemb.training.build import model_for

__all__ = ["table_step", "table_step_ratios"]


def table_step(config: Config, dataset: Dataset, batches: Sequence[Batch],
               seed: int = 0) -> Callable[[], None]:
    """One call = one table step per batch of ``batches`` for the model ``config`` builds."""
    arch = model_for(config, dataset, "cpu").sparse_arch
    optimizer = make_optimizer(config.train.optimizer, arch.parameters(), config.train.lr,
                               tables=arch.table_parameters(), fused=True)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        grads = [torch.randn(arch(b.categorical, b.bags).shape, generator=generator)
                 for b in batches]  # fmt: skip

    def step() -> None:
        for batch, grad in zip(batches, grads, strict=True):
            optimizer.zero_grad(set_to_none=True)
            arch(batch.categorical, batch.bags).backward(grad)
            optimizer.step()

    return step


def table_step_ratios(
    configs: dict[str, Config],
    base: str,
    dataset: Dataset,
    *,
    batch_size: int,
    num_batches: int = 4,
    rounds: int = 5,
) -> dict[str, float]:
    """Per label: the median over rounds of its table step time over ``base``'s (> 1: slower).

    Args:
        configs: each variant's training config (one trial's), by label.
        base: the label the others are divided by (the full tables).
        batch_size, num_batches: the training split's first batches, shuffled with the first
            config's seed.
        rounds: timed rounds; in each, every variant but ``base`` is built anew and takes one
            untimed warm-up step before it is timed.
    """
    if base not in configs:
        raise ValueError(f"base {base!r} is not among the variants timed")
    if rounds < 1 or num_batches < 1:
        raise ValueError(f"rounds and num_batches must be >= 1, got {rounds}, {num_batches}")
    seed = next(iter(configs.values())).train.seed
    stream = dataset.batches("train", batch_size, shuffle=True, seed=seed)
    batches = list(itertools.islice(stream, num_batches))
    base_step = table_step(configs[base], dataset, batches)
    base_step()  # warm-up
    others = [label for label in configs if label != base]
    ratios: dict[str, list[float]] = {label: [] for label in others}
    for r in range(rounds):
        shift = r % max(len(others), 1)
        for label in others[shift:] + others[:shift]:
            step = table_step(configs[label], dataset, batches)
            step()  # warm-up: first-touch allocations and optimizer state
            if r % 2 == 0:
                base_seconds, seconds = _cpu_seconds(base_step), _cpu_seconds(step)
            else:
                seconds, base_seconds = _cpu_seconds(step), _cpu_seconds(base_step)
            ratios[label].append(seconds / max(base_seconds, 1e-9))
            del step  # this variant's layer goes before the next one is built
    medians = {label: statistics.median(values) for label, values in ratios.items()}
    return {label: 1.0 if label == base else medians[label] for label in configs}


def _cpu_seconds(step: Callable[[], None]) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start
