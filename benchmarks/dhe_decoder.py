"""DHE's cost per batch, split: the hash encoding and the decoder MLP, against this CPU's matmul.

On a 2048 x 26 batch (26 features, one id each), D = 16, depth 2, for each ``--hashes`` k and
``--width`` w: the CPU time (one thread) of the encoding (compiled kernel where built, and the
pure-torch int64 arithmetic), of the stacked decoder's forward and backward (each layer one
``baddbmm`` over the 26 features), and of plain ``torch.matmul`` on the same (26, B, in) x
(26, in, out) shapes, forward and backward (the peak those shapes reach here); the decoder's
achieved FLOP/s (2 flops per multiply-add; forward, weight gradient, and input gradient but for the
first layer's) is printed against that peak and against a large square matmul's.

    .venv/bin/python benchmarks/dhe_decoder.py [--hashes 64 1024] [--width 64]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from compemb import EmbeddingBagCollection, EmbeddingSpec, _kernels
from compemb.embeddings._universal import hash_coefficients
from compemb.embeddings.batched_dhe import DHEGroup
from compemb.embeddings.dhe import dhe_encoding

B, F, D = 2048, 26, 16


def cpu_time(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``fn`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return sorted(times)[len(times) // 2]


def matmul_step(shapes: list[tuple[int, int]]) -> Callable[[], None]:
    """Forward and backward of bare batched matmuls of the decoder's shapes (no bias, no Mish)."""
    xs = torch.randn(F, B, shapes[0][0])
    ws = [torch.randn(F, i, o, requires_grad=True) for i, o in shapes]

    def step() -> None:
        x = xs
        for w in ws:
            x = torch.bmm(x, w)
        x.backward(torch.ones_like(x))

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    square = torch.randn(1024, 1024)
    peak = 2 * 1024**3 / cpu_time(lambda: square @ square, args.repeat)
    print(f"torch {torch.__version__}, 1 thread, CPU time; batch {B} x {F} features, D={D}, "
          f"depth 2, width {args.width}; square 1024 matmul: {peak / 1e9:.1f} GFLOP/s")
    ids = torch.randint(0, 10**7, (B, F))
    w = args.width
    flat = ids.reshape(-1)
    for k in args.hashes:
        co = hash_coefficients(k, 0)
        kernel = cpu_time(lambda co=co: dhe_encoding(flat, co, "uniform"), args.repeat)
        saved = _kernels.hash_affine, _kernels.universal_hash
        _kernels.hash_affine = _kernels.universal_hash = lambda *a: None
        plain = cpu_time(lambda co=co: dhe_encoding(flat, co, "uniform"), 1)
        _kernels.hash_affine, _kernels.universal_hash = saved
        spec = EmbeddingSpec("dhe", width=w, hashes=k)
        (group,) = EmbeddingBagCollection([10**7] * F, D, spec, validate=False).groups
        assert isinstance(group, DHEGroup)
        x = group._encode(ids, slice(None))

        def decoder(group=group, x=x) -> None:
            out = x
            for j in range(0, len(group.layers), 2):
                out = torch.baddbmm(group.layers[j + 1].unsqueeze(1), out,
                                    group.layers[j].transpose(1, 2))
                if j < len(group.layers) - 2:
                    out = torch.nn.functional.mish(out)
            out.backward(torch.ones_like(out))

        shapes = [(k, w), (w, w), (w, D)]
        # forward and weight gradient of every layer, input gradient of all but the first
        flops = 2 * B * F * (2 * k * w + 3 * (w * w + w * D))
        took = cpu_time(decoder, args.repeat)
        bare = cpu_time(matmul_step(shapes), args.repeat)
        print(f"k={k:5d}: encoding {kernel * 1e3:7.1f} ms (kernel), {plain * 1e3:7.1f} ms "
              f"(torch int64); decoder fwd+bwd {took * 1e3:7.1f} ms = {flops / took / 1e9:5.1f} "
              f"GFLOP/s, {flops / took / (flops / bare):.0%} of bare matmuls at these shapes "
              f"({flops / bare / 1e9:.1f} GFLOP/s), {flops / took / peak:.0%} of the square "
              f"peak")


if __name__ == "__main__":
    main()
