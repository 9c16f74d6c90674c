"""A run sized by a memory budget: config.yaml keeps the budget and the knob it chose, and the
run resumes (its saved config resolves to itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trainkit
import yaml

from compemb.config import apply_overrides, load_config_text
from compemb.data import open_dataset
from compemb.embeddings import EmbeddingSpec, resolve_budget
from compemb.training import evaluate_run, train

CONFIG = """
data: {dataset: movielens}
model: {name: dlrm, embedding_dim: 8, embedding: {scheme: qr, operation: mult, budget: 4x}}
train: {batch_size: 256, max_steps: 6, checkpoint_every: 3, eval_batch_size: 65536}
"""


def test_a_budget_run_keeps_budget_and_knob_and_resumes(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config_text(CONFIG, "budget.yaml")
    cards = open_dataset("movielens").cardinalities
    chosen = resolve_budget(EmbeddingSpec("qr", "mult", budget="4x"), cards, 8).collisions
    with trainkit.one_thread():
        full = train(config, tmp_path / "full", progress=False)
        resumed = trainkit.crash_then_resume(config, tmp_path / "run", monkeypatch, 3)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["embedding"]
    assert saved["budget"] == "4x" and saved["collisions"] == chosen
    assert resumed["steps"] == 6 and trainkit.final(tmp_path / "run") == trainkit.final(
        tmp_path / "full")
    assert full["embedding_parameters"] * 4 <= sum(cards) * 8  # the budget holds
    # a caller that resumes with the config it started from (not yet resolved), as the
    # experiment runner does, compares after resolving
    assert train(config, tmp_path / "run", resume=True, progress=False)["steps"] == 6
    assert evaluate_run(tmp_path / "run", "test")["test_logloss"] == resumed["test_logloss"]
    other = apply_overrides(config, ["model.embedding.budget=5x"])
    with pytest.raises(ValueError, match="cannot resume .* config that differs"):
        train(other, tmp_path / "run", resume=True, progress=False)


def test_a_budget_out_of_reach_stops_the_run_before_anything_is_written(tmp_path: Path) -> None:
    config = apply_overrides(load_config_text(CONFIG, "budget.yaml"),
                             ["model.embedding.budget=1.1x"])  # fmt: skip
    with pytest.raises(ValueError, match=r"model.embedding: budget 1.1x \([\d,]+ parameters\) is "
                                         r"out of reach of scheme 'qr'"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
