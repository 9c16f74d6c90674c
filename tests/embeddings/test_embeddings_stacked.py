"""The successors' stacked forms (MD, MD + QR, block MD, CCE, TT-Rec, DHE, ROBE): checkpoints of the
per-feature modules load into them and back, CCE reclusters as its per-feature modules do, TT
equals its einsum reconstruction, and the layout is the one promised (one group, few width
classes). Outputs and gradients against the per-feature modules are tested over every scheme in
``test_embeddings_factory.py``."""

import pytest
import torch

from compemb import EmbeddingBagCollection, EmbeddingSpec
from compemb.embeddings import module_from_plan
from compemb.embeddings.batched_cce import CCEGroup
from compemb.embeddings.batched_dhe import DHEGroup
from compemb.embeddings.batched_md import MixedDimGroup
from compemb.embeddings.batched_parts import PartedGroup, _Place
from compemb.embeddings.batched_robe import RobeGroup
from compemb.embeddings.batched_tt import TTGroup
from schemekit import SCHEME_SPECS, kit_counts, spec_id

CARDS = [3, 5000, 40, 777, 120, 9000, 61]
# MD with a projection bias stays per feature (MixedDimScheme.stacking says why)
STACKED = [spec for name in ("md", "md_qr", "md_block", "cce", "tt", "dhe", "robe")
           for spec in SCHEME_SPECS[name]
           if not (name == "md" and spec.settings.bias)]  # fmt: skip
# ROBE-Z's features read the collection's one array, not arrays of their own: the checkpoint of
# its per-feature collection is tested in test_embeddings_robe.py
OWN_TABLES = [spec for spec in STACKED if not (spec.scheme == "robe" and spec.settings.shared)]
GROUPS = {"md": MixedDimGroup, "md_qr": PartedGroup, "md_block": PartedGroup, "cce": CCEGroup,
          "tt": TTGroup, "dhe": DHEGroup, "robe": RobeGroup}


