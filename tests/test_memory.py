"""Memory budgets as configs write them: the three forms, and what a bad one is told."""

import doctest

import pytest

import compemb.memory
from compemb.memory import MemoryBudget


def test_docstring_examples_run() -> None:
    result = doctest.testmod(compemb.memory)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize(("value", "kind", "amount"), [
    ("16x", "ratio", 16.0),
    ("2.5x", "ratio", 2.5),
    (" 1x ", "ratio", 1.0),
    ("2000000", "parameters", 2_000_000),
    (2_000_000, "parameters", 2_000_000),
    ("2e6", "parameters", 2_000_000),
    ("2.5E3", "parameters", 2_500),
    (2.0e6, "parameters", 2_000_000),  # YAML reads 2.0e+6 as a float
    ("200MB", "bytes", 200_000_000),
    ("200 MB", "bytes", 200_000_000),
    ("1.5GB", "bytes", 1_500_000_000),
    ("1.1MB", "bytes", 1_100_000),  # exact: no float rounding
    ("300KiB", "bytes", 300 * 1024),
    ("2GiB", "bytes", 2 * 1024**3),
    ("4kB", "bytes", 4_000),
    ("512B", "bytes", 512),
])  # fmt: skip
def test_the_three_forms(value, kind: str, amount) -> None:
    budget = MemoryBudget.parse(value)
    assert (budget.kind, budget.amount) == (kind, amount)
    assert type(budget.amount) is type(amount)
    assert MemoryBudget.parse(budget.to_config()) == budget  # what config.yaml keeps reads back


def test_targets_and_units() -> None:
    assert MemoryBudget.parse("16x").target(full_parameters=1_000) == 62  # rounded down
    assert MemoryBudget.parse("2e3").target(full_parameters=1) == 2_000
    assert MemoryBudget.parse("1KiB").target(full_parameters=1) == 1_024
    assert [MemoryBudget.parse(v).unit for v in ("4x", "4", "4B")] == ["parameters",
                                                                        "parameters", "bytes"]
    assert str(MemoryBudget.parse(" 200MB")) == "200MB"  # the text as written, stripped
    assert MemoryBudget.parse("2e6") == MemoryBudget.parse("2000000")  # equal whatever the text


@pytest.mark.parametrize(("value", "message"), [
    ("16y", r"budget '16y': unknown unit 'y'; expected a compression ratio \('16x'\), a "
            r"parameter count \('2000000' or '2e6'\) or bytes \('200MB'"),
    ("16X", r"unknown unit 'X' \(did you mean 'x'\?\)"),
    ("200mb", r"unknown unit 'mb' \(did you mean 'MB'\?\)"),
    ("0.5x", r"budget '0.5x': a compression ratio must be a finite number >= 1"),
    ("1e400x", r"a compression ratio must be a finite number >= 1"),
    ("1.5", r"budget '1.5': a parameter count must be a whole number >= 1"),
    (0, r"budget 0: a parameter count must be a whole number >= 1"),
    (-3, r"a parameter count must be a whole number >= 1"),
    ("1.5B", r"budget '1.5B': a number of bytes must be a whole number >= 1"),
    ("x", r"budget 'x': expected a compression ratio"),
    ("", r"budget '': expected"),
    ("16 x 2", r"budget '16 x 2': expected"),
    (True, r"budget True: expected"),
    ([16], r"budget \[16\]: expected"),
    (float("nan"), r"a parameter count must be a whole number"),
])  # fmt: skip
def test_bad_budgets_are_named_with_what_is_expected(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryBudget.parse(value)


def test_the_dataclass_checks_itself() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        MemoryBudget("rows", 3)
    with pytest.raises(ValueError, match="a budget of bytes must be an int >= 1, got 2.5"):
        MemoryBudget("bytes", 2.5)
    assert MemoryBudget("ratio", 4.0).text == "4x" and MemoryBudget("bytes", 8).text == "8B"
