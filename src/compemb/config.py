"""Experiment configuration: frozen dataclasses, a strict YAML/TOML loader, typed overrides.

A config file has three sections, each optional::

    data:  {dataset: movielens}
    model: {name: dlrm, embedding_dim: 16, scheme: qr, operation: mult, collisions: 4}
    train: {optimizer: adagrad, batch_size: 128, epochs: 1, seed: 0}

Unknown keys, wrong types and impossible combinations fail here, before any training, with a
message naming the key, the value, where it came from and what would work. Whether the
embedding fields make a valid scheme is checked by the embedding layer itself when training
builds the spec (also before the first step).

>>> config = load_config_text("model: {scheme: qr, collisions: 4}", "inline")
>>> apply_overrides(config, ["train.optimizer=amsgrad"]).model.sparse
False
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compemb.optim import OPTIMIZERS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML configs need 3.11's tomllib; YAML works
    tomllib = None  # type: ignore[assignment]

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "movielens"  # "movielens" or a dataset folder (preprocessed Criteo, synth)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "dlrm"  # dlrm or dcn
    embedding_dim: int = 16  # D: the paper's 16 (32 with thresholding + concat)
    scheme: str = "full"  # full, hash, qr, mixed_radix, crt, path, feature
    operation: str = "mult"  # concat, add or mult (qr, mixed_radix, crt)
    collisions: int | None = None  # categories per bucket of the largest table
    k: int | None = None  # partitions for mixed_radix / crt instead of collisions
    threshold: int = 0  # features with at most this many categories keep full tables
    path_transform: str = "mlp"  # linear or mlp (scheme path)
    path_hidden: int = 64  # hidden units of each path MLP (table 1: 16, 32, 64, 128)
    mode: str = "sum"  # pooling over a multi-hot bag
    sparse: bool | None = None  # sparse table gradients; None: on for adagrad/sgd

    def spec_fields(self) -> dict[str, Any]:
        """The fields of an ``EmbeddingSpec`` (everything but name and embedding_dim)."""
        skip = ("name", "embedding_dim")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adagrad"  # a name of compemb.optim.OPTIMIZERS (paper: adagrad, amsgrad)
    lr: float | None = None  # None: the optimizer's default (Adagrad 0.01, AMSGrad 0.001)
    batch_size: int = 128  # global rows per step, split across ranks under torchrun
    epochs: int = 1  # the paper trains one epoch
    seed: int = 0  # model init and shuffling (seed + epoch)
    shuffle: bool = True  # shuffle training rows each epoch
    eval_every: int = 0  # validation log loss every N steps (0: only at the end)
    checkpoint_every: int = 1000  # atomic checkpoint every N steps (and always at the end)
    eval_batch_size: int = 16384  # rows per evaluation batch
    max_steps: int | None = None  # stop after this many steps in all
    device: str | None = None  # cpu or cuda; None: cuda when available


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(choices)}"


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` if it fits ``annotation`` (ints are accepted for floats), else raise."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; take it as the number it spells.
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise ValueError(
            f"{where}: expected {annotation.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def _section(cls: type, raw: Any, name: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: section {name!r} must be a mapping, got {raw!r}")
    hints = _field_types(cls)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise ValueError(f"{source}: unknown key '{name}.{key}'{_suggest(str(key), hints)}")
        values[key] = _check_type(value, hints[key], f"{source}: {name}.{key}")
    return cls(**values)


def _resolve(config: Config, source: str) -> Config:
    """Fill ``model.sparse`` from the optimizer and reject impossible combinations."""
    t, m = config.train, config.model
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"{source}: train.optimizer={t.optimizer!r}: use one of "
                         f"{tuple(OPTIMIZERS)}")  # fmt: skip
    optimizer = OPTIMIZERS[t.optimizer]
    sparse_ones = "/".join(name for name, kind in OPTIMIZERS.items() if kind.sparse)
    checks = [
        (t.device is None or t.device in DEVICES,
         f"train.device={t.device!r}: use one of {DEVICES} or leave it out (auto)"),
        (not (optimizer.default_lr is None and t.lr is None),
         f"train.optimizer={t.optimizer!r} has no default learning rate: set train.lr "
         f"(e.g. 0.1)"),
        (not (m.sparse and not optimizer.sparse),
         f"train.optimizer={t.optimizer!r} cannot take sparse gradients: set "
         f"model.sparse=false or use {sparse_ones}"),
        (t.lr is None or t.lr > 0, f"train.lr={t.lr}: must be > 0"),
    ]  # fmt: skip
    positive = ("batch_size", "epochs", "eval_batch_size", "checkpoint_every")
    checks += [(getattr(t, f) >= 1, f"train.{f}={getattr(t, f)}: must be >= 1") for f in positive]
    checks += [
        (t.eval_every >= 0, f"train.eval_every={t.eval_every}: must be >= 0 (0: at the end)"),
        (t.max_steps is None or t.max_steps >= 1, f"train.max_steps={t.max_steps}: must be >= 1"),
        (m.embedding_dim >= 1, f"model.embedding_dim={m.embedding_dim}: must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{source}: {message}")
    if m.sparse is None:
        config = dataclasses.replace(
            config, model=dataclasses.replace(m, sparse=optimizer.sparse)
        )
    return config


def config_from_dict(raw: Any, source: str = "config") -> Config:
    """Build a checked :class:`Config` from a parsed mapping (sections data, model, train)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ValueError(f"{source}: unknown section {name!r}{_suggest(str(name), _SECTIONS)}")
        sections[name] = _section(_SECTIONS[name], value, name, source)
    return _resolve(Config(**sections), source)


