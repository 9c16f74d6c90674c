"""ROBE: forward and gradient against the paper's formulas written out here (shared array and
per-feature arrays, offsets unaligned and aligned), the stacked form against the per-feature
collection (checkpoints both ways), the shared array as one plan entry and one checkpoint key,
hashes saved with the model, settings errors, budget fitting, and the TorchRec route (one stock
table for the shared array)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from compemb.config import dump_config, load_config_text, load_run_config
from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    make_embedding_bag,
)
from compemb.embeddings.batched_robe import RobeGroup
from compemb.embeddings.robe import RobeEmbeddingBag
from compemb.schemes.robe import RobeScheme
from compemb.spec import plan_collection, shared_plans

PRIME = 2**31 - 1  # the paper's hash: ((a x + b) mod P) mod M, P the Mersenne prime 2^31 - 1
CARDS = [1000, 37, 250, 5000]
D = 8
FORMS = {
    "shared": {"shared": True, "aligned": False},
    "shared-aligned": {"shared": True, "aligned": True},
    "per-feature": {"shared": False, "aligned": False},
    "per-feature-aligned": {"shared": False, "aligned": True},
}


def _offset(a: int, b: int, x: int, m: int, z: int, aligned: bool) -> int:
    """Where chunk (a, b) of id x starts in an array of m elements (the paper's ROBE-Z: any
    element; aligned: a multiple of z)."""
    h = (a * x + b) % PRIME
    return z * (h % (m // z)) if aligned else h % m


def _paper_vector(array: list[float], coefficients: list[list[int]], x: int, z: int,
                  aligned: bool) -> list[float]:
    """Id x's vector: chunk j is z consecutive elements of the array from its offset, read
    circularly."""
    m, out = len(array), []
    for a, b in zip(*coefficients, strict=True):
        start = _offset(a, b, x, m, z, aligned)
        out += [array[(start + e) % m] for e in range(z)]
    return out


def _arrays(ebc: EmbeddingBagCollection) -> tuple[list[list[float]], list[list[list[int]]]]:
    """Each feature's flat array and hashes, read from the checkpoint keys."""
    state = ebc.state_dict()
    arrays, hashes = [], []
    for f in range(len(CARDS)):
        key = "shared.robe.weight" if f"features.{f}.weight" not in state \
            else f"features.{f}.weight"
        arrays.append(state[key].reshape(-1).tolist())
        hashes.append(state[f"features.{f}.coefficients"].tolist())
    return arrays, hashes


@pytest.mark.parametrize("form", list(FORMS))
def test_forward_and_gradient_are_the_papers(form, view_grad):
    torch.manual_seed(0)
    spec = EmbeddingSpec("robe", size=24, block=4, seed=5, **FORMS[form])
    ebc = EmbeddingBagCollection(CARDS, D, spec)
    arrays, hashes = _arrays(ebc)
    aligned = spec.aligned
    ids = torch.tensor([[0, 0, 0, 0], [1, 36, 249, 4999], [999, 7, 7, 123]])
    out = ebc(ids)
    for row in range(ids.shape[0]):
        for f in range(len(CARDS)):
            want = _paper_vector(arrays[f], hashes[f], int(ids[row, f]), 4, aligned)
            assert out[row, f].tolist() == want, (row, f)
    # the gradient: each output coordinate's gradient lands on the element it read
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    for f in range(len(CARDS)):
        m = len(arrays[f])
        expected = torch.zeros(m)
        for fg in range(len(CARDS)) if spec.shared else [f]:
            for row in range(ids.shape[0]):
                x = int(ids[row, fg])
                for j, (a, b) in enumerate(zip(*hashes[fg], strict=True)):
                    start = _offset(a, b, x, m, 4, aligned)
                    for e in range(4):
                        expected[(start + e) % m] += probe[row, fg, 4 * j + e]
        got = view_grad(ebc.parameters(), ebc.tables(f)[-1]).reshape(-1)
        torch.testing.assert_close(got, expected)


