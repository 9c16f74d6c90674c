"""Table step ratios: every variant timed against the full tables, two layers in memory at most."""

from __future__ import annotations

import math
import weakref

import pytest

from compemb.config import config_from_dict
from compemb.data import SynthOptions, generate_synthetic, open_dataset
from compemb.experiments import speed

EMBEDDINGS = {
    "full": {"scheme": "full"},
    "hash c=4": {"scheme": "hash", "collisions": 4},
    "qr mult c=4": {"scheme": "qr", "operation": "mult", "collisions": 4},
    "robe": {"scheme": "robe", "size": 512},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed") / "data"
    generate_synthetic(folder, SynthOptions(rows=700, cardinalities=(300, 90, 7), num_dense=2))
    return open_dataset(folder)


def test_at_most_two_layers_exist_at_once_and_every_ratio_comes_out(dataset, monkeypatch):
    built = speed.model_for
    alive: list[weakref.ref] = []
    most = 0

    def counting(*args, **kwargs):
        nonlocal most
        model = built(*args, **kwargs)
        alive.append(weakref.ref(model.sparse_arch))
        most = max(most, sum(ref() is not None for ref in alive))
        return model

    monkeypatch.setattr(speed, "model_for", counting)
    configs = {label: config_from_dict({"model": {"embedding": spec}}, label)
               for label, spec in EMBEDDINGS.items()}  # fmt: skip
    ratios = speed.table_step_ratios(configs, "full", dataset, batch_size=32, num_batches=2,
                                     rounds=3)  # fmt: skip
    assert list(ratios) == list(EMBEDDINGS)
    assert ratios["full"] == 1.0
    assert all(0 < r < math.inf for r in ratios.values())
    assert len(alive) == 1 + 3 * (len(EMBEDDINGS) - 1)  # the base once, the others every round
    assert most == 2


def test_an_unknown_base_is_refused(dataset):
    configs = {"hash": config_from_dict({"model": {"embedding": EMBEDDINGS["hash c=4"]}})}
    with pytest.raises(ValueError, match="base 'full' is not among the variants timed"):
        speed.table_step_ratios(configs, "full", dataset, batch_size=32)
