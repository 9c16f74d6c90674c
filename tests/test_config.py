"""The strict config loader and typed --set overrides."""

from __future__ import annotations

import pytest

from compemb.config import (
    Config,
    apply_overrides,
    dump_config,
    load_config,
    load_config_text,
)


def test_defaults_follow_the_paper() -> None:
    c = load_config_text("", "empty")
    assert (c.train.optimizer, c.train.batch_size, c.train.epochs) == ("adagrad", 128, 1)
    assert c.model.embedding_dim == 16 and c.model.sparse is True


def test_sparse_follows_the_optimizer() -> None:
    assert load_config_text("train: {optimizer: amsgrad}", "x").model.sparse is False
    assert load_config_text("train: {optimizer: sgd, lr: 0.1}", "x").model.sparse is True
    c = load_config_text("model: {scheme: qr, collisions: 4}", "x")
    assert apply_overrides(c, ["train.optimizer=amsgrad"]).model.sparse is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {colisions: 4}", r"f.yaml: unknown key 'model.colisions'; did you mean"),
        ("modle: {}", r"unknown section 'modle'; did you mean 'model'"),
        ("train: {batch_size: 1.5}", r"train.batch_size: expected int, got 1.5"),
        ("train: {batch_size: true}", r"train.batch_size: expected int, got True"),
        ("train: {optimizer: sgd}", r"'sgd' has no default learning rate: set train.lr"),
        ("train: {optimizer: amsgrad}\nmodel: {sparse: true}", r"model.sparse=false"),
        ("train: {optimizer: adam}", r"train.optimizer='adam': use one of"),
        ("train: {device: tpu}", r"train.device='tpu'"),
        ("train: {epochs: 0}", r"train.epochs=0: must be >= 1"),
        ("model: [1, 2]", r"section 'model' must be a mapping"),
        ("model: {", r"cannot parse"),
    ],
)  # fmt: skip
def test_bad_configs_fail_with_a_helpful_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config_text(text, "f.yaml")


def test_ints_and_exponent_notation_are_accepted_for_floats() -> None:
    assert load_config_text("train: {lr: 1}", "x").train.lr == 1.0
    assert load_config_text("train: {lr: 1e-3}", "x").train.lr == 0.001
    with pytest.raises(ValueError, match=r"train.lr: expected float, got 'fast'"):
        load_config_text("train: {lr: fast}", "x")


def test_overrides_are_type_checked() -> None:
    c = Config()
    c2 = apply_overrides(c, ["model.collisions=4", "model.scheme=qr", "train.lr=0.05",
                             "data.dataset=123", "train.max_steps=null"])  # fmt: skip
    assert (c2.model.collisions, c2.model.scheme, c2.train.lr) == (4, "qr", 0.05)
    assert c2.data.dataset == "123" and c2.train.max_steps is None
    with pytest.raises(ValueError, match=r"--set model.collisions=four: expected int"):
        apply_overrides(c, ["model.collisions=four"])
    with pytest.raises(ValueError, match=r"did you mean 'collisions'"):
        apply_overrides(c, ["model.colisions=4"])
    with pytest.raises(ValueError, match=r"expected section.key=value"):
        apply_overrides(c, ["collisions=4"])


def test_yaml_and_toml_round_trip(tmp_path) -> None:
    c = apply_overrides(Config(), ["model.scheme=qr", "model.collisions=4", "train.seed=3"])
    (tmp_path / "c.yaml").write_text(dump_config(c))
    assert load_config(tmp_path / "c.yaml") == c
    (tmp_path / "c.toml").write_text('[model]\nscheme = "qr"\ncollisions = 4\n[train]\nseed = 3\n')
    assert load_config(tmp_path / "c.toml") == c
    with pytest.raises(ValueError, match=r"end in .yaml, .yml or .toml"):
        load_config(tmp_path / "c.json")


def test_example_configs_load() -> None:
    from pathlib import Path

    paths = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        load_config(path)