def _ids(n: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.stack([torch.randint(0, c, (n,), generator=gen) for c in CARDS], 1)


def test_md_with_a_bias_stays_per_feature():
    spec = EmbeddingSpec("md", alpha=0.3, bias=True)
    ebc = EmbeddingBagCollection(CARDS, 12, spec)
    assert ebc.unstacked and all("bias" in why for why in ebc.unstacked.values())


@pytest.mark.parametrize("spec", STACKED, ids=spec_id)
def test_every_compressed_feature_is_in_one_stacked_group(spec):
    ebc = EmbeddingBagCollection(CARDS, 12, spec, counts=kit_counts(spec, CARDS))
    assert ebc.unstacked == {}
    kinds = [type(g) for g in ebc.groups]
    assert kinds.count(GROUPS[spec.scheme]) == 1


@pytest.mark.parametrize("spec", OWN_TABLES, ids=spec_id)
def test_checkpoints_of_the_per_feature_modules_load_and_back(spec):
    torch.manual_seed(0)
    counts = kit_counts(spec, CARDS)
    ebc = EmbeddingBagCollection(CARDS, 12, spec, counts=counts)
    torch.manual_seed(1)  # other values than the collection's
    modules = [module_from_plan(plan) for plan in ebc.plans]
    for m in modules:
        for b in m.buffers():
            if b.dtype == torch.bool:  # CCE's seen marks: some set, so they travel too
                b[::3] = True
    written = {f"features.{f}.{k}": v for f, m in enumerate(modules)
               for k, v in m.state_dict().items()}  # fmt: skip
    ebc.load_state_dict(written)
    ids = _ids()
    want = torch.stack([m(ids[:, f : f + 1]) for f, m in enumerate(modules)], 1)
    torch.testing.assert_close(ebc(ids), want)
    back = ebc.state_dict()
    assert set(back) == set(written)
    for key, value in written.items():  # id maps stacked at the plan's dtype (int32 ranks)
        torch.testing.assert_close(back[key], value, rtol=0, atol=0, check_dtype=False)


def _owners(module: torch.nn.Module) -> list[torch.nn.Module]:
    """What the trainer reclusters, in its order."""
    return [m for m in module.modules() if callable(getattr(m, "recluster", None))]


@pytest.mark.parametrize("spec", SCHEME_SPECS["cce"], ids=spec_id)
def test_stacked_cce_reclusters_as_its_per_feature_modules(spec):
    spec = spec.with_(kmeans_iters=5, kmeans_samples=4)
    ebc = EmbeddingBagCollection(CARDS, 12, spec)
    modules = [module_from_plan(plan) for plan in ebc.plans]
    with torch.no_grad():
        for f, m in enumerate(modules):
            for p, t in zip(m.parameters(), ebc.tables(f), strict=True):
                p.copy_(t)
    ids = _ids(400)
    ebc.train()(ids)
    for f, m in enumerate(modules):
        m.train()(ids[:, f : f + 1])
    stacked = _owners(ebc)
    per_feature = [m for m in modules if _owners(m)]
    assert len(stacked) == len(per_feature) > 0
    for j, (a, b) in enumerate(zip(stacked, per_feature, strict=True)):
        a.recluster(seed=j)
        b.recluster(seed=j)
    for f, m in enumerate(modules):
        torch.testing.assert_close(ebc(ids)[:, f], m.eval()(ids[:, f : f + 1]), rtol=0,
                                   atol=0)
    state = ebc.state_dict()
    for f, m in enumerate(modules):
        for k, v in m.state_dict().items():
            torch.testing.assert_close(state[f"features.{f}.{k}"], v, rtol=0, atol=0)


def test_stacked_cce_keeps_its_seen_marks_rank_local():
    ebc = EmbeddingBagCollection(CARDS, 12, EmbeddingSpec("cce", rows=8, chunks=2))
    (group,) = [g for g in ebc.groups if isinstance(g, CCEGroup)]
    assert group.rank_local_buffers == ("seen",)
    ebc.train()(_ids())
    assert int(group.seen.sum()) > 0


def test_md_rounded_to_multiples_of_4_has_at_most_4_width_classes():
    cards = [10**k + 7 for k in range(1, 7)] * 3
    spec = EmbeddingSpec("md", alpha=0.3, base_width=16, multiple_of=4)
    ebc = EmbeddingBagCollection(cards, 16, spec)
    (group,) = [g for g in ebc.groups if isinstance(g, MixedDimGroup)]
    assert set(group.widths) <= {4, 8, 12}  # width 16 joins the full tables
    plain = EmbeddingBagCollection(cards, 16, spec.with_(multiple_of=1))
    assert len(plain.groups[-1].widths) > 3


def test_stacked_tt_equals_the_einsum_reconstruction_in_forward_and_gradient(view_grad):
    """Every feature's full table rebuilt from its cores by one einsum, then indexed by the ids:
    the stacked lookup gives its rows and, through any loss, its cores' gradients."""
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(CARDS, 12, EmbeddingSpec("tt", rank=3))
    (group,) = [g for g in ebc.groups if isinstance(g, TTGroup)]
    ids = _ids()
    out = ebc(ids)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    d1, d2, d3 = group.dims
    for f, plan in enumerate(ebc.plans):
        if plan.spec.scheme != "tt":
            continue
        cores = [t.detach().clone().requires_grad_() for t in ebc.tables(f)]
        n1, n2, n3 = plan.partitions.radices
        g1 = cores[0].view(n1, d1, 3)
        g2 = cores[1].view(n2, 3, d2, 3)
        g3 = cores[2].view(n3, 3, d3)
        # id i = i1 + n1 (i2 + n2 i3), vector index a d2 d3 + b d3 + c
        table = torch.einsum("xap,ypbq,zqc->zyxabc", g1, g2, g3).reshape(n1 * n2 * n3, -1)
        want = table[ids[:, f]]
        torch.testing.assert_close(out[:, f], want)
        (want * weights[:, f]).sum().backward()
        for core, view in zip(cores, ebc.tables(f), strict=True):
            torch.testing.assert_close(view_grad(ebc.parameters(), view), core.grad)


def test_parts_are_placed_row_by_row_at_any_column_and_read_back():
    """The frequency parts' placement: rows of two widths written at unaligned flat positions
    (a part's columns start anywhere in a feature's W), the gradient read back from there."""
    two = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)  # at 1 and 6
    three = torch.tensor([[5.0, 6.0, 7.0]], requires_grad=True)  # at 9
    out = _Place.apply(None, 12, (torch.tensor([1, 6]), torch.tensor([9])), two, three)
    assert out.tolist() == [0, 1, 2, 0, 0, 0, 3, 4, 0, 5, 6, 7]
    out.backward(torch.arange(12.0))
    assert two.grad.tolist() == [[1, 2], [6, 7]] and three.grad.tolist() == [[9, 10, 11]]
    # over a base (non-contiguous, as the projections' output is): a copy, the base itself
    # untouched, and no gradient to the base where rows were written
    leaf = torch.arange(12.0).view(4, 3).requires_grad_()
    out = _Place.apply(leaf.t(), 0, (torch.tensor([2]),), three.detach())
    assert out.reshape(-1).tolist() == [0, 3, 5, 6, 7, 4, 7, 10, 2, 5, 8, 11]
    assert leaf.reshape(-1).tolist() == list(range(12))
    out.backward(torch.ones(3, 4))
    assert leaf.grad.reshape(-1).tolist() == [1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1]
