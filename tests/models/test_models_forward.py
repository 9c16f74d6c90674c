"""Forward and backward of every model x scheme x operation, and the parts by hand."""

from __future__ import annotations

import math

import pytest
import torch

from compemb.embeddings import EmbeddingSpec
from compemb.models import MODELS, CrossNetwork, DotInteraction, build_model
from compemb.models.parts import MLP
from schemekit import spec_id

CARDS = [50, 7, 300, 3, 120]  # the last one is a multi-hot bag feature
SPECS = [
    EmbeddingSpec("full"),
    EmbeddingSpec("hash", collisions=4),
    *[EmbeddingSpec("qr", operation=op, collisions=4) for op in ("concat", "add", "mult")],
    *[EmbeddingSpec("mixed_radix", operation=op, k=2) for op in ("concat", "add", "mult")],
    *[EmbeddingSpec("crt", operation=op, k=2) for op in ("concat", "add", "mult")],
    EmbeddingSpec("path", collisions=4, path_hidden=8),
    EmbeddingSpec("path", collisions=4, path_transform="linear"),
    EmbeddingSpec("feature", collisions=4),
    EmbeddingSpec("qr", operation="mult", collisions=4, threshold=50, sparse=True),
]


def _inputs(num_dense: int, batch: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in CARDS[:-1]], 1)
    lengths = torch.tensor([0, 1, 3, 2, 1, 4][:batch])
    values = torch.randint(0, CARDS[-1], (int(lengths.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return torch.randn(batch, num_dense, generator=g), ids, ((values, offsets),)


@pytest.mark.parametrize("num_dense", [0, 3])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward(name: str, spec: EmbeddingSpec, num_dense: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, CARDS, num_dense, 8, spec)
    dense, ids, bags = _inputs(num_dense)
    logits = model(dense, ids, bags)
    assert logits.shape == (6,) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(6)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_row_depends_on_its_own_ids_only(name: str, spec: EmbeddingSpec) -> None:
    """Changing one category of one row changes that row's logit and no other: every feature
    reaches the output, and rows never mix (as a wrong reshape or pooling offset would)."""
    torch.manual_seed(0)
    model = build_model(name, CARDS, 3, 8, spec).eval()
    dense, ids, bags = _inputs(3)
    before = model(dense, ids, bags)
    others = [0, 1, 3, 4, 5]
    for f in range(ids.shape[1]):
        # A neighbour id shares its quotient row, and path's linear init starts every bucket's
        # map at the identity: try ids near and far.
        moved = []
        for delta in (1, -1, 5):
            changed = ids.clone()
            changed[2, f] = (changed[2, f] + delta) % CARDS[f]
            after = model(dense, changed, bags)
            assert torch.equal(after[others], before[others]), f"feature {f} leaks across rows"
            moved.append(bool(after[2] != before[2]))
        assert any(moved), f"feature {f} does not reach the logit"
    values, offsets = bags[0]
    bag = values.clone()
    bag[offsets[2]] = (bag[offsets[2]] + 5) % CARDS[-1]  # row 2 holds a bag of 3 ids
    after = model(dense, ids, ((bag, offsets),))
    assert after[2] != before[2] and torch.equal(after[others], before[others])


@pytest.mark.parametrize("scheme", ["full", "hash", "qr", "path"])
@pytest.mark.parametrize("sparse", [False, True])
def test_large_tables_get_sparse_gradients_when_asked(scheme: str, sparse: bool) -> None:
    # The collection gives tables of a few thousand rows dense gradients (cheaper than sparse);
    # a 10^6-category feature must follow spec.sparse, as Adagrad/SGD training relies on it.
    own = {"full": {}, "path": {"collisions": 4, "path_hidden": 4}}.get(scheme, {"collisions": 4})
    spec = EmbeddingSpec(scheme, sparse=sparse, **own)
    model = build_model("dlrm", [10**6, 5], 2, 4, spec)
    ids = torch.tensor([[1, 2], [999_999, 4]])
    model(torch.zeros(2, 2), ids).sum().backward()
    grads = [p.grad for p in model.sparse_arch.parameters()]
    assert any(g.is_sparse for g in grads) == sparse


def test_dlrm_widths_match_the_paper() -> None:
    model = build_model("dlrm", [10] * 26, 13, 16, EmbeddingSpec("full"))
    assert model.over_arch.mlp[0].in_features == 367  # 16 + 27 * 26 / 2
    assert [m.out_features for m in model.dense_arch.mlp if hasattr(m, "out_features")] == [
        512, 256, 64, 16,
    ]  # fmt: skip
    assert isinstance(model.dense_arch.mlp[-1], torch.nn.ReLU)  # ReLU after the last bottom layer
    no_dense = build_model("dlrm", [10] * 26, 0, 16, EmbeddingSpec("full"))
    assert no_dense.dense_arch is None and no_dense.over_arch.mlp[0].in_features == 325


def test_dcn_widths_match_the_paper() -> None:
    model = build_model("dcn", [10] * 26, 13, 16, EmbeddingSpec("full"))
    assert model.cross.weight.shape == (6, 429)
    assert model.over_arch.mlp[0].in_features == 429 + 64


def test_feature_generation_gives_k_vectors_per_feature() -> None:
    model = build_model("dlrm", [100, 100], 2, 4, EmbeddingSpec("feature", collisions=10))
    assert model.interaction.num_vectors == 2 * 2 + 1


def test_dot_interaction_by_hand() -> None:
    v = torch.tensor([[[1.0, 0.0], [2.0, 3.0], [4.0, 5.0]]])
    # pairs (1,0), (2,0), (2,1): 2, 4, 8 + 15
    assert DotInteraction(3)(v).tolist() == [[2.0, 4.0, 23.0]]


def test_cross_network_by_hand() -> None:
    cross = CrossNetwork(2, 2)
    with torch.no_grad():
        cross.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        cross.bias.copy_(torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    x0 = torch.tensor([[2.0, 3.0]])
    x1 = x0 * 2.0 + torch.tensor([0.5, 0.5]) + x0  # x0 . w0 = 2
    x2 = x0 * x1[0, 1] + torch.tensor([0.0, 1.0]) + x1
    assert torch.allclose(cross(x0), x2)


def test_mlp_reference_init_statistics() -> None:
    torch.manual_seed(0)
    layer = MLP(400, (600,), final_activation=False)[0]
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    assert layer.bias.std().item() == pytest.approx(math.sqrt(1 / 600), rel=0.15)


def test_models_reject_bad_input() -> None:
    model = build_model("dcn", CARDS, 3, 8, EmbeddingSpec("full"))
    dense, ids, bags = _inputs(3)
    with pytest.raises(ValueError, match=r"dense must be \(B, 3\)"):
        model(dense[:, :2], ids, bags)
    with pytest.raises(ValueError, match="unknown model 'dlmr'"):
        build_model("dlmr", CARDS, 3, 8, EmbeddingSpec("full"))
