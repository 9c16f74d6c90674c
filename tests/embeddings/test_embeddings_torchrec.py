"""The TorchRec collection equals compemb's local modules given the same weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from schemekit import SPECS as SCHEME_SPECS
from schemekit import spec_id

pytest.importorskip("torchrec")
# TorchRec 1.8 deprecation notices (ShardedTensor, broadcast_buffers) and FBGEMM's autograd
# fallback notice, which the gradient checks here cover.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec  # noqa: E402
from compemb.embeddings.factory import make_embedding_bag  # noqa: E402
from compemb.embeddings.torchrec import (  # noqa: E402
    TorchRecEmbeddingCollection,
    ids_to_kjt,
    keyed_to_batch,
)
from compemb.spec import resolve_spec  # noqa: E402

CARDS = [1000, 37, 5, 250]  # the 5-category feature falls back to full under every scheme
D = 8
SPECS = [*SCHEME_SPECS, EmbeddingSpec("qr", operation="concat", collisions=4, threshold=40)]


def _local_state(trc: TorchRecEmbeddingCollection) -> dict[str, torch.Tensor]:
    return trc.local_state_dict({k: v.detach() for k, v in trc.state_dict().items()})


def _local_modules(trc: TorchRecEmbeddingCollection) -> list[torch.nn.Module]:
    """Per-feature modules holding copies of the TorchRec collection's weights."""
    state = _local_state(trc)
    modules = []
    for route, n in zip(trc.routes, trc.cardinalities, strict=True):
        module = make_embedding_bag(n, D, resolve_spec(trc.spec, n))
        prefix = f"features.{route.index}."
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                if k.startswith(prefix)})  # fmt: skip
        modules.append(module)
    return modules


def _bags(batch: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Multi-hot bags for every feature (one empty bag, repeated ids)."""
    bags = []
    for n in CARDS:
        lengths = torch.randint(0, 4, (batch,), generator=gen)
        lengths[1] = 0
        values = torch.randint(0, n, (int(lengths.sum()),), generator=gen)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        bags.append((values, offsets))
    return bags


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_one_hot_equals_local_collection(spec: EmbeddingSpec) -> None:
    torch.manual_seed(0)
    trc = TorchRecEmbeddingCollection(CARDS, D, spec)
    local = EmbeddingBagCollection(CARDS, D, spec)
    local.load_state_dict(_local_state(trc))
    ids = torch.stack([torch.randint(0, n, (16,)) for n in CARDS], dim=1)
    ids[0] = torch.tensor([n - 1 for n in CARDS])
    kt = trc(ids_to_kjt(ids, trc.feature_names))
    assert kt.keys() == list(trc.output_names)
    torch.testing.assert_close(keyed_to_batch(kt, D), local(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "weighted"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_multi_hot_outputs_and_gradients(spec: EmbeddingSpec, mode: str) -> None:
    """Bags (empty and repeated ids included) through every pooling, and per-sample weights:
    outputs and every table's gradient equal the per-feature modules'."""
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    weighted = mode == "weighted"
    spec = spec.with_(mode="sum" if weighted else mode)
    trc = TorchRecEmbeddingCollection(CARDS, D, spec, weighted=weighted)
    modules = _local_modules(trc)
    bags = _bags(6, gen)
    weights = [torch.rand(v.shape, generator=gen) for v, _ in bags] if weighted else None
    out = keyed_to_batch(trc(ids_to_kjt(torch.empty(6, 0, dtype=torch.long),
                                        trc.feature_names, bags, weights)), D)
    expected = []
    for j, (module, (v, o)) in enumerate(zip(modules, bags, strict=True)):
        y = module(v, o, None if weights is None else weights[j])
        expected.append(y if y.dim() == 3 else y.unsqueeze(1))
    expected = torch.cat(expected, dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    probe = torch.randn(out.shape, generator=gen)
    (out * probe).sum().backward()
    (expected * probe).sum().backward()
    tables = trc.named_tables()
    for route, module in zip(trc.routes, modules, strict=True):
        for t, table in zip(route.tables, route.plan.tables, strict=True):
            target = module.get_parameter(table.name)
            torch.testing.assert_close(tables[t].grad, target.grad, rtol=0, atol=1e-6)
        if route.name in trc.paths:
            for name, p in trc.paths[route.name].named_parameters():
                torch.testing.assert_close(p.grad, module.get_parameter(name).grad,
                                           rtol=0, atol=1e-6)


def test_routes_pool_only_what_commutes() -> None:
    cards = [1000, 3]
    route = {
        (op, mode): TorchRecEmbeddingCollection(
            cards, D, EmbeddingSpec("qr", operation=op, collisions=4, mode=mode)).routes
        for op in ("concat", "add", "mult") for mode in ("sum", "max")
    }  # fmt: skip
    assert route["concat", "sum"][0].pooled and route["add", "sum"][0].pooled
    assert not route["mult", "sum"][0].pooled
    assert not route["add", "max"][0].pooled and not route["concat", "max"][0].pooled
    assert route["mult", "sum"][1].plan.spec.scheme == "full" and route["mult", "sum"][1].pooled
    assert route["mult", "sum"][0].tables == ("f0__0", "f0__1")


def test_weighted_needs_sum() -> None:
    with pytest.raises(ValueError, match="mode 'sum'"):
        TorchRecEmbeddingCollection([10], D, EmbeddingSpec(mode="mean"), weighted=True)


@pytest.mark.parametrize("spec", [
    EmbeddingSpec("qr", operation="mult", collisions=4, hot=5, order="frequency"),
    EmbeddingSpec("hash", collisions=4, hot=5),
    EmbeddingSpec("qr", operation="concat", collisions=4, order="interleaved"),
], ids=["qr-hot-frequency", "hash-hot", "qr-interleaved"])  # fmt: skip
def test_frequency_aware_specs_equal_local_collection(spec: EmbeddingSpec) -> None:
    """Counts-driven plans (renumbering, hot rows): from counts, or from the local
    collection's own plans, the TorchRec collection embeds as the local one does."""
    torch.manual_seed(0)
    gen = np.random.default_rng(0)
    counts = [gen.zipf(1.5, n).astype(np.int64) for n in CARDS]
    local = EmbeddingBagCollection(CARDS, D, spec, counts=counts)
    ids = torch.stack([torch.randint(0, n, (16,)) for n in CARDS], dim=1)
    for trc in (TorchRecEmbeddingCollection(CARDS, D, spec, counts=counts),
                TorchRecEmbeddingCollection(CARDS, D, spec, plans=local.plans)):
        state = local.state_dict()
        state.update(_local_state(trc))
        local.load_state_dict(state)
        out = keyed_to_batch(trc(ids_to_kjt(ids, trc.feature_names)), D)
        torch.testing.assert_close(out, local(ids), rtol=0, atol=1e-6)


def test_docstring_examples_run() -> None:
    import doctest

    import compemb.embeddings.torchrec

    result = doctest.testmod(compemb.embeddings.torchrec)
    assert result.attempted >= 2 and result.failed == 0


def test_a_route_giving_other_vectors_than_it_promised_raises() -> None:
    trc = TorchRecEmbeddingCollection([1000, 3], D, EmbeddingSpec("qr", collisions=4))
    first = trc.routes[0]
    twice = dataclasses.replace(first.route, combine=lambda parts, rest, module: parts)
    trc.routes = (dataclasses.replace(first, route=twice), *trc.routes[1:])
    with pytest.raises(ValueError, match="gave 3 vectors per sample, their plans promise 2"):
        trc(ids_to_kjt(torch.tensor([[3, 1]]), trc.feature_names))
