"""The TorchRec collection equals compemb's local modules given the same weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from schemekit import SPECS as SCHEME_SPECS
from schemekit import kit_counts, spec_id

pytest.importorskip("torchrec")
# TorchRec 1.8 deprecation notices (ShardedTensor, broadcast_buffers) and FBGEMM's autograd
# fallback notice, which the gradient checks here cover.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec  # noqa: E402
from compemb.embeddings.factory import module_from_plan  # noqa: E402
from compemb.embeddings.torchrec import (  # noqa: E402
    TorchRecEmbeddingCollection,
    ids_to_kjt,
    keyed_to_batch,
)

CARDS = [1000, 37, 5, 250]  # the 5-category feature falls back to full under every scheme
D = 8
SPECS = [*SCHEME_SPECS, EmbeddingSpec("qr", operation="concat", collisions=4, threshold=40)]


def _local_state(trc: TorchRecEmbeddingCollection) -> dict[str, torch.Tensor]:
    return trc.local_state_dict({k: v.detach() for k, v in trc.state_dict().items()})


def _local_modules(trc: TorchRecEmbeddingCollection) -> list[torch.nn.Module]:
    """Per-feature modules holding copies of the TorchRec collection's weights."""
    state = _local_state(trc)
    modules = []
    for route in trc.routes:
        module = module_from_plan(route.plan)
        shared = route.plan.shared
        prefixes = (f"features.{route.index}.", *(() if shared is None
                                                 else (f"shared.{shared.key}.",)))
        module.load_state_dict({k[len(p):]: v for k, v in state.items()
                                for p in prefixes if k.startswith(p)})  # fmt: skip
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
    trc = TorchRecEmbeddingCollection(CARDS, D, spec, counts=kit_counts(spec, CARDS))
    local = EmbeddingBagCollection(CARDS, D, spec, counts=kit_counts(spec, CARDS))
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
    trc = TorchRecEmbeddingCollection(CARDS, D, spec, weighted=weighted,
                                      counts=kit_counts(spec, CARDS))
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
    want: dict[str, torch.Tensor] = {}  # a table several features read: their sum
    for route, module in zip(trc.routes, modules, strict=True):
        for t, table in zip(route.tables, route.table_plans, strict=True):
            g = module.get_parameter(table.name).grad
            want[t] = want[t] + g if t in want else g
        if route.name in trc.paths:
            for name, p in trc.paths[route.name].named_parameters():
                torch.testing.assert_close(p.grad, module.get_parameter(name).grad,
                                           rtol=0, atol=1e-6)
    for t, g in want.items():
        torch.testing.assert_close(tables[t].grad, g, rtol=0, atol=1e-6)


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


@pytest.mark.parametrize("spec", [
    *(s for s in SCHEME_SPECS if not TorchRecEmbeddingCollection(
        CARDS, D, s, counts=kit_counts(s, CARDS)).routes[0].pooled),
    EmbeddingSpec("qr", operation="add", collisions=4, mode="max"),
], ids=spec_id)  # fmt: skip
def test_one_hot_features_pooled_give_the_same_outputs_and_gradients(spec: EmbeddingSpec) -> None:
    """One-hot features look every table up pooled (a one-id bag's pooled row is the row; the
    L rows an id reads from a table by a route's ``lookup``, ROBE's blocks, are L one-id bags)
    and skip the unpooled collection: same outputs and gradients as unpooled."""
    counts = kit_counts(spec, CARDS)
    unpooled = TorchRecEmbeddingCollection(CARDS, D, spec, counts=counts)
    pooled = TorchRecEmbeddingCollection(CARDS, D, spec, counts=counts, one_hot=len(CARDS))
    pooled.load_state_dict(_renamed(unpooled, pooled))
    assert all(r.pooled for r in pooled.routes) and len(pooled.unpooled) == 0
    assert not all(r.pooled for r in unpooled.routes)
    ids = torch.stack([torch.randint(0, n, (9,)) for n in CARDS], 1)
    kjt = ids_to_kjt(ids, pooled.feature_names)
    a, b = unpooled(kjt).values(), pooled(kjt).values()
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    grad = torch.randn_like(a)
    (a * grad).sum().backward()
    (b * grad).sum().backward()
    mine = _grads(pooled)
    for key, g in _grads(unpooled).items():
        torch.testing.assert_close(mine[key], g, rtol=0, atol=1e-5, msg=key)


def test_a_shared_table_read_by_a_bag_is_read_per_id_by_every_feature() -> None:
    """ROBE-Z's one array, read by two one-hot features and two bag features: one table,
    looked up per id by all four (a table has one collection), equal to the local modules."""
    spec = EmbeddingSpec("robe", size=64, block=4)
    trc = TorchRecEmbeddingCollection(CARDS, D, spec, one_hot=2)
    assert not any(r.pooled for r in trc.routes) and list(trc.unpooled) == ["d4"]
    local = EmbeddingBagCollection(CARDS, D, spec)
    local.load_state_dict(_local_state(trc))
    ids = torch.stack([torch.randint(0, n, (5,)) for n in CARDS[:2]], 1)
    bags = _bags(5, torch.Generator().manual_seed(3))[2:]
    out = keyed_to_batch(trc(ids_to_kjt(ids, trc.feature_names, bags)), D)
    torch.testing.assert_close(out, local(ids, bags), rtol=0, atol=1e-6)


