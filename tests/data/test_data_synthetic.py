"""Planted synthetic data: determinism, the Zipf sampler, and a recorded optimum worth learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compemb.data import SynthOptions, generate_synthetic, open_dataset
from compemb.data.synthetic import category_hash, parse_cardinalities, zipf_ids


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path) -> None:
    options = SynthOptions(rows=3000, cardinalities=(50, 10_000_000, 3), seed=4, num_dense=2)
    generate_synthetic(tmp_path / "a", options)
    generate_synthetic(tmp_path / "b", options)
    generate_synthetic(
        tmp_path / "c",
        SynthOptions(rows=3000, cardinalities=(50, 10_000_000, 3), seed=5, num_dense=2),
    )
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    a = np.load(tmp_path / "a" / "train" / "categorical.npy")
    c = np.load(tmp_path / "c" / "train" / "categorical.npy")
    assert not np.array_equal(a, c)


def test_folder_follows_the_protocol_and_the_optimum_beats_the_base_rate(tmp_path) -> None:
    losses = generate_synthetic(
        tmp_path / "s", SynthOptions(rows=70_000, cardinalities=(1000, 200, 20, 5), seed=0)
    )
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["rows"] == {"train": 60_000, "test": 5000, "val": 5000}
    hidden = meta["hidden_model"]
    assert hidden["optimal_test_log_loss"] == losses["optimal_test_log_loss"]
    assert hidden["optimal_test_log_loss"] < hidden["constant_test_log_loss"] - 0.05
    ds = open_dataset(tmp_path / "s")
    assert ds.cardinalities == (1000, 200, 20, 5) and ds.num_dense == 13
    (test,) = ds.batches("test", 65536)
    rate = float(test.labels.mean())
    entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert hidden["constant_test_log_loss"] == pytest.approx(entropy, rel=1e-5)
    assert int(test.categorical.max()) < 1000 and int(test.categorical.min()) >= 0
    assert 0.05 < rate < 0.6


def test_zipf_ids_follow_the_power_law_and_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    ids = zipf_ids(rng.random(400_000), 10_000_000, 1.1)
    assert ids.min() >= 0 and ids.max() < 10_000_000
    counts = np.bincount(ids[ids < 4], minlength=4)
    # P(k) ~ (k + 1) ** -1.1 over the continuous approximation: count(0) / count(1) ~ 2 ** 1.1
    assert 1.5 < counts[0] / counts[1] < 2.6
    assert counts[1] > counts[2] > counts[3]
    assert set(zipf_ids(np.array([0.0, 0.999999999]), 3, 1.0).tolist()) <= {0, 1, 2}
    assert zipf_ids(np.array([1.0]), 7, 2.0).tolist() == [6]


def test_category_hash_is_a_pure_function_of_seed_feature_and_id() -> None:
    ids = np.array([0, 1, 2**31 - 1])
    assert np.array_equal(category_hash(3, 1, ids), category_hash(3, 1, ids))
    assert len(set(category_hash(3, 1, ids).tolist())) == 3
    assert not np.array_equal(category_hash(3, 1, ids), category_hash(3, 2, ids))
    assert not np.array_equal(category_hash(3, 1, ids), category_hash(4, 1, ids))


def test_cardinality_parsing_and_option_checks() -> None:
    assert len(parse_cardinalities("criteo-kaggle")) == 26
    assert parse_cardinalities("5, 7") == (5, 7)
    with pytest.raises(ValueError, match="criteo-kaggle"):
        parse_cardinalities("5,x")
    with pytest.raises(ValueError, match="zipf"):
        SynthOptions(rows=100, cardinalities=(5,), zipf=0)
    with pytest.raises(ValueError, match="rows"):
        SynthOptions(rows=3, cardinalities=(5,))