def test_unaligned_blocks_wrap_around_the_end():
    for member in (None, 0):  # the per-feature (M, 1) array and the (M / Z, Z) one
        bag = RobeEmbeddingBag(50, 4, size=12, block=4, member=member)
        with torch.no_grad():
            bag.array.copy_(torch.arange(12.0).reshape(bag.array.shape))
        starts = {int(bag(torch.tensor([[i]]))[0, 0]) for i in range(50)}
        assert max(starts) > 8  # some block starts within Z - 1 of the end
        for i in range(50):
            v = bag(torch.tensor([[i]]))[0]
            assert v.tolist() == [(v[0].item() + e) % 12 for e in range(4)]


@pytest.mark.parametrize(("member", "aligned"), [(None, True), (None, False), (0, False)])
def test_gradcheck(member, aligned):
    bag = RobeEmbeddingBag(30, 4, size=8, block=2, aligned=aligned, member=member,
                           dtype=torch.float64)
    ids, offsets = torch.tensor([3, 4, 3, 29]), torch.tensor([0, 1, 3])
    weights = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(
        bag, {"weight": w}, (ids, offsets, weights)), bag.weight.detach().requires_grad_())


@pytest.mark.parametrize("form", list(FORMS))
def test_sparse_gradients_equal_dense_ones(form, view_grad):
    torch.manual_seed(0)
    # more rows than the stacked tables' dense-gradient limit, so the gradient is sparse
    spec = EmbeddingSpec("robe", size=4 * 5000, block=4, **FORMS[form])
    dense = EmbeddingBagCollection(CARDS, D, spec)
    sparse = EmbeddingBagCollection(CARDS, D, spec.with_(sparse=True))
    sparse.load_state_dict(dense.state_dict())
    ids = torch.stack([torch.arange(20) % n for n in CARDS], dim=1)
    for ebc in (dense, sparse):
        (ebc(ids) * torch.arange(8.0)).sum().backward()
    assert any(p.grad.is_sparse for p in sparse.table_parameters())
    for f in range(len(CARDS)):
        torch.testing.assert_close(view_grad(sparse.parameters(), sparse.tables(f)[-1]),
                                   view_grad(dense.parameters(), dense.tables(f)[-1]))


def _per_feature(monkeypatch, spec: EmbeddingSpec) -> EmbeddingBagCollection:
    """The collection as it was before ROBE was stacked: one module per feature (ROBE-Z's
    array held by the collection, each feature reading it)."""
    with monkeypatch.context() as patch:
        patch.setattr(RobeScheme, "stacking", lambda self, plan: "the layout before stacking")
        ebc = EmbeddingBagCollection(CARDS, D, spec)
    assert len(ebc.unstacked) == len(CARDS) - 1  # the 37-category feature keeps its full table
    return ebc


