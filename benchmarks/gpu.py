"""On a CUDA machine: check compemb's CUDA path against the CPU, then time it.

1. Correctness: for several schemes, the same collection (weights copied) on CPU and on CUDA
   gives the same outputs and table gradients on random ids, multi-hot bags included.
2. Speed at batch 65536 on the 26 Criteo Kaggle features, D = 16, forward + backward with
   sparse gradients cleared every step: 26 full ``nn.EmbeddingBag`` tables, compemb's full-table
   collection, the hashing trick, QR mult at 4 and 60 collisions; samples/s, and GB/s of
   embedding rows moved (rows read in the forward, rows of gradient written in the backward)
   against the device's own device-to-device copy bandwidth.

    python benchmarks/gpu.py [--batch 65536] [--steps 20]

Needs nothing but torch and compemb; exits with status 2 where no GPU is present.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.data import CRITEO_KAGGLE_CARDINALITIES

D = 16
CHECK_SPECS = [
    EmbeddingSpec("full"),
    EmbeddingSpec("hash", collisions=4),
    EmbeddingSpec("qr", "mult", collisions=4, sparse=True),
    EmbeddingSpec("qr", "concat", collisions=7),
    EmbeddingSpec("crt", "add", k=3),
    EmbeddingSpec("path", collisions=4, path_hidden=16),
    EmbeddingSpec("feature", collisions=4, mode="mean"),
]


def check(device: torch.device) -> None:
    torch.manual_seed(0)
    cards = [5, 1000, 77_777, 300, 123_457]  # the last one is a multi-hot bag
    for spec in CHECK_SPECS:
        cpu = EmbeddingBagCollection(cards, D, spec)
        gpu = EmbeddingBagCollection(cards, D, spec, device=device)
        gpu.load_state_dict(cpu.state_dict())
        ids = torch.stack([torch.randint(0, n, (512,)) for n in cards[:-1]], 1)
        values = torch.randint(0, cards[-1], (2000,))
        offsets = torch.sort(torch.randint(0, 2000, (512,))).values
        offsets[0] = 0
        outs = []
        for m, dev in ((cpu, "cpu"), (gpu, device)):
            out = m(ids.to(dev), [(values.to(dev), offsets.to(dev))])
            (out * torch.arange(out.numel(), device=dev).view_as(out).sin()).sum().backward()
            outs.append(out.detach().cpu())
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
        for (name, a), b in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
            ga, gb = a.grad, b.grad.cpu()
            ga = ga.to_dense() if ga.is_sparse else ga
            gb = gb.to_dense() if gb.is_sparse else gb
            torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5, msg=f"{spec} {name}")
        label = " ".join(spec.owner.describe(spec))
        print(f"ok   {label:16s} outputs and gradients match the CPU")


class FullTables(nn.Module):
    def __init__(self, cards, device):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(n, D, mode="sum", sparse=True, device=device)
                                    for n in cards)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(ids[:, f : f + 1]) for f, t in enumerate(self.tables)], 1)


def timed(module: nn.Module, batches: list[torch.Tensor]) -> float:
    """Milliseconds per forward + backward step."""
    def step(x: torch.Tensor) -> None:
        for p in module.parameters():
            p.grad = None
        module(x).sum().backward()

    for x in batches[:3]:
        step(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for x in batches:
        step(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / len(batches)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """GB/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * 10 / (start.elapsed_time(end) / 1e3) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    check(device)
    cards = torch.tensor(CRITEO_KAGGLE_CARDINALITIES, device=device)
    batches = [(torch.rand(args.batch, len(cards), device=device) * cards).long()
               for _ in range(args.steps)]
    copy = copy_bandwidth(device)
    print(f"\ndevice-to-device copy: {copy:,.0f} GB/s")

    def ebc(**spec) -> nn.Module:
        return EmbeddingBagCollection(CRITEO_KAGGLE_CARDINALITIES, D,
                                      EmbeddingSpec(sparse=True, **spec), validate=False,
                                      device=device)

    variants = {
        "full nn.EmbeddingBag x26": (lambda: FullTables(CRITEO_KAGGLE_CARDINALITIES, device), 1),
        "full, compemb collection": (lambda: ebc(scheme="full"), 1),
        "hash 4": (lambda: ebc(scheme="hash", collisions=4), 1),
        "compemb QR mult 4": (lambda: ebc(scheme="qr", collisions=4), 2),
        "compemb QR mult 60": (lambda: ebc(scheme="qr", collisions=60), 2),
    }
    print(f"\nbatch {args.batch}, 26 features, D={D}, forward+backward, sparse gradients")
    print(f"{'variant':28s} {'samples/s':>14s} {'vs full':>8s} {'GB/s':>8s} {'of copy':>8s}")
    base = None
    for name, (make, tables) in variants.items():
        module = make()
        ms = timed(module, batches)
        del module
        torch.cuda.empty_cache()
        base = base or ms
        # rows read per id per table, gradient rows written per id per table
        moved = args.batch * len(cards) * tables * 2 * D * 4
        gbs = moved / (ms / 1e3) / 1e9
        print(f"{name:28s} {args.batch / ms * 1e3:14,.0f} {base / ms:8.2f} {gbs:8.0f} "
              f"{gbs / copy:8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
