"""Planted synthetic data: determinism, the Zipf sampler, and a recorded optimum worth learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compemb.cli import main
from compemb.data import SynthOptions, generate_synthetic, open_dataset
from compemb.data.storage import read_category_counts, read_metadata
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
    options = SynthOptions(
        rows=70_000, cardinalities=(1000, 200, 20, 5), seed=0, numbering="population"
    )
    losses = generate_synthetic(tmp_path / "s", options)
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


def _stream(folder) -> np.ndarray:
    """Every row's ids (rows, F) in generation order: train, then test, then validation."""
    return np.concatenate(
        [np.load(folder / s / "categorical.npy") for s in ("train", "test", "val")]
    )


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> dict[str, object]:
    """One small planted dataset written under every numbering (same rows)."""
    root = tmp_path_factory.mktemp("numbered")
    cards = (7, 5000, 10_000_000)
    for numbering in ("population", "first-seen", "rank", "random"):
        options = SynthOptions(rows=7000, cardinalities=cards, seed=3, num_dense=2,
                               numbering=numbering)  # fmt: skip
        generate_synthetic(root / numbering, options)
    return {"root": root, "cards": cards}


def test_first_seen_numbers_ids_by_first_appearance_and_counts_what_is_present(numbered) -> None:
    root = numbered["root"]
    ids = _stream(root / "first-seen")
    meta = read_metadata(root / "first-seen")
    assert meta.options["numbering"] == "first-seen"
    assert tuple(meta.options["cardinalities"]) == numbered["cards"]
    for f in range(ids.shape[1]):
        values, first = np.unique(ids[:, f], return_index=True)
        # ids 0..n-1 all occur, and id i first appears before id i + 1
        assert values.tolist() == list(range(meta.cardinalities[f]))
        assert bool(np.all(np.diff(first) > 0))
    population = _stream(root / "population")
    assert meta.cardinalities == tuple(len(np.unique(c)) for c in population.T)
    assert meta.cardinalities[0] == 7 and meta.cardinalities[2] < 7000  # 10 M drawn from
    assert read_metadata(root / "population").cardinalities == numbered["cards"]


@pytest.mark.parametrize("numbering", ["first-seen", "rank", "random"])
def test_every_numbering_relabels_the_same_rows_one_to_one(numbered, numbering) -> None:
    root = numbered["root"]
    before, after = _stream(root / "population"), _stream(root / numbering)
    for f in range(before.shape[1]):
        pairs = np.unique(np.stack([before[:, f], after[:, f]], axis=1), axis=0)
        # a bijection between the ids present and [0, n)
        assert len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1])) == len(pairs)
        if numbering == "rank":  # population order kept
            assert bool(np.all(np.diff(pairs[:, 1]) > 0))
    for split in ("train", "val", "test"):
        for name in ("labels.npy", "dense.npy"):
            assert (root / "population" / split / name).read_bytes() == (
                root / numbering / split / name
            ).read_bytes()
    assert read_metadata(root / numbering).options["numbering"] == numbering
    assert (
        read_metadata(root / numbering).hidden_model
        == read_metadata(root / "population").hidden_model
    )


def test_random_numbering_is_seeded_and_leaves_no_order(numbered, tmp_path) -> None:
    root = numbered["root"]
    again = SynthOptions(rows=7000, cardinalities=numbered["cards"], seed=3, num_dense=2,
                         numbering="random")  # fmt: skip
    generate_synthetic(tmp_path / "again", again)
    assert np.array_equal(_stream(tmp_path / "again"), _stream(root / "random"))
    population, shuffled = _stream(root / "population"), _stream(root / "random")
    pairs = np.unique(np.stack([population[:, 1], shuffled[:, 1]], axis=1), axis=0)
    assert not bool(np.all(np.diff(pairs[:, 1]) > 0))


@pytest.mark.parametrize("numbering", ["population", "first-seen"])
def test_counts_are_the_training_split_ids(numbered, numbering) -> None:
    folder = numbered["root"] / numbering
    counts = read_category_counts(folder)
    train = np.load(folder / "train" / "categorical.npy")
    meta = read_metadata(folder)
    assert meta.counts and len(counts) == train.shape[1]
    for f, card in enumerate(meta.cardinalities):
        assert np.array_equal(counts[f], np.bincount(train[:, f], minlength=card))


def test_synth_cli_numbering_options(tmp_path, capsys) -> None:
    base = ["--rows", "700", "--cardinalities", "100000,20", "--seed", "1"]
    assert main(["synth", str(tmp_path / "keep"), *base, "--keep-cardinalities"]) == 0
    assert read_metadata(tmp_path / "keep").cardinalities == (100_000, 20)
    assert read_metadata(tmp_path / "keep").options["numbering"] == "population"
    assert main(["synth", str(tmp_path / "rank"), *base, "--numbering", "rank"]) == 0
    meta = read_metadata(tmp_path / "rank")
    assert meta.options["numbering"] == "rank" and meta.cardinalities[0] < 700
    assert "700 rows" in capsys.readouterr().out
    argv = ["synth", str(tmp_path / "both"), *base, "--keep-cardinalities", "--numbering", "rank"]
    assert main(argv) == 2
    assert "--keep-cardinalities" in capsys.readouterr().err
    with pytest.raises(ValueError, match="numbering"):
        SynthOptions(rows=100, cardinalities=(5,), numbering="sorted")
