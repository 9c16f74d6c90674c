"""The Dataset contract: batch shapes, order, shuffling, resuming and rank sharing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.data import (
    ArrayDataset,
    Batch,
    SplitArrays,
    SynthOptions,
    generate_synthetic,
    open_dataset,
)
from compemb.data.storage import (
    DatasetMetadata,
    read_category_counts,
    read_metadata,
    write_category_counts,
)


def _dataset(rows: int = 23, num_dense: int = 2, bags: bool = True) -> ArrayDataset:
    """Row r has categorical (r, r % 3), dense (r, -r), label r % 2 and a bag of r % 4 ids."""
    splits = {}
    for k, split in enumerate(("train", "val", "test")):
        n = rows + k
        r = np.arange(n)
        lengths = r % 4
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.concatenate([np.full(length, i) for i, length in enumerate(lengths)] + [[]])
        splits[split] = SplitArrays(
            categorical=np.stack([r, r % 3], axis=1).astype(np.int32),
            dense=np.stack([r, -r], axis=1)[:, :num_dense].astype(np.float32),
            labels=(r % 2).astype(np.uint8),
            bags=((values.astype(np.int64), offsets),) if bags else (),
        )
    names = ("row", "mod3", "bag") if bags else ("row", "mod3")
    sizes = (rows + 2, 3, rows + 2) if bags else (rows + 2, 3)
    return ArrayDataset("toy", names, sizes, num_dense, splits, num_bag_features=int(bags))


def _rows(batches) -> list[int]:
    return [int(x) for b in batches for x in b.categorical[:, 0]]


def test_batches_hold_consecutive_rows_with_the_contract_types() -> None:
    ds = _dataset()
    batches = list(ds.batches("train", 5))
    assert ds.num_batches("train", 5) == len(batches) == 5
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert _rows(batches) == list(range(23))
    b = batches[1]
    assert b.categorical.dtype == torch.int64 and b.categorical.shape == (5, 2)
    assert b.dense.dtype == torch.float32 and b.dense[:, 1].tolist() == [-5, -6, -7, -8, -9]
    assert b.labels.dtype == torch.float32 and b.labels.tolist() == [1, 0, 1, 0, 1]
    ((values, offsets),) = b.bags
    assert values.dtype == offsets.dtype == torch.int64
    # rows 5..9 have 1, 2, 3, 0, 1 ids, each id equal to its row
    assert offsets.tolist() == [0, 1, 3, 6, 6]
    assert values.tolist() == [5, 6, 6, 7, 7, 7, 9]


def test_shuffle_is_a_seeded_permutation_and_batches_keep_its_order() -> None:
    ds = _dataset()
    order = np.random.default_rng(7).permutation(23).tolist()
    batches = list(ds.batches("train", 4, shuffle=True, seed=7))
    assert _rows(batches) == order
    assert _rows(ds.batches("train", 4, shuffle=True, seed=7)) == order
    assert _rows(ds.batches("train", 4, shuffle=True, seed=8)) != order
    for b in batches:  # every field of a row travels with it
        rows = b.categorical[:, 0]
        assert torch.equal(b.dense[:, 0], rows.float())
        assert torch.equal(b.labels, (rows % 2).float())
        values, offsets = b.bags[0]
        lengths = torch.diff(offsets, append=torch.tensor([len(values)]))
        assert torch.equal(lengths, rows % 4)
        assert torch.equal(values, torch.repeat_interleave(rows, lengths))


def test_start_skips_whole_global_batches() -> None:
    ds = _dataset()
    full = _rows(ds.batches("val", 6, shuffle=True, seed=3))
    assert _rows(ds.batches("val", 6, shuffle=True, seed=3, start=2)) == full[12:]
    assert list(ds.batches("val", 6, start=99)) == []


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 40),
    batch_size=st.integers(1, 17),
    world_size=st.integers(1, 5),
    shuffle=st.booleans(),
)
def test_ranks_share_every_batch_and_cover_every_row_once(
    rows: int, batch_size: int, world_size: int, shuffle: bool
) -> None:
    ds = _dataset(rows, bags=False)
    per_rank = [
        list(
            ds.batches("train", batch_size, shuffle=shuffle, seed=1, rank=r, world_size=world_size)
        )
        for r in range(world_size)
    ]
    steps = ds.num_batches("train", batch_size)
    assert all(len(batches) == steps for batches in per_rank)
    merged = [
        [int(x) for r in range(world_size) for x in per_rank[r][i].categorical[:, 0]]
        for i in range(steps)
    ]
    single = [_rows([b]) for b in ds.batches("train", batch_size, shuffle=shuffle, seed=1)]
    assert merged == single
    for i in range(steps):
        sizes = [len(per_rank[r][i]) for r in range(world_size)]
        assert sizes == [len(p) for p in np.array_split(np.arange(len(single[i])), world_size)]


def test_batch_size_one_and_65536() -> None:
    ds = _dataset(bags=True)
    assert [len(b) for b in ds.batches("test", 1)] == [1] * 25
    (big,) = ds.batches("test", 65536, shuffle=True)
    assert len(big) == 25 and sorted(_rows([big])) == list(range(25))
    assert ds.num_batches("test", 65536) == 1


def test_no_dense_features_give_an_empty_second_dimension() -> None:
    batch = next(_dataset(num_dense=0).batches("train", 3))
    assert batch.dense.shape == (3, 0) and batch.dense.dtype == torch.float32


def test_batch_to_moves_every_tensor() -> None:
    batch = next(_dataset().batches("train", 4))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and len(moved) == 4
    assert torch.equal(moved.bags[0][0], batch.bags[0][0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 2, "start": -1}, "start"),
    ],
)
def test_bad_batching_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _dataset().batches("train", **kwargs)


def test_unknown_split_and_dataset_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="split"):
        _dataset().num_rows("dev")
    with pytest.raises(FileNotFoundError, match="neither"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        open_dataset(tmp_path)


def test_folder_batches_are_writable_copies_of_the_memory_map(tmp_path) -> None:
    generate_synthetic(tmp_path / "s", SynthOptions(rows=70, cardinalities=(9, 4), seed=0))
    ds = open_dataset(tmp_path / "s")
    for shuffle in (False, True):
        batch = next(ds.batches("train", 8, shuffle=shuffle))
        for t in (batch.dense, batch.categorical, batch.labels):
            assert t.numpy().flags.writeable
        batch.dense.add_(1.0)  # must not touch the file
    again = next(ds.batches("train", 8))
    assert torch.equal(again.dense, torch.from_numpy(np.load(tmp_path / "s/train/dense.npy")[:8]))


def _metadata(**changes) -> DatasetMetadata:
    fields = {
        "name": "toy",
        "feature_names": ("a", "b"),
        "cardinalities": (3, 2),
        "dense_names": ("x",),
        "rows": {"train": 4, "val": 1, "test": 1},
        "split_lines": {"train": (0, 4), "test": (4, 5), "val": (5, 6)},
        "options": {"seed": 3},
    }
    return DatasetMetadata(**{**fields, **changes})


def test_metadata_round_trips_and_is_strict_about_keys(tmp_path) -> None:
    meta = _metadata(hidden_model={"optimal_test_log_loss": 0.5})
    meta.write(tmp_path)
    assert read_metadata(tmp_path) == meta and meta.num_dense == 1
    data = json.loads((tmp_path / "metadata.json").read_text())
    assert data["format"] == "compemb-dataset-v2" and data["num_dense"] == 1
    (tmp_path / "metadata.json").write_text(json.dumps({**data, "cardinality": [3, 2]}))
    with pytest.raises(ValueError, match=r"metadata.json: unknown keys \['cardinality'\]"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({**data, "num_dense": 2}))
    with pytest.raises(ValueError, match="num_dense 2 but 1 dense_names"):
        read_metadata(tmp_path)
    del data["rows"]
    (tmp_path / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"missing keys \['rows'\]"):
        read_metadata(tmp_path)


def test_version_1_metadata_is_still_read(tmp_path) -> None:
    data = _metadata().to_json()
    data.update(format="compemb-dataset-v1", input={"name": "train.txt", "bytes": 9})
    del data["inputs"], data["counts"]
    (tmp_path / "metadata.json").write_text(json.dumps(data))
    meta = read_metadata(tmp_path)
    assert meta.inputs == ({"name": "train.txt", "bytes": 9},) and not meta.counts
    with pytest.raises(FileNotFoundError, match="records no category counts"):
        read_category_counts(tmp_path)


def test_category_counts_round_trip_per_feature(tmp_path) -> None:
    _metadata(counts=True).write(tmp_path)
    write_category_counts(tmp_path, [np.array([3, 0, 1]), np.array([2, 2], dtype=np.int32)])
    a, b = read_category_counts(tmp_path)
    assert a.tolist() == [3, 0, 1] and b.tolist() == [2, 2] and a.dtype == b.dtype == np.int64
    write_category_counts(tmp_path, [np.array([3, 0]), np.array([2, 2])])
    with pytest.raises(ValueError, match=r"counts.npy: shape \(4,\), expected \(5,\)"):
        read_category_counts(tmp_path)
    with pytest.raises(ValueError, match="feature 1"):
        write_category_counts(tmp_path, [np.array([1]), np.array([-1])])
