"""The chunk parser and the category dictionaries, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import criteo_line, malformed
from hypothesis import given, settings
from hypothesis import strategies as st

import compemb.data.vocab as vocab_module
from compemb.data.criteo import BLANK_KEY, parse_chunk
from compemb.data.vocab import CategoryCounter, Vocabulary, add_counts


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


def test_add_counts_grows_and_counts_in_both_modes() -> None:
    counts = add_counts(np.zeros(0, np.int64), np.array([2, 0, 2]))
    assert counts[:3].tolist() == [1, 0, 2]
    counts = add_counts(counts, np.array([1000, 2]))  # sparse: counted without a bincount
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
