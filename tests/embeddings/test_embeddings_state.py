"""Checkpoint keys name features and partitions, not the grouping that stores them."""

import pytest
import torch

from compemb.embeddings import (
    EmbeddingBagCollection,
    EmbeddingSpec,
    collection,
    make_embedding_bag,
)
from compemb.models import build_model
from compemb.schemes import path as path_scheme

CARDS = [3, 5000, 40, 777, 9000]


def _ids(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n, (16,), generator=g) for n in CARDS], 1)


@pytest.mark.parametrize("spec", [EmbeddingSpec("qr", "mult", collisions=4),
                                  EmbeddingSpec("path", collisions=4, path_hidden=8),
                                  EmbeddingSpec("feature", collisions=4)],
                         ids=["qr", "path", "feature"])
def test_keys_are_the_per_feature_modules_keys(spec):
    ebc = EmbeddingBagCollection(CARDS, 8, spec)
    keys = set(ebc.state_dict())
    for f, (n, s) in enumerate(zip(CARDS, ebc.specs, strict=True)):
        module = make_embedding_bag(n, 8, s)
        own = {f"features.{f}.{k}": v for k, v in module.state_dict().items()}
        assert own.keys() <= keys
        for k, v in own.items():
            assert ebc.state_dict()[k].shape == v.shape
    assert not any(k.startswith(("groups.", "modules_by_feature.")) for k in keys)


def _regrouped(monkeypatch, spec):
    """The same features under another grouping: paths unstacked, full tables kept apart."""
    monkeypatch.setattr(path_scheme, "PATH_MAX_BUCKETS", 1)
    monkeypatch.setattr(collection, "_merge_single_tables", lambda grouped, d: None)
    return EmbeddingBagCollection(CARDS, 8, spec)


@pytest.mark.parametrize("spec", [EmbeddingSpec("qr", "mult", collisions=4),
                                  EmbeddingSpec("path", collisions=4, path_hidden=8)],
                         ids=["qr", "path"])
def test_save_under_one_grouping_load_under_another(spec, monkeypatch, tmp_path):
    torch.manual_seed(0)
    saved = EmbeddingBagCollection(CARDS, 8, spec)
    torch.save(saved.state_dict(), tmp_path / "ebc.pt")
    other = _regrouped(monkeypatch, spec)
    assert len(other.groups) != len(saved.groups) or other.unstacked != saved.unstacked
    other.load_state_dict(torch.load(tmp_path / "ebc.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(other(_ids()), saved(_ids()))
    # and back
    saved2 = EmbeddingBagCollection(CARDS, 8, spec)
    saved2.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(saved2(_ids(1)), saved(_ids(1)))


def test_model_checkpoint_names_features(tmp_path):
    model = build_model("dlrm", CARDS, 13, 16, EmbeddingSpec("qr", collisions=4))
    keys = list(model.state_dict())
    assert "sparse_arch.features.1.weights.0" in keys
    again = build_model("dlrm", CARDS, 13, 16, EmbeddingSpec("qr", collisions=4))
    again.load_state_dict(model.state_dict())
    dense = torch.rand(16, 13)
    with torch.no_grad():
        torch.testing.assert_close(again(dense, _ids()), model(dense, _ids()))


def test_missing_and_misshapen_features_are_named():
    ebc = EmbeddingBagCollection(CARDS, 8, EmbeddingSpec("qr", collisions=4))
    state = ebc.state_dict()
    del state["features.3.weights.1"]
    state["features.1.weights.0"] = torch.zeros(3, 8)
    with pytest.raises(RuntimeError) as info:
        ebc.load_state_dict(state)
    assert "features.3.weights.1" in str(info.value)
    assert "size mismatch for features.1.weights.0" in str(info.value)
