"""End-to-end Criteo preprocessing on small files written by the tests."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

import compemb.data.preprocess as preprocess_module
from compemb.data import PreprocessOptions, open_dataset, preprocess_criteo
from compemb.data.preprocess import resolve_inputs
from compemb.data.storage import (
    day_split,
    partial_leftovers,
    read_category_counts,
    read_metadata,
)
from conftest import criteo_line, malformed


def _meta(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def test_rejects_are_counted_and_every_line_is_accounted_for(write_criteo, tmp_path) -> None:
    out = tmp_path / "out"
    summary = preprocess_criteo(write_criteo("in.tsv"), out)
    meta = _meta(out)
    assert meta["lines"] == {
        "read": 70,
        "kept": 63,
        "rejected": 7,
        "rejected_by_reason": {
            "field_count": 3,
            "bad_label": 1,
            "bad_integer": 1,
            "bad_category": 2,
        },
    }
    # Days are cut over all 70 lines: 10 a day; rejects fall on lines 5..60, all in train.
    assert meta["rows"] == {"train": 53, "test": 5, "val": 5}
    assert summary.rows == meta["rows"]
    rejects = (out / "rejects.tsv").read_text().splitlines()
    assert rejects[0] == "file\tline\treason\tdetail"
    expected = {n: reason for n, (_, reason) in malformed([criteo_line(0)]).items()}
    fields = [r.split("\t") for r in rejects[1:]]
    assert {int(f[1]): f[2] for f in fields} == expected
    assert {f[0] for f in fields} == {"in.tsv"}
    ds = open_dataset(out)
    assert [ds.num_rows(s) for s in ("train", "val", "test")] == [53, 5, 5]
    cat = np.load(out / "train" / "categorical.npy", mmap_mode="r")
    assert cat.dtype == np.int32 and cat.shape == (53, 26)
    assert np.load(out / "test" / "dense.npy").shape == (5, 13)
    assert (
        meta["inputs"][0]["sha256"]
        == hashlib.sha256((tmp_path / "in.tsv").read_bytes()).hexdigest()
    )
    assert meta["inputs"][0]["bytes"] == (tmp_path / "in.tsv").stat().st_size


def test_ids_are_first_seen_over_all_days_and_hex_is_unsigned(write_criteo, tmp_path) -> None:
    out = tmp_path / "out"
    preprocess_criteo(write_criteo("in.tsv", bad=False), out)
    # C1 cycles 00000000, ffffffff, 80000000, blank, 0a1B2c3D: five categories in that order.
    ids = np.concatenate(
        [np.load(out / s / "categorical.npy")[:, 0] for s in ("train", "test", "val")]
    )
    assert ids.tolist() == [i % 5 for i in range(70)]
    meta = _meta(out)
    assert meta["cardinalities"][0] == 5
    assert meta["cardinalities"][1] == 4  # blank, "0", "1", "2"
    labels = np.load(out / "train" / "labels.npy")
    assert labels.tolist() == [(1 if i % 3 == 1 else 0) for i in range(60)]


def test_day_split_matches_the_reference_counts() -> None:
    # train.txt of Criteo Kaggle: 45,840,617 lines
    bounds = day_split(45_840_617)
    assert bounds["train"] == (0, 39_291_954)
    assert bounds["test"][1] - bounds["test"][0] == 3_274_332
    assert bounds["val"] == (bounds["test"][1], 45_840_617)
    assert day_split(5) == {"train": (0, 0), "test": (0, 3), "val": (3, 5)}


def test_outputs_are_byte_identical_across_runs_and_chunk_sizes(write_criteo, tmp_path) -> None:
    src = write_criteo("in.tsv")
    preprocess_criteo(src, tmp_path / "a")
    preprocess_criteo(src, tmp_path / "b")
    preprocess_criteo(src, tmp_path / "c", PreprocessOptions(chunk_bytes=500))
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(tmp_path / "c")


def test_gzip_input_gives_the_same_arrays(write_criteo, tmp_path) -> None:
    preprocess_criteo(write_criteo("in.tsv"), tmp_path / "plain")
    preprocess_criteo(write_criteo("in.tsv.gz", compress=True), tmp_path / "gz")
    plain, gz = _files(tmp_path / "plain"), _files(tmp_path / "gz")
    assert {k: v for k, v in plain.items() if k.endswith(".npy")} == {
        k: v for k, v in gz.items() if k.endswith(".npy")
    }
    assert _meta(tmp_path / "gz")["inputs"][0]["gzip"] is True


def test_truncated_gzip_is_an_error_and_leaves_no_folder(write_criteo, tmp_path) -> None:
    src = write_criteo("in.tsv.gz", compress=True)
    src.write_bytes(src.read_bytes()[:-30])
    with pytest.raises(ValueError, match="truncated gzip"):
        preprocess_criteo(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_empty_and_missing_inputs_are_errors(tmp_path) -> None:
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        preprocess_criteo(tmp_path / "empty.tsv", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        preprocess_criteo(tmp_path / "nope.tsv", tmp_path / "out")
    empty_gz = tmp_path / "empty.gz"
    empty_gz.write_bytes(gzip.compress(b""))
    with pytest.raises(ValueError, match="empty"):
        preprocess_criteo(empty_gz, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.gz", "empty.tsv"]


def test_existing_output_is_not_overwritten(write_criteo, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        preprocess_criteo(write_criteo("in.tsv"), tmp_path / "out")


def test_strict_stops_at_the_first_bad_line(write_criteo, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"in\.tsv:5: field_count"):
        preprocess_criteo(write_criteo("in.tsv"), tmp_path / "out", PreprocessOptions(strict=True))
    assert list(tmp_path.iterdir()) == [tmp_path / "in.tsv"]


def test_an_interrupted_run_leaves_no_finished_looking_folder(
    write_criteo, tmp_path, monkeypatch
) -> None:
    real_append = preprocess_module.SplitWriter.append
    calls = []

    def failing_append(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        real_append(self, *args)

    monkeypatch.setattr(preprocess_module.SplitWriter, "append", failing_append)
    with pytest.raises(OSError, match="disk full"):
        preprocess_criteo(
            write_criteo("in.tsv"), tmp_path / "out", PreprocessOptions(chunk_bytes=800)
        )
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == [tmp_path / "in.tsv"]


def test_max_index_takes_ids_modulo_n(write_criteo, tmp_path) -> None:
    src = write_criteo("in.tsv", bad=False)
    preprocess_criteo(src, tmp_path / "full")
    preprocess_criteo(src, tmp_path / "cap", PreprocessOptions(max_index=3))
    full = np.load(tmp_path / "full" / "train" / "categorical.npy")
    cap = np.load(tmp_path / "cap" / "train" / "categorical.npy")
    np.testing.assert_array_equal(cap, full % 3)
    meta = _meta(tmp_path / "cap")
    assert meta["cardinalities"] == [min(c, 3) for c in _meta(tmp_path / "full")["cardinalities"]]
    assert meta["options"]["max_index"] == 3


def test_min_count_merges_rare_categories_into_bucket_zero(tmp_path) -> None:
    cats = ["a", "b", "a", "c", "a", "b", "d"] * 2  # over 14 lines: a 6, b 4, c 2, d 2
    lines = ["\t".join(["1", *["1"] * 13, c, *["0"] * 25]) for c in cats]
    (tmp_path / "in.tsv").write_text("\n".join(lines) + "\n")
    preprocess_criteo(tmp_path / "in.tsv", tmp_path / "out", PreprocessOptions(min_count=3))
    meta = _meta(tmp_path / "out")
    ids = np.concatenate(
        [np.load(tmp_path / "out" / s / "categorical.npy")[:, 0] for s in ("train", "test", "val")]
    )
    assert ids.tolist() == [{"a": 1, "b": 2}.get(c, 0) for c in cats]
    assert meta["cardinalities"][0] == 3 and meta["bucket_id"] == 0
    assert meta["cardinalities"][1] == 2  # "0" (seen 14 times) + the bucket


def test_vocab_train_sends_unseen_categories_to_the_bucket(tmp_path) -> None:
    # 14 lines = 7 days of 2: lines 1-12 train, 13 test, 14 val.
    cats = ["a", "b"] * 6 + ["a", "ee"]  # "ee" is never seen in train
    lines = ["\t".join(["0", *["1"] * 13, c, *["0"] * 25]) for c in cats]
    (tmp_path / "in.tsv").write_text("\n".join(lines) + "\n")
    preprocess_criteo(tmp_path / "in.tsv", tmp_path / "tr", PreprocessOptions(vocab="train"))
    preprocess_criteo(tmp_path / "in.tsv", tmp_path / "all")
    load = np.load
    assert load(tmp_path / "tr" / "test" / "categorical.npy")[:, 0].tolist() == [1]
    assert load(tmp_path / "tr" / "val" / "categorical.npy")[:, 0].tolist() == [0]
    assert load(tmp_path / "all" / "val" / "categorical.npy")[:, 0].tolist() == [2]
    assert _meta(tmp_path / "tr")["cardinalities"][0] == 3  # bucket, a, b
    assert _meta(tmp_path / "all")["cardinalities"][0] == 3  # a, b, ee


def test_explicit_day_lines_skip_counting_and_must_add_up(write_criteo, tmp_path) -> None:
    src = write_criteo("in.tsv", bad=False)
    preprocess_criteo(src, tmp_path / "a", PreprocessOptions(day_lines=(30, 30, 10)))
    assert _meta(tmp_path / "a")["rows"] == {"train": 60, "test": 5, "val": 5}
    with pytest.raises(ValueError, match="add up to 71"):
        preprocess_criteo(src, tmp_path / "b", PreprocessOptions(day_lines=(60, 11)))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "bad", [{"min_count": 0}, {"max_index": 0}, {"vocab": "test"}, {"days": 1}]
)
def test_invalid_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessOptions(**bad)


@pytest.mark.parametrize("max_index", [None, 3])
def test_train_category_counts_are_recorded_per_final_id(write_criteo, tmp_path, max_index) -> None:
    out = tmp_path / "out"
    preprocess_criteo(write_criteo("in.tsv"), out, PreprocessOptions(max_index=max_index))
    meta = read_metadata(out)
    assert meta.counts
    counts = read_category_counts(out)
    train = np.load(out / "train" / "categorical.npy")
    for f, c in enumerate(counts):
        assert len(c) == meta.cardinalities[f]
        assert c.tolist() == np.bincount(train[:, f], minlength=len(c)).tolist()


def _write_days(folder: Path, days: int = 4, per_day: int = 10) -> list[Path]:
    """Day files day_0 .. day_{days-1} (day_1 gzip), ``per_day`` lines each; day_0 has two bad
    lines. Returns them in day order; their concatenation is ``_days_as_one``."""
    folder.mkdir()
    paths = []
    for d in range(days):
        lines = [criteo_line(d * per_day + i) for i in range(per_day)]
        if d == 0:
            lines[2], lines[6] = "1\t2", lines[6].replace("\t", "\tzz", 1)
        data = ("\n".join(lines) + "\n").encode()
        path = folder / (f"day_{d}.gz" if d == 1 else f"day_{d}")
        path.write_bytes(gzip.compress(data, mtime=0) if d == 1 else data)
        paths.append(path)
    return paths


def _days_as_one(paths: list[Path], target: Path) -> Path:
    target.write_bytes(
        b"".join(
            gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes() for p in paths
        )  # fmt: skip
    )
    return target


def test_terabyte_day_files_split_by_day_like_one_file_cut_at_their_lengths(tmp_path) -> None:
    paths = _write_days(tmp_path / "days")
    summary = preprocess_criteo(tmp_path / "days", tmp_path / "tb")
    # the same lines as one file whose days are the files: the same arrays, counts and rejects
    one = _days_as_one(paths, tmp_path / "all.tsv")
    preprocess_criteo(one, tmp_path / "one", PreprocessOptions(day_lines=(10, 10, 10, 10)))
    tb, single = _files(tmp_path / "tb"), _files(tmp_path / "one")
    assert {k: v for k, v in tb.items() if k.endswith(".npy")} == {
        k: v for k, v in single.items() if k.endswith(".npy")
    }
    meta = _meta(tmp_path / "tb")
    assert meta["rows"] == {"train": 28, "test": 5, "val": 5} == summary.rows
    assert meta["split_lines"] == {"train": [0, 30], "test": [30, 35], "val": [35, 40]}
    assert meta["lines"]["read"] == 40 and meta["lines"]["rejected"] == 2
    assert [(r["name"], r["lines"], r["gzip"]) for r in meta["inputs"]] == [
        ("day_0", 10, False), ("day_1.gz", 10, True), ("day_2", 10, False), ("day_3", 10, False)
    ]  # fmt: skip
    assert meta["options"]["days"] == 4
    rejects = (tmp_path / "tb" / "rejects.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[:3] for r in rejects] == [
        ["day_0", "3", "field_count"], ["day_0", "7", "bad_integer"]
    ]  # fmt: skip
    # a list of the files in day order is the same input as their folder
    preprocess_criteo(paths, tmp_path / "listed")
    assert _files(tmp_path / "listed") == tb


def test_day_folders_sort_by_day_number_and_refuse_ambiguity(tmp_path) -> None:
    folder = tmp_path / "days"
    folder.mkdir()
    for name in ("day_10", "day_9", "day_2.gz", "notes.txt", "day_x"):
        (folder / name).write_text("")
    assert [p.name for p in resolve_inputs(folder)] == ["day_2.gz", "day_9", "day_10"]
    (folder / "day_9.gz").write_text("")
    with pytest.raises(ValueError, match="day 9 is there twice"):
        resolve_inputs(folder)
    with pytest.raises(FileNotFoundError, match="no Criteo day files"):
        resolve_inputs(tmp_path / "days" / ".." / "days" / "..")


def test_day_files_refuse_a_days_option_and_an_empty_last_day(tmp_path) -> None:
    paths = _write_days(tmp_path / "days", days=3)
    with pytest.raises(ValueError, match="3 input files are 3 days"):
        preprocess_criteo(paths, tmp_path / "out", PreprocessOptions(days=7))
    paths[-1].write_bytes(b"")
    with pytest.raises(ValueError, match="day_2 is empty"):
        preprocess_criteo(paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_day_files_with_train_vocabulary_and_min_count(tmp_path) -> None:
    paths = _write_days(tmp_path / "days")
    one = _days_as_one(paths, tmp_path / "all.tsv")
    for i, options in enumerate(
        [PreprocessOptions(vocab="train"), PreprocessOptions(min_count=2, max_index=7)]
    ):
        preprocess_criteo(paths, tmp_path / f"tb{i}", options)
        lines = PreprocessOptions(**{**options.recorded(), "day_lines": (10, 10, 10, 10)})
        preprocess_criteo(one, tmp_path / f"one{i}", lines)
        tb, single = _files(tmp_path / f"tb{i}"), _files(tmp_path / f"one{i}")
        assert {k: v for k, v in tb.items() if k.endswith(".npy")} == {
            k: v for k, v in single.items() if k.endswith(".npy")
        }


def test_progress_covers_every_input_file(tmp_path, capsys) -> None:
    paths = _write_days(tmp_path / "days", days=3)
    preprocess_criteo(paths, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    total = sum(p.stat().st_size for p in paths)
    size = tqdm.format_sizeof(total)
    assert f"preprocess: 100%|██████████| {size}/{size}" in err


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_leftovers_of_a_dead_run_are_removed_and_a_live_ones_kept(write_criteo, tmp_path) -> None:
    src = write_criteo("in.tsv")
    dead = tmp_path / f".out.partial-{_dead_pid()}-0badf00d"
    live = tmp_path / f".out.partial-{os.getpid()}-0badf00d"
    other = tmp_path / f".outside.partial-{_dead_pid()}-0badf00d"  # another output's
    for folder in (dead, live, other):
        (folder / "train").mkdir(parents=True)
        (folder / "metadata.json").write_text("{}")
    with pytest.raises(FileNotFoundError):  # a leftover is never taken for the dataset
        open_dataset(tmp_path / "out")
    assert sorted(partial_leftovers(tmp_path / "out")) == sorted([(dead, False), (live, True)])
    with pytest.warns(UserWarning) as warned:
        preprocess_criteo(src, tmp_path / "out")
    assert {str(w.message) for w in warned} == {
        f"removing {dead}, left by an interrupted run",
        f"{live}: a partial output of a process that is still running; left alone",
    }
    assert not dead.exists() and live.exists() and other.exists()
    assert open_dataset(tmp_path / "out").num_rows("train") == 53


def test_a_killed_run_leaves_a_hidden_partial_that_the_next_run_cleans(write_criteo, tmp_path):
    src, out = write_criteo("in.tsv"), tmp_path / "out"
    script = (
        "import time, compemb.data.preprocess as m\n"
        "real = m.SplitWriter.append\n"
        "def stall(self, *a):\n"
        "    real(self, *a)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(600)\n"
        "m.SplitWriter.append = stall\n"
        f"m.preprocess_criteo({str(src)!r}, {str(out)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
        leftovers = partial_leftovers(out)
        assert [alive for _, alive in leftovers] == [True]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ((partial, alive),) = partial_leftovers(out)
    assert not alive and (partial / "train" / "categorical.npy").exists() and not out.exists()
    with pytest.warns(UserWarning, match="left by an interrupted run"):
        preprocess_criteo(src, out)
    assert partial_leftovers(out) == [] and (out / "metadata.json").exists()


@pytest.mark.parametrize("max_index", [None, 4])
def test_split_found_after_one_pass_equals_the_split_counted_first(tmp_path, max_index) -> None:
    # bad lines in every split, the held-out day's included: 63 (test) and 67 (val)
    lines = [criteo_line(i) for i in range(70)]
    lines[4], lines[62], lines[66] = "x", lines[62] + "\t1", "2" + lines[66][1:]
    (tmp_path / "in.tsv").write_text("\n".join(lines) + "\n")
    one_pass = PreprocessOptions(max_index=max_index, chunk_bytes=3000)
    counted = PreprocessOptions(max_index=max_index, day_lines=(10,) * 7)
    preprocess_criteo(tmp_path / "in.tsv", tmp_path / "a", one_pass)
    preprocess_criteo(tmp_path / "in.tsv", tmp_path / "b", counted)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert {k: v for k, v in a.items() if k != "metadata.json"} == {
        k: v for k, v in b.items() if k != "metadata.json"
    }
    assert _meta(tmp_path / "a")["rows"] == {"train": 59, "test": 4, "val": 4}
    assert _meta(tmp_path / "a")["split_lines"] == _meta(tmp_path / "b")["split_lines"]