def _renamed(src: TorchRecEmbeddingCollection, dst: TorchRecEmbeddingCollection
             ) -> dict[str, torch.Tensor]:
    """``src``'s state under ``dst``'s keys (the two group the same tables differently)."""
    local = _local_state(src)
    return {own: local[key] for own, key in dst.state_key_map().items()}


def _grads(trc: TorchRecEmbeddingCollection) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (dense: small tables here) by its local key."""
    params = dict(trc.named_parameters())
    return {local: params[own].grad if params[own].grad is not None
            else torch.zeros_like(params[own])
            for own, local in trc.state_key_map().items() if own in params}  # fmt: skip


def test_one_hot_feature_with_another_number_of_ids_is_refused() -> None:
    trc = TorchRecEmbeddingCollection(CARDS, D, EmbeddingSpec("qr", collisions=4), one_hot=2)
    kjt = ids_to_kjt(torch.tensor([[1, 2], [3, 4]]), trc.feature_names,
                     [(torch.tensor([0, 1, 2]), torch.tensor([0, 2])),
                      (torch.tensor([4]), torch.tensor([0, 1]))])  # fmt: skip
    trc(kjt)  # bags may hold any number of ids
    bad = ids_to_kjt(torch.tensor([[1], [3]]), trc.feature_names,
                     [(torch.tensor([0, 1, 2]), torch.tensor([0, 2])),
                      (torch.tensor([4]), torch.tensor([0, 1])),
                      (torch.tensor([4]), torch.tensor([0, 1]))])  # fmt: skip
    with pytest.raises(ValueError, match=r"feature 'f1' is one-hot, but sample 0 holds 2 ids"):
        trc(bad)


def test_seeded_init_is_reproducible_and_per_table() -> None:
    spec = EmbeddingSpec("qr", operation="mult", collisions=4)
    a, b = (TorchRecEmbeddingCollection(CARDS, D, spec, seed=3) for _ in range(2))
    c = TorchRecEmbeddingCollection(CARDS, D, spec, seed=4)
    for (name, x), y, z in zip(a.named_tables().items(), b.named_tables().values(),
                               c.named_tables().values(), strict=True):  # fmt: skip
        assert torch.equal(x, y), name
        assert not torch.equal(x, z), name
        route = next(r for r in a.routes if name in r.tables)
        lo, hi = route.plan.tables[route.tables.index(name)].bounds
        assert lo <= float(x.min()) and float(x.max()) <= hi, name
    tables = list(a.named_tables().values())
    assert not torch.equal(tables[0][:4], tables[1][:4])  # each table its own draw


def test_out_of_range_ids_raise_under_dmp() -> None:
    """FBGEMM clamps an id >= n to row 0 silently: the collection checks every feature's
    ids (single-valued and bags) before the lookup, sharded by DMP too."""
    from compemb.training import sharding

    started = sharding.ensure_process_group()
    try:
        spec = EmbeddingSpec("qr", operation="mult", collisions=4)

        def sharded(validate: bool) -> torch.nn.Module:
            trc = TorchRecEmbeddingCollection(CARDS, D, spec, validate=validate, device="meta")
            model = torch.nn.ModuleDict({"emb": trc})
            return sharding.shard(model, torch.device("cpu"), optimizer="adagrad", lr=0.1,
                                  small_bytes=0).model  # fmt: skip

        dmp = sharded(True)
        names = ("f0", "f1", "f2", "f3")
        good = torch.tensor([[1, 2, 3, 4], [999, 36, 4, 249]])
        dmp.module.emb(ids_to_kjt(good, names))
        for value, col, shown in ((1000, 0, 1000), (37 + 10_000_000, 1, 10_000_037), (-1, 3, -1)):
            ids = good.clone()
            ids[1, col] = value
            with pytest.raises(IndexError, match=rf"feature 'f{col}' id {shown} \(sample 1, "
                               rf"position 1 of its values\) is out of range"):  # fmt: skip
                dmp.module.emb(ids_to_kjt(ids, names))
        bag = ids_to_kjt(good[:, :3], names,
                         [(torch.tensor([5, 250, 7]), torch.tensor([0, 1]))])  # fmt: skip
        with pytest.raises(IndexError, match=r"feature 'f3' id 250 \(sample 1, position 1"):
            dmp.module.emb(bag)
        ids = good.clone()
        ids[1, 0] = 1000
        sharded(False).module.emb(ids_to_kjt(ids, names))  # unchecked: FBGEMM clamps it
    finally:
        sharding.end_process_group(started)


def test_a_route_giving_other_vectors_than_it_promised_raises() -> None:
    trc = TorchRecEmbeddingCollection([1000, 3], D, EmbeddingSpec("qr", collisions=4))
    first = trc.routes[0]
    twice = dataclasses.replace(first.route, combine=lambda parts, rest, module: parts)
    trc.routes = (dataclasses.replace(first, route=twice), *trc.routes[1:])
    with pytest.raises(ValueError, match="gave 3 vectors per sample, their plans promise 2"):
        trc(ids_to_kjt(torch.tensor([[3, 1]]), trc.feature_names))