def load_config_text(text: str, source: str, *, toml: bool = False) -> Config:
    """Parse YAML (``yaml.safe_load``) or TOML text into a checked :class:`Config`."""
    if toml and tomllib is None:
        raise ValueError(f"{source}: TOML configs need Python >= 3.11; use YAML")
    try:
        raw = tomllib.loads(text) if toml else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as err:  # TOMLDecodeError is a ValueError
        raise ValueError(f"{source}: cannot parse: {err}") from err
    return config_from_dict(raw, source)


def load_config(path: str | Path) -> Config:
    """Load a ``.yaml``/``.yml`` or ``.toml`` config file."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"{path}: config files end in .yaml, .yml or .toml")
    return load_config_text(path.read_text(), str(path), toml=path.suffix == ".toml")


def _parse_override(item: str) -> tuple[str, str, str]:
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. model.collisions=4")
    return section, name, text.strip()


def apply_overrides(config: Config, overrides: typing.Iterable[str]) -> Config:
    """Apply ``section.key=value`` overrides, each type-checked against its field.

    Values are read as YAML scalars (``4``, ``0.5``, ``true``, ``null``); a ``str`` field takes
    the text as it is.
    """
    raw = config.to_dict()
    if raw["model"]["sparse"] is not None:
        # Re-derive sparse from the (possibly overridden) optimizer unless it was set explicitly.
        raw["model"]["sparse"] = None if _derived_sparse(config) else raw["model"]["sparse"]
    for item in overrides:
        section, name, text = _parse_override(item)
        source = f"--set {item}"
        if section not in _SECTIONS:
            raise ValueError(f"{source}: unknown section {section!r}{_suggest(section, _SECTIONS)}")
        hints = _field_types(_SECTIONS[section])
        if name not in hints:
            raise ValueError(f"{source}: unknown key '{section}.{name}'{_suggest(name, hints)}")
        if hints[name] is str:
            value: Any = text
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"{source}: cannot read {text!r} as a value") from err
        raw[section][name] = _check_type(value, hints[name], source)
    return config_from_dict(raw, "config with --set overrides")


def _derived_sparse(config: Config) -> bool:
    optimizer = OPTIMIZERS.get(config.train.optimizer)
    return optimizer is not None and config.model.sparse == optimizer.sparse


def dump_config(config: Config) -> str:
    """The config as YAML, loadable again by :func:`load_config`."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
