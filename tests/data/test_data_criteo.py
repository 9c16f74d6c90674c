"""The chunk parser and the category dictionaries, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compemb.data.criteo as criteo_module
import compemb.data.vocab as vocab_module
from compemb.data.criteo import BLANK_KEY, parse_chunk
from compemb.data.vocab import CategoryCounter, Vocabulary, add_counts
from conftest import criteo_line, malformed


def _line(label: str = "1", ints: list[str] | None = None, cats: list[str] | None = None) -> str:
    ints = ints if ints is not None else ["0"] * 13
    cats = cats if cats is not None else ["00000001"] * 26
    return "\t".join([label, *ints, *cats])


def test_values_are_converted_as_the_reference_does() -> None:
    ints = ["", "-5", "0", "1", "10", *["3"] * 8]
    cats = ["ffffffff", "80000000", "", "7fffffff", "aBcD", *["0"] * 21]
    parsed = parse_chunk((_line("", ints, cats) + "\n").encode(), first_line=0)
    assert parsed.labels.tolist() == [0]
    expected = np.log1p(np.array([0, 0, 0, 1, 10, *[3] * 8], dtype=np.float64)).astype(np.float32)
    np.testing.assert_array_equal(parsed.dense[0], expected)
    assert [int(k[0]) for k in parsed.keys[:5]] == [
        0xFFFFFFFF,
        0x80000000,
        BLANK_KEY,
        0x7FFFFFFF,
        0xABCD,
    ]
    assert parsed.dense.dtype == np.float32 and parsed.keys[0].dtype == np.uint64


def test_every_malformed_line_is_rejected_with_its_number_and_reason() -> None:
    lines = [criteo_line(i) for i in range(70)]
    bad = malformed(lines)
    for number, (line, _) in bad.items():
        lines[number - 1] = line
    # no trailing newline: the last line still counts
    parsed = parse_chunk("\n".join(lines).encode(), first_line=100)
    assert parsed.num_lines == 70
    got = {r.line - 100: r.reason for r in parsed.rejects}
    assert got == {number: reason for number, (_, reason) in bad.items()}
    assert [r.line for r in parsed.rejects] == sorted(r.line for r in parsed.rejects)
    assert len(parsed.lines) + len(parsed.rejects) == 70
    assert set((parsed.lines - 100 + 1).tolist()).isdisjoint(bad)


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        (_line("x"), "bad_label", "label='x'"),
        (_line("1", ["1", "2", "abc", *["0"] * 10]), "bad_integer", "I3='abc'"),
        (_line("1", cats=["1ffffffff", *["0"] * 25]), "bad_category", "C1='1ffffffff'"),
        (_line("1", cats=[*["0"] * 25, "-1"]), "bad_category", "C26='-1'"),
        (_line("1", cats=["+ff", *["0"] * 25]), "bad_category", "C1='+ff'"),
        ("1\t2\t3", "field_count", "3 fields"),
    ],
)
def test_reject_details_name_the_field_and_value(line: str, reason: str, detail: str) -> None:
    parsed = parse_chunk((line + "\n").encode(), first_line=0)
    assert len(parsed.lines) == 0
    (reject,) = parsed.rejects
    assert (reject.line, reject.reason) == (1, reason)
    assert detail in reject.detail


def test_the_first_problem_of_a_line_is_its_reason() -> None:
    line = _line("7", ["z", *["0"] * 12], ["zz", *["0"] * 25])
    assert parse_chunk(line.encode(), 0).rejects[0].reason == "bad_label"


def test_vocabulary_enumerates_in_first_seen_order_across_calls() -> None:
    vocab = Vocabulary()
    assert vocab.encode(np.array([50, 7, 50, 9]), grow=True).tolist() == [0, 1, 0, 2]
    assert vocab.encode(np.array([3, 9, 7, 3, 2**32]), grow=True).tolist() == [3, 2, 1, 3, 4]
    assert vocab.size == 5
    with pytest.raises(KeyError):
        vocab.encode(np.array([123]), grow=False)


def test_frequent_vocabulary_puts_rare_and_unseen_keys_in_the_bucket() -> None:
    counter = CategoryCounter()
    counter.add(np.array([1, 8, 5, 8]))
    counter.add(np.array([5, 1, 7]))
    assert counter.counts.tolist() == [2, 2, 2, 1] and len(counter) == 4  # 1, 8, 5, 7
    vocab = Vocabulary.frequent(counter, 2)
    assert vocab.encode(np.array([8, 7, 5, 1, 9]), grow=True).tolist() == [2, 0, 3, 1, 0]
    assert vocab.size == 4


def test_vocabulary_without_bucket_refuses_unseen_keys_and_bad_keys() -> None:
    vocab = Vocabulary(bucket=True)
    assert vocab.encode(np.array([4, 4]), grow=True).tolist() == [1, 1]
    assert vocab.encode(np.array([4, 6]), grow=False).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\[0, 2\*\*33 - 1\)"):
        vocab.encode(np.array([-1]), grow=True)


def test_add_counts_grows_and_counts() -> None:
    counts = add_counts(np.zeros(0, np.int64), np.array([2, 0, 2]))
    assert counts[:3].tolist() == [1, 0, 2]
    counts = add_counts(counts, np.array([1000, 2]))  # grown to fit 1000
    assert counts[2] == 3 and counts[1000] == 1 and counts.sum() == 5


# keys in a small range collide in a small table; 2**32 is the blank key
_KEYS = st.one_of(st.integers(0, 40), st.sampled_from([2**32, 2**32 - 1, 2**31, 77777777]))


@settings(max_examples=80, deadline=None)
@given(
    chunks=st.lists(st.lists(_KEYS, max_size=40), min_size=1, max_size=6),
    min_count=st.integers(1, 3),
    capacity=st.sampled_from([1, 16, 4096]),
)
def test_vocabulary_matches_a_dict(chunks, min_count, capacity) -> None:
    everything = [k for chunk in chunks for k in chunk]
    allowed = {k for k in everything if everything.count(k) >= min_count}
    bucket = min_count > 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vocab_module.KeyIndex.__init__, "__defaults__", (capacity,))
        if bucket:
            counter = CategoryCounter()
            for chunk in chunks:
                counter.add(np.array(chunk, dtype=np.uint64))
            vocab = Vocabulary.frequent(counter, min_count)
        else:
            vocab = Vocabulary()
        reference: dict[int, int] = {}
        for chunk in chunks:
            got = vocab.encode(np.array(chunk, dtype=np.int64), grow=True).tolist()
            expected = []
            for k in chunk:
                if k in allowed and k not in reference:
                    reference[k] = len(reference) + bucket
                expected.append(reference.get(k, 0))
            assert got == expected
    assert vocab.size == len(reference) + bucket


def test_a_short_and_a_long_line_are_caught_when_the_tab_total_looks_right() -> None:
    lines = [criteo_line(i) for i in range(6)]
    lines[1] = lines[1] + "\t0"  # 41 fields
    lines[4] = lines[4].rsplit("\t", 1)[0]  # 39 fields: the chunk still has 39 tabs a line
    parsed = parse_chunk("\n".join(lines).encode(), first_line=0)
    assert [(r.line, r.reason) for r in parsed.rejects] == [(2, "field_count"), (5, "field_count")]
    assert parsed.lines.tolist() == [0, 2, 3, 5]


# (valid, invalid) values of each kind of field; the valid ones are parsed by the clean-block path
_LABELS = (["0", "1", ""], ["00", "2", "-0", "+1", " 1", "x", "-"])
_INTS = (["", "0", "7", "-3", "007", "-0"], ["+5", " 5", "5 ", "-", "1.5", "9" * 20])
_CATS = (
    ["", "0", "ff", "FF", "0a1B2c3D", "ffffffff", "0000000f"],
    ["000000001", "-0", "-1", "+a", "g", " a", "é"],
)


@st.composite
def _rows(draw):
    """A row of valid fields, maybe with one invalid field (a block of such rows is often clean
    but for one subtle field, which only one of the two paths might miss)."""
    label = draw(st.sampled_from(_LABELS[0]))
    ints = draw(st.lists(st.sampled_from(_INTS[0]), min_size=13, max_size=13))
    cats = draw(st.lists(st.sampled_from(_CATS[0]), min_size=26, max_size=26))
    which = draw(st.sampled_from(["none", "label", "int", "cat"]))
    if which == "label":
        label = draw(st.sampled_from(_LABELS[1]))
    elif which == "int":
        ints[draw(st.integers(0, 12))] = draw(st.sampled_from(_INTS[1]))
    elif which == "cat":
        cats[draw(st.integers(0, 25))] = draw(st.sampled_from(_CATS[1]))
    return label, ints, cats


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(_rows(), min_size=1, max_size=4))
def test_the_clean_block_path_agrees_with_the_line_by_line_path(rows) -> None:
    """Whatever a block holds, parse_chunk (which tries the aggregate-checked path first) gives
    exactly what the line-by-line path gives."""
    chunk = ("\n".join(_line(label, ints, cats) for label, ints, cats in rows) + "\n").encode()
    got = parse_chunk(chunk, first_line=3)
    want = criteo_module._parse_checked(chunk, len(rows), 3)
    assert got.rejects == want.rejects and got.num_lines == want.num_lines
    for field in ("lines", "labels", "dense"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    for a, b in zip(got.keys, want.keys, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype == np.uint64


def test_a_clean_block_takes_the_aggregate_path() -> None:
    lines = [criteo_line(i) for i in range(20)]
    lines.append(_line("", ["007", "-0", *[""] * 11], ["FF", "0000000f", "0a1B2c3D", *[""] * 23]))
    chunk = ("\n".join(lines) + "\n").encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(criteo_module, "_parse_checked", None)  # would fail if called
        parsed = parse_chunk(chunk, 0)
    assert len(parsed.lines) == 21
    assert parsed.dense[-1, :2].tolist() == [np.float32(np.log1p(7.0)), 0.0]
    assert [int(k[-1]) for k in parsed.keys[:4]] == [0xFF, 0xF, 0x0A1B2C3D, BLANK_KEY]


@pytest.mark.parametrize(
    ("column", "value"),
    [(0, v) for v in _LABELS[0] + _LABELS[1]]
    + [(3, v) for v in _INTS[0] + _INTS[1]]
    + [(30, v) for v in _CATS[0] + _CATS[1]],
)
def test_each_subtle_field_gets_the_same_verdict_on_both_paths(column: int, value: str) -> None:
    fields = criteo_line(1).split("\t")
    fields[column] = value
    chunk = (criteo_line(0) + "\n" + "\t".join(fields) + "\n").encode()
    got, want = parse_chunk(chunk, 0), criteo_module._parse_checked(chunk, 2, 0)
    assert got.rejects == want.rejects
    np.testing.assert_array_equal(got.dense, want.dense)
    for a, b in zip(got.keys, want.keys, strict=True):
        np.testing.assert_array_equal(a, b)


def test_key_index_growth_places_runs_that_wrap_past_the_end() -> None:
    # keys whose home is the last slot of a 16-slot table: placed in home order, all but the
    # first wrap around to slots 0, 1, ...
    index = vocab_module.KeyIndex(capacity=16)
    last = [k for k in range(5000) if index._home(np.array([k + 1], np.uint64))[0] == 15][:5]
    others = [k for k in range(5000, 6000) if k not in last][:2]
    keys = np.array(last + others, dtype=np.uint64)
    assert index.add(keys).tolist() == [1, 2, 3, 4, 5, 6, 7]
    index._grow(40)  # 16 -> 128 slots: every key placed again
    index._allocate(4)
    entries = (keys + np.uint64(1)) | (np.arange(1, 8, dtype=np.uint64) << np.uint64(33))
    index._place(entries)  # the five run from slot 15 over the end
    assert index.lookup(keys).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert index.lookup(np.array([999_999])).tolist() == [0]


def test_dictionary_growth_reallocates_only_when_the_table_doubles() -> None:
    # 200 blocks of 500 new keys: a table that doubled per block, or was rebuilt per block, would
    # allocate 200 times; doubling when half full allocates about log2(2 * 100k / 1024) times.
    index = vocab_module.KeyIndex()
    allocations = []
    real = index._allocate
    index._allocate = lambda bits: (allocations.append(bits), real(bits))  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    keys = rng.choice(1 << 32, 100_000, replace=False)
    for block in np.split(keys, 200):
        index.add(block)
    assert len(index) == 100_000 and allocations == list(range(11, 19))
    assert index.lookup(keys[::997]).tolist() == (np.arange(0, 100_000, 997) + 1).tolist()
