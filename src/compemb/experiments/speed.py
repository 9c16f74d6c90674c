"""Each variant's table step against the full tables', measured side by side on the data.

A table step is what the embedding layer costs a training step: the lookup and composition
(forward), the backward from a fixed output gradient, and the optimizer's update of the tables
and dense parts, as the single-process trainer builds them (``make_optimizer(...,
fused=True)``), with gradients cleared before each step (a sparse gradient left over would be
summed into the next). The batches are the data's own (the first few of the shuffled training
split), so id skew and feature widths are the trained models'.

Variants are timed in rounds, every variant once per round in a rotated order, and each
variant's time is divided by the full tables' of the same round: noise on a shared machine hits
a round's variants alike, and the median of the per-round ratios is kept. The clock is the
process's CPU time, so time spent descheduled is not counted.
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
        rounds: timed rounds after one untimed warm-up step of each variant.
    """
    if base not in configs:
        raise ValueError(f"base {base!r} is not among the variants timed")
    if rounds < 1 or num_batches < 1:
        raise ValueError(f"rounds and num_batches must be >= 1, got {rounds}, {num_batches}")
    seed = next(iter(configs.values())).train.seed
    stream = dataset.batches("train", batch_size, shuffle=True, seed=seed)
    batches = list(itertools.islice(stream, num_batches))
    steps = {label: table_step(config, dataset, batches) for label, config in configs.items()}
    for step in steps.values():
        step()
    labels = list(steps)
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        seconds = {}
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            start = time.process_time()
            steps[label]()
            seconds[label] = time.process_time() - start
        for label in labels:
            ratios[label].append(seconds[label] / max(seconds[base], 1e-9))
    return {label: statistics.median(values) for label, values in ratios.items()}
