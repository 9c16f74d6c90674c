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
from compemb.spec import EmbeddingSpec


def test_defaults_follow_the_paper() -> None:
    c = load_config_text("", "empty")
    assert (c.train.optimizer, c.train.batch_size, c.train.epochs) == ("adagrad", 128, 1)
    assert c.model.embedding_dim == 16 and c.model.sparse is True
    assert c.model.embedding == EmbeddingSpec(sparse=True)


def test_sparse_follows_the_optimizer_and_reaches_the_spec() -> None:
    for text, sparse in [("train: {optimizer: amsgrad}", False),
                         ("train: {optimizer: sgd, lr: 0.1}", True),
                         ("train: {optimizer: adagrad}\nmodel: {sparse: false}", False)]:
        c = load_config_text(text, "x")
        assert c.model.sparse is sparse and c.model.embedding.sparse is sparse, text
    c = load_config_text("model: {embedding: {scheme: qr, collisions: 4}}", "x")
    assert c.model.embedding.sparse is True
    amsgrad = apply_overrides(c, ["train.optimizer=amsgrad"])
    assert amsgrad.model.sparse is False and amsgrad.model.embedding.sparse is False
    # set explicitly, sparse stays when the optimizer changes
    dense = apply_overrides(c, ["model.sparse=false"])
    assert apply_overrides(dense, ["train.optimizer=sgd", "train.lr=1"]).model.sparse is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {colisions: 4}",
         r"f.yaml: unknown key 'model.colisions'; did you mean 'model.embedding.collisions'"),
        ("model: {embedding: {colisions: 4}}",
         r"unknown key 'model.embedding.colisions'; did you mean 'collisions'"),
        ("model: {embedding: {scheme: qr, collisions: 4, sparse: true}}",
         r"model.embedding.sparse follows model.sparse: set that"),
        ("model: {embedding: {scheme: hash}}",
         r"f.yaml: model.embedding: scheme 'hash' needs collisions"),
        ("model: {embedding: {scheme: qr, collisions: 4, init: he}}", r"model.embedding: init"),
        ("model: {embedding: {collisions: four}}",
         r"model.embedding.collisions: expected int, got 'four'"),
        ("model: {embedding: qr}", r"section 'model.embedding' must be a mapping"),
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
    c2 = apply_overrides(c, ["model.embedding.collisions=4", "model.embedding.scheme=qr",
                             "train.lr=0.05", "data.dataset=123", "train.max_steps=null",
                             "model.embedding.init=zero_mean"])  # fmt: skip
    e = c2.model.embedding
    assert (e.collisions, e.scheme, e.init, c2.train.lr) == (4, "qr", "zero_mean", 0.05)
    assert c2.data.dataset == "123" and c2.train.max_steps is None
    assert apply_overrides(c2, ["model.embedding.collisions=60"]).model.embedding == \
        e.with_(collisions=60)  # fmt: skip
    bad = [
        ("model.embedding.collisions=four", r"--set model.embedding.collisions=four: expected int"),
        ("model.collisions=4", r"unknown key 'model.collisions'; did you mean "
                               r"'model.embedding.collisions'"),
        ("model.embedding.colisions=4", r"unknown key 'model.embedding.colisions'; did you mean "
                                        r"'collisions'"),
        ("model.embedding.sparse=true", r"model.embedding.sparse follows model.sparse"),
        ("model.embedding=qr", r"model.embedding is a section: set model.embedding.KEY=VALUE"),
        ("model.name.x=1", r"model.name is a value, not a section"),
        ("model.embedding.scheme=hash", r"model.embedding: scheme 'hash' needs collisions"),
        ("collisions=4", r"expected section.key=value"),
        ("model..k=4", r"expected section.key=value"),
    ]
    for item, message in bad:
        with pytest.raises(ValueError, match=message):
            apply_overrides(c, [item])


def test_yaml_and_toml_round_trip(tmp_path) -> None:
    c = apply_overrides(Config(), ["model.embedding.scheme=qr", "model.embedding.collisions=4",
                                   "train.seed=3"])  # fmt: skip
    text = dump_config(c)
    assert "init: default" in text and "sparse: true" in text  # the run's init rule is recorded
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml") == c
    (tmp_path / "c.toml").write_text('[model.embedding]\nscheme = "qr"\ncollisions = 4\n'
                                     '[train]\nseed = 3\n')  # fmt: skip
    assert load_config(tmp_path / "c.toml") == c
    with pytest.raises(ValueError, match=r"end in .yaml, .yml or .toml"):
        load_config(tmp_path / "c.json")


def test_example_configs_build_the_models_they_describe() -> None:
    from pathlib import Path

    from compemb.data import CRITEO_KAGGLE_CARDINALITIES
    from compemb.training import count_parameters

    paths = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert len(paths) >= 3
    totals = {}
    for path in paths:
        m = load_config(path).model
        report = count_parameters(m.name, CRITEO_KAGGLE_CARDINALITIES, m.embedding,
                                  embedding_dim=m.embedding_dim)  # fmt: skip
        totals[path.stem] = report["total"]
    # the sizes their comments state
    assert totals["criteo-dlrm-full"] == pytest.approx(5.4e8, rel=0.01)
    assert totals["criteo-dlrm-path"] == pytest.approx(1.357e8, rel=0.001)


@pytest.mark.parametrize(("written", "kind", "kept"), [
    ("16x", "ratio", "16x"),
    ("2000000", "parameters", "'2000000'"),  # kept as text: an md config's int is MD's own
    ("2e6", "parameters", "2e6"),
    ("200MB", "bytes", "200MB"),
    ("1.5GB", "bytes", "1.5GB"),
])  # fmt: skip
def test_a_budget_loads_dumps_and_loads_again(written: str, kind: str, kept: str) -> None:
    c = load_config_text(f"model: {{embedding: {{scheme: qr, operation: mult, "
                         f"budget: {written}}}}}", "x")  # fmt: skip
    spec = c.model.embedding
    assert spec.budget.kind == kind and spec.budget_pending
    text = dump_config(c)
    assert f"budget: {kept}\n" in text and "collisions" not in text  # not chosen yet
    assert load_config_text(text, "dumped") == c


def test_a_budget_is_checked_where_it_is_written() -> None:
    with pytest.raises(ValueError, match=r"x: model.embedding: budget '16y': unknown unit 'y'; "
                                         r"expected a compression ratio \('16x'\)"):
        load_config_text("model: {embedding: {scheme: qr, budget: 16y}}", "x")
    with pytest.raises(ValueError, match=r"x: model.embedding.budget: expected str or int or "
                                         r"float, got True \(bool\)"):
        load_config_text("model: {embedding: {scheme: qr, budget: true}}", "x")
    with pytest.raises(ValueError, match="scheme 'full' has no size setting for budget=4x"):
        load_config_text("model: {embedding: {budget: 4x}}", "x")


def test_budget_overrides_and_a_new_scheme_keeps_the_budget() -> None:
    c = load_config_text("model: {embedding: {scheme: qr, collisions: 4}}", "x")
    c = apply_overrides(c, ["model.embedding.collisions=null", "model.embedding.budget=200MB"])
    assert str(c.model.embedding.budget) == "200MB" and c.model.embedding.budget_pending
    robe = apply_overrides(c, ["model.embedding.scheme=robe"]).model.embedding
    assert robe.scheme == "robe" and str(robe.budget) == "200MB" and robe.budget_pending
    assert apply_overrides(c, ["model.embedding.budget=null",
                               "model.embedding.collisions=5"]).model.embedding.budget is None
