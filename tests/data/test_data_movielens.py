"""MovieLens-100k, read in place from the installed recbole package (never copied)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compemb.data import open_dataset
from compemb.data.movielens import (
    MOVIELENS_FEATURES,
    load_movielens_100k,
    movielens_100k_counts,
    movielens_100k_dir,
)


@pytest.fixture(scope="module")
def movielens():
    return open_dataset("movielens")


def test_features_cardinalities_and_split_sizes(movielens) -> None:
    assert movielens.feature_names == MOVIELENS_FEATURES
    assert movielens.cardinalities == (943, 1682, 61, 2, 21, 795, 72, 19)
    assert movielens.num_dense == 0 and movielens.num_bag_features == 1
    assert [movielens.num_rows(s) for s in ("train", "val", "test")] == [80_000, 10_000, 10_000]


def test_rows_match_the_raw_files(movielens) -> None:
    folder = movielens_100k_dir()
    raw = [line.split("\t") for line in (folder / "ml-100k.inter").read_text().splitlines()[1:]]
    labels = sum(float(r[2]) >= 4 for r in raw)
    batches = [b for s in ("train", "val", "test") for b in movielens.batches(s, 4096)]
    assert sum(int(b.labels.sum()) for b in batches) == labels
    cat = torch.cat([b.categorical for b in batches])
    assert cat.min() >= 0
    assert (cat.max(dim=0).values + 1).tolist() == list(movielens.cardinalities[:7])
    for b in batches:
        values, offsets = b.bags[0]
        assert offsets[0] == 0 and bool((torch.diff(offsets) >= 1).all())  # every movie has genres
        assert 0 <= values.min() and values.max() < 19


def test_missing_release_year_is_its_own_last_category(movielens) -> None:
    # Items 267 and 1412 have the years "unkonwn" and "V": they get id 71, the last of 72.
    batches = [b for s in ("train", "val", "test") for b in movielens.batches(s, 100_000)]
    cat = torch.cat([b.categorical for b in batches])
    # item ids are numeric tokens in order: item k -> id k - 1
    no_year = (cat[:, 1] == 266) | (cat[:, 1] == 1411)
    assert no_year.any() and bool((cat[no_year, 6] == 71).all())
    assert not bool((cat[~no_year, 6] == 71).any())


def test_split_is_seeded_and_disjoint() -> None:
    a, b = load_movielens_100k(seed=0), load_movielens_100k(seed=1)
    first = next(a.batches("test", 10_000))
    assert torch.equal(
        first.categorical, next(load_movielens_100k(0).batches("test", 10_000)).categorical
    )
    assert not torch.equal(first.categorical, next(b.batches("test", 10_000)).categorical)
    keys = []
    for split in ("train", "val", "test"):
        (batch,) = a.batches(split, 100_000)
        keys.append({tuple(row) for row in batch.categorical[:, :2].tolist()})
    # a (user, item) pair is rated once, so the splits share no pair
    assert len(keys[0] & keys[1]) == len(keys[0] & keys[2]) == len(keys[1] & keys[2]) == 0
    assert sum(len(k) for k in keys) == 100_000
    assert np.isclose(sum(len(k) for k in keys[1:]) / 100_000, 0.2)


def test_counts_are_the_training_split_ids(movielens) -> None:
    counts = movielens_100k_counts(seed=0)
    assert [len(c) for c in counts] == list(movielens.cardinalities)
    (train,) = movielens.batches("train", 100_000)
    for f in range(train.categorical.shape[1]):
        expected = torch.bincount(train.categorical[:, f], minlength=len(counts[f]))
        assert counts[f].tolist() == expected.tolist()
    values, offsets = train.bags[0]
    assert counts[7].sum() == len(values) > len(offsets) == 80_000  # genre entries, not rows
    assert counts[0].sum() == 80_000 and counts[0].dtype == np.int64
    assert not np.array_equal(movielens_100k_counts(seed=1)[0], counts[0])
