"""Run under torchrun (2 ranks, gloo) by test_training_distributed.py: for each spec, one model
wrapped twice, as ``wrap_model`` wraps it and as DDP does by default (every buffer broadcast),
trains the same steps on each rank's own batches. Every call of the coalesced broadcast DDP
uses is recorded. Exits non-zero unless ``wrap_model`` broadcast no buffer (at wrapping or at
any step) and both wrappings give the same losses and the same final state on every rank.

Usage: torchrun --nproc_per_node=2 ddp_buffers_worker.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from compemb.embeddings import EmbeddingSpec
from compemb.models import DLRM
from compemb.optim import make_optimizer
from compemb.training import distributed as D

CARDS = [50_000, 40, 7]
SPECS = [EmbeddingSpec("qr", "mult", collisions=4, order="frequency", hot=3, sparse=True),
         EmbeddingSpec("cce", rows=16, chunks=2, sparse=True),
         EmbeddingSpec("robe", size=4 * 20_000, block=4, sparse=True)]  # a sparse shared array
SENT: list[list[torch.Tensor]] = []
_broadcast = dist._broadcast_coalesced


def _recording(group, tensors, buffer_size, src):  # noqa: ANN001, ANN202 (torch's signature)
    SENT.append(list(tensors))
    return _broadcast(group, tensors, buffer_size, src)


def train(spec: EmbeddingSpec, info: D.DistInfo, wrap: str) -> tuple[list[float], DLRM, int]:
    """Losses, the model after 3 steps, and the broadcast calls that carried a buffer."""
    counts = [np.random.default_rng(f).zipf(1.3, n) for f, n in enumerate(CARDS)]
    torch.manual_seed(0)
    model = DLRM(CARDS, 2, 4, spec, counts=counts, bottom_hidden=(4,), top_hidden=(4,))
    SENT.clear()
    if wrap == "wrap_model":
        net = D.wrap_model(model, torch.device("cpu"), info, sparse_tables=True)
    else:  # DDP's default: every buffer broadcast from rank 0 (the tables left out, as above)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [f"sparse_arch.{n}" for n, _ in model.sparse_arch.named_parameters()])
        net = DistributedDataParallel(model)
    optimizer = make_optimizer("adagrad", model.parameters(), None,
                               tables=model.sparse_arch.table_parameters())
    gen = torch.Generator().manual_seed(1 + info.rank)
    losses = []
    for _ in range(3):
        for p in model.parameters():
            p.grad = None
        ids = torch.stack([torch.randint(n, (32,), generator=gen) for n in CARDS], 1)
        dense, labels = torch.randn(32, 2, generator=gen), torch.randint(2, (32,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(dense, ids), labels.float())
        loss.backward()
        D.reduce_table_grads(model, info)
        optimizer.step()
        losses.append(loss.item())
    buffers = {b.data_ptr() for b in model.buffers()}
    carried = sum(any(t.data_ptr() in buffers for t in call) for call in SENT)
    return losses, model, carried


def main() -> None:
    torch.set_num_threads(1)
    info = D.init_distributed(torch.device("cpu"))
    dist._broadcast_coalesced = _recording
    for spec in SPECS:
        losses, model, carried = train(spec, info, "wrap_model")
        default_losses, default_model, default_carried = train(spec, info, "ddp")
        assert default_carried > 0, "the default wrapping broadcast no buffer: nothing tested"
        assert carried == 0, f"{spec.scheme}: wrap_model broadcast buffers in {carried} calls"
        assert losses == default_losses, (spec.scheme, losses, default_losses)
        state, other = model.state_dict(), default_model.state_dict()
        for key, value in state.items():
            if not key.endswith(".seen"):  # rank-local: the default overwrote it with rank 0's
                assert torch.equal(value, other[key]), (spec.scheme, key)
            gathered = [torch.empty_like(value) for _ in range(info.world_size)]
            dist.all_gather(gathered, value)
            if not key.endswith(".seen"):
                assert all(torch.equal(g, value) for g in gathered), (spec.scheme, key)
    D.shutdown(info)


if __name__ == "__main__":
    main()
