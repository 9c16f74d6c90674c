"""Bytes DDP broadcasts under ``train.sharding=replicate``: when it wraps the model and before
every forward, with the embedding layer's buffers left to DDP (as before) and as
``compemb.training.distributed.wrap_model`` wraps it now (none of them).

DLRM, D = 16, one feature of ``--categories`` ids renumbered by training frequency (QR mult,
4 collisions: its relabel map is a buffer) beside two small ones, Adagrad, sparse tables kept
outside DDP as the trainer keeps them on gloo. Every call of ``torch.distributed``'s coalesced
broadcast (what DDP uses for both) is counted on rank 0; ``--steps`` steps of batch 128 per rank.
Both wrappings train from the same state on the same batches: the losses must agree.

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        benchmarks/ddp_buffers.py [--categories 1000000] [--steps 5]
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from compemb.embeddings import EmbeddingSpec
from compemb.models import DLRM
from compemb.optim import make_optimizer
from compemb.training import distributed as D

SENT: list[int] = []
_broadcast = dist._broadcast_coalesced


def _counting(group, tensors, buffer_size, src):  # noqa: ANN001, ANN202 (torch's signature)
    SENT.append(sum(t.numel() * t.element_size() for t in tensors))
    return _broadcast(group, tensors, buffer_size, src)


def legacy_wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP as ``wrap_model`` wrapped before: only the sparse tables (and rank-local buffers,
    none here) left out."""
    names = [f"sparse_arch.{n}" for n, _ in model.sparse_arch.named_parameters()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return DistributedDataParallel(model)


def run(net: torch.nn.Module, model: DLRM, info: D.DistInfo, batches: list) -> dict:
    optimizer = make_optimizer("adagrad", model.parameters(), None,
                               tables=model.sparse_arch.table_parameters(), fused=False)
    wrapped_at = len(SENT)
    losses, per_step = [], []
    for dense, ids, labels in batches:
        before = len(SENT)
        for p in model.parameters():
            p.grad = None
        loss = F.binary_cross_entropy_with_logits(net(dense, ids), labels)
        loss.backward()
        D.reduce_table_grads(model, info)
        optimizer.step()
        per_step.append(sum(SENT[before:]))
        losses.append(loss.item())
    return {"wrap_bytes": sum(SENT[:wrapped_at]), "step_bytes": per_step, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = D.init_distributed(torch.device("cpu"))
    dist._broadcast_coalesced = _counting
    cards = [args.categories, 40, 7]
    counts = [np.random.default_rng(f).zipf(1.3, n) for f, n in enumerate(cards)]
    spec = EmbeddingSpec("qr", "mult", collisions=4, order="frequency", sparse=True)
    torch.manual_seed(0)
    model = DLRM(cards, 3, 16, spec, counts=counts, bottom_hidden=(16,), top_hidden=(16,))
    gen = torch.Generator().manual_seed(1 + info.rank)
    batches = [(torch.randn(128, 3, generator=gen),
                torch.stack([torch.randint(n, (128,), generator=gen) for n in cards], 1),
                torch.randint(2, (128,), generator=gen).float()) for _ in range(args.steps)]
    results = {}
    for name, wrap in (("buffers broadcast (before)", legacy_wrap),
                       ("wrap_model (now)", lambda m: D.wrap_model(
                           m, torch.device("cpu"), info, sparse_tables=True))):
        SENT.clear()
        own = copy.deepcopy(model)
        results[name] = run(wrap(own), own, info, batches)
    if info.is_main:
        maps = sum(b.numel() * b.element_size() for b in model.sparse_arch.buffers())
        print(json.dumps({"categories": args.categories,
                          "embedding_buffer_bytes": maps, **results}, indent=1))
        first, second = results.values()
        assert first["losses"] == second["losses"], "the two wrappings trained differently"
    D.shutdown(info)


if __name__ == "__main__":
    main()