@pytest.mark.parametrize("form", list(FORMS))
def test_the_stacked_form_equals_the_per_feature_collection(form, monkeypatch, tmp_path,
                                                            view_grad):
    """A checkpoint of the per-feature collection loads into the stacked one and back, and
    both give the same vectors and gradients, multi-hot bags (a subset of the group's
    features per call) included."""
    spec = EmbeddingSpec("robe", size=4 * 5000, block=4, threshold=40, seed=2, cap_at_full=False,
                         **FORMS[form])
    torch.manual_seed(0)
    before = _per_feature(monkeypatch, spec)
    stacked = EmbeddingBagCollection(CARDS, D, spec)
    assert stacked.unstacked == {} and isinstance(stacked.groups[0], RobeGroup)
    torch.save(before.state_dict(), tmp_path / "before.pt")
    stacked.load_state_dict(torch.load(tmp_path / "before.pt", weights_only=True))
    assert set(stacked.state_dict()) == set(before.state_dict())
    gen = torch.Generator().manual_seed(4)
    ids = torch.stack([torch.randint(0, n, (30,), generator=gen) for n in CARDS[:2]], dim=1)
    bags = [(torch.randint(0, n, (50,), generator=gen), torch.tensor([0, 3, 3, 9, 20, 49]))
            for n in CARDS[2:]]
    out = stacked(ids[:6], bags)
    want = before(ids[:6], bags)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    probe = torch.randn(out.shape, generator=gen)
    (out * probe).sum().backward()
    (want * probe).sum().backward()
    for f in range(len(CARDS)):
        torch.testing.assert_close(view_grad(stacked.parameters(), stacked.tables(f)[-1]),
                                   view_grad(before.parameters(), before.tables(f)[-1]))
    with torch.no_grad():  # and back
        stacked.tables(3)[-1].mul_(2)
    again = _per_feature(monkeypatch, spec.with_(seed=7))  # other hashes until loaded
    again.load_state_dict(stacked.state_dict())
    single = torch.stack([torch.randint(0, n, (30,), generator=gen) for n in CARDS], dim=1)
    torch.testing.assert_close(again(single), stacked(single), rtol=0, atol=0)


@pytest.mark.parametrize("shared", [True, False])
def test_stacked_unaligned_blocks_wrap_around_the_end(shared):
    ebc = EmbeddingBagCollection([50, 60], 4, EmbeddingSpec("robe", size=12, block=4,
                                                            shared=shared, cap_at_full=False))
    (group,) = ebc.groups
    assert isinstance(group, RobeGroup)
    with torch.no_grad():
        for f in range(2):
            table = ebc.tables(f)[0]
            table.copy_(torch.arange(12.0).reshape(table.shape))
    out = ebc(torch.stack([torch.arange(50), torch.arange(50) + 10], dim=1))
    assert out[:, :, 0].max() > 8  # some blocks start within Z - 1 of the end
    assert out.tolist() == [[[(v[0] + e) % 12 for e in range(4)] for v in row]
                            for row in out.tolist()]


def test_the_shared_array_is_one_plan_entry_and_one_key(tmp_path):
    spec = EmbeddingSpec("robe", size=64, block=4, shared=True, aligned=False, threshold=40)
    plans = plan_collection(CARDS, D, spec)
    (shared,) = shared_plans(plans)
    assert [p.spec.scheme for p in plans] == ["robe", "full", "robe", "robe"]
    assert shared.members == 3 and [p.member for p in plans if p.shared] == [0, 1, 2]
    assert [(t.name, t.shape) for t in shared.tables] == [("weight", (16, 4))]
    ebc = EmbeddingBagCollection(CARDS, D, spec)
    assert ebc.num_parameters == embedding_parameters(CARDS, D, spec) == 64 + 37 * D
    assert sorted(ebc.state_dict()) == [
        "features.0.coefficients", "features.1.weight", "features.2.coefficients",
        "features.3.coefficients", "shared.robe.weight"]
    # the features hash to other offsets
    hashes = [ebc.state_dict()[f"features.{f}.coefficients"] for f in (0, 2, 3)]
    assert not hashes[0].equal(hashes[1]) and not hashes[1].equal(hashes[2])
    assert hashes[0].dtype == torch.int32  # values below 2^31 - 1
    torch.save(ebc.state_dict(), tmp_path / "ebc.pt")
    loaded = EmbeddingBagCollection(CARDS, D, spec.with_(seed=9))  # another seed: other hashes
    loaded.load_state_dict(torch.load(tmp_path / "ebc.pt", weights_only=True))
    ids = torch.stack([torch.arange(7) * (n // 7) for n in CARDS], dim=1)
    torch.testing.assert_close(loaded(ids), ebc(ids), rtol=0, atol=0)
    assert set(loaded.state_dict()) == set(ebc.state_dict())


def test_fit_budget_searches_the_one_array():
    spec = EmbeddingSpec("robe", size=4, block=4, shared=True, aligned=False, threshold=40)
    fitted = fit_budget(CARDS, D, spec, 10_000)
    assert fitted.size == 10_000 - 37 * D - (10_000 - 37 * D) % 4
    assert embedding_parameters(CARDS, D, fitted) <= 10_000


def test_settings_errors_name_the_value():
    with pytest.raises(ValueError, match="scheme 'robe' needs size"):
        EmbeddingSpec("robe")
    with pytest.raises(ValueError, match="array size 10 must be a multiple of the block size 4"):
        EmbeddingSpec("robe", size=10, block=4, shared=True)
    with pytest.raises(ValueError, match="block must be an int >= 1, got 0"):
        EmbeddingSpec("robe", size=10, block=0)
    with pytest.raises(ValueError, match="shared must be a bool, got 1"):
        EmbeddingSpec("robe", size=16, shared=1)
    with pytest.raises(ValueError, match="embedding_dim=6 must be a multiple of the block size 4"):
        make_embedding_bag(100, 6, EmbeddingSpec("robe", size=16, block=4))


def test_per_feature_counts_and_budget():
    cards = [3, 20, 5000, 9000]
    spec = EmbeddingSpec("robe", size=200, block=4, threshold=25, shared=False)
    ebc = EmbeddingBagCollection(cards, 8, spec)
    # at most 25 categories: full tables (3 x 8, 20 x 8); the others hold 200 each
    assert [p.spec.scheme for p in ebc.plans] == ["full", "full", "robe", "robe"]
    assert ebc.num_parameters == embedding_parameters(cards, 8, spec) == 24 + 160 + 200 + 200
    fitted = fit_budget(cards, 8, spec, 10_000)
    used = embedding_parameters(cards, 8, fitted)
    assert fitted.size % 4 == 0 and used <= 10_000
    assert embedding_parameters(cards, 8, fitted.with_(size=fitted.size + 4)) > 10_000


def _torchrec():
    pytest.importorskip("torchrec")
    from compemb.embeddings import torchrec

    return torchrec


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("aligned", [False, True])
def test_torchrec_reads_the_shared_array_from_one_stock_table(aligned):
    trec = _torchrec()
    torch.manual_seed(0)
    spec = EmbeddingSpec("robe", size=24, block=4, shared=True, aligned=aligned)
    trc = trec.TorchRecEmbeddingCollection(CARDS, D, spec)
    (ec,) = trc.unpooled.values()
    (config,) = ec.embedding_configs()
    assert (config.name, config.num_embeddings, config.embedding_dim) == ("robe", 6, 4)
    assert config.feature_names == [f"f{f}__0" for f in range(4)]
    local = EmbeddingBagCollection(CARDS, D, spec)
    state = trc.local_state_dict({k: v.detach() for k, v in trc.state_dict().items()})
    assert sorted(state) == sorted(local.state_dict())
    local.load_state_dict(state)
    gen = torch.Generator().manual_seed(2)
    ids = torch.stack([torch.randint(0, n, (16,), generator=gen) for n in CARDS], dim=1)
    ids[0] = torch.tensor([n - 1 for n in CARDS])
    out = trec.keyed_to_batch(trc(trec.ids_to_kjt(ids, trc.feature_names)), D)
    ref = local(ids)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same elements, read exactly
    probe = torch.randn(out.shape, generator=gen)
    (out * probe).sum().backward()
    (ref * probe).sum().backward()
    torch.testing.assert_close(trc.named_tables()["robe"].grad, local.tables(0)[0].grad)
    # the key map both ways
    arch = trec.TorchRecSparseArch(CARDS, D, spec)
    arch.load_local_state_dict(local.state_dict())
    torch.testing.assert_close(arch(ids), ref, rtol=0, atol=0)


def test_torchrec_refuses_per_feature_unaligned_by_name():
    trec = _torchrec()
    with pytest.raises(ValueError, match="scheme 'robe' with shared=False and aligned=False has "
                                         "no TorchRec route"):
        trec.TorchRecEmbeddingCollection([1000], 8, EmbeddingSpec("robe", size=64, shared=False,
                                                                  aligned=False))


def test_docstring_examples_run():
    import doctest

    from compemb.embeddings import _universal, batched_robe, robe

    for module in (robe, batched_robe, _universal):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


OLD = Path(__file__).parents[1] / "fixtures" / "robe_per_feature_checkpoint.pt"


def test_robe_z_is_the_default_and_configs_written_now_keep_their_form():
    spec = EmbeddingSpec("robe", size=64)
    assert (spec.shared, spec.aligned, spec.cap_at_full) == (True, False, True)
    for form in (spec, spec.with_(shared=False, aligned=True)):
        written = {k: v for k, v in form.to_dict().items() if k != "sparse"}  # model.sparse's
        config = load_config_text(yaml.safe_dump({"model": {"embedding": written}}), "saved")
        assert config.model.embedding.settings == form.settings
        text = dump_config(config)
        assert load_config_text(text, "again").model.embedding.settings == form.settings


def test_configs_and_checkpoints_written_before_robe_z_load_as_they_were(tmp_path):
    """The fixture holds collections built by the code before ROBE-Z (an array per feature,
    aligned by default, hashes not saved), with each spec as a run's config.yaml held it: the
    spec reads as that form, the state loads, the outputs are the ones it gave."""
    old = torch.load(OLD, weights_only=True)
    cards, d, ids = old["cards"], old["dim"], old["ids"]
    for name, case in old["cases"].items():
        written = {k: v for k, v in case["config"].items() if k != "sparse"}  # model.sparse's
        saved = tmp_path / f"{name}.yaml"  # as a run's config.yaml: no cap_at_full then
        saved.write_text(yaml.safe_dump({"model": {"embedding_dim": d, "embedding": written}}))
        spec = load_run_config(saved).model.embedding.with_(sparse=False)
        assert (spec.shared, spec.cap_at_full) == (False, False), name
        assert spec.aligned == case["config"]["aligned"], name
        ebc = EmbeddingBagCollection(cards, d, spec)
        missing = set(ebc.state_dict()) - set(case["state"])
        assert missing and all(k.endswith(".coefficients") for k in missing), name
        ebc.load_state_dict(case["state"])  # without hashes: its config's seed draws them
        torch.testing.assert_close(ebc(ids), case["output"], rtol=0, atol=0, msg=name)
        if "torchrec_keys" in case and importlib.util.find_spec("torchrec") is not None:
            from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

            keys = TorchRecEmbeddingCollection(cards, d, spec, plans=ebc.plans).state_key_map()
            assert {k: keys[k] for k in case["torchrec_keys"]} == case["torchrec_keys"], name


@pytest.mark.parametrize(("shared", "full"), [(False, [3, 8]), (True, [])])
def test_no_feature_holds_more_than_its_full_table(shared, full):
    """Decided by bytes: per feature, an array of 64 float32 and 2 x 2 int32 hashes (272 bytes)
    against a full table of n x 8 float32 (n = 8: 256 bytes; n = 9: 288); shared, a feature
    holds only its hashes (16 bytes)."""
    cards = [3, 8, 9, 1000]
    spec = EmbeddingSpec("robe", size=64, block=4, shared=shared)
    plans = plan_collection(cards, 8, spec)
    assert [p.num_categories for p in plans if p.spec.scheme == "full"] == full
    ebc = EmbeddingBagCollection(cards, 8, spec)
    assert ebc.num_parameters == embedding_parameters(cards, 8, spec)
    assert ebc.num_parameters == 64 * (1 if shared else 2) + 8 * sum(full)
    old = EmbeddingSpec("robe", size=64, block=4, shared=False, cap_at_full=False)
    assert embedding_parameters(cards, 8, old) == 4 * 64  # as compemb planned before
