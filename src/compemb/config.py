"""Experiment configuration: frozen dataclasses, a strict YAML/TOML loader, typed overrides.

A config file has three sections, each optional; ``model.embedding`` is an
:class:`~compemb.spec.EmbeddingSpec`: its scheme, that scheme's own settings and the settings
every scheme shares, all flat::

    data:  {dataset: movielens}
    model: {name: dlrm, embedding_dim: 16,
            embedding: {scheme: qr, operation: mult, collisions: 4, init: default}}
    train: {optimizer: adagrad, batch_size: 128, epochs: 1, seed: 0}
    imports: [my_schemes]  # modules imported first: schemes registered outside compemb

``imports`` travels with the run's ``config.yaml``, so every process that reads it (torchrun's
ranks, a resumed run) registers the same schemes before building the model.

Unknown keys, wrong types and impossible combinations (the spec checks its own) fail here,
before any training, with a message naming the key, the value, where it came from and what
would work.

A field added here (or to a scheme's settings) records its neutral value, the one at which
training runs as before the field existed, in :data:`compemb.experiments.digest.NEUTRAL`: the
experiments' finished runs at that value stay cached.

>>> config = load_config_text("model: {embedding: {scheme: qr, collisions: 4}}", "inline")
>>> config.model.embedding.collisions, config.model.embedding.sparse
(4, True)
>>> apply_overrides(config, ["train.optimizer=amsgrad"]).model.embedding.sparse
False
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compemb.optim import OPTIMIZERS
from compemb.scheme import SCHEMES
from compemb.spec import SHARED, EmbeddingSpec, setting_types

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML configs need 3.11's tomllib; YAML works
    tomllib = None  # type: ignore[assignment]

__all__ = [
    "DEVICES",
    "SHARDINGS",
    "TORCHREC_OPTIMIZERS",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "load_config_text",
    "load_run_config",
]

DEVICES = ("cpu", "cuda")
# train.sharding: replicate (every rank holds every table) or torchrec (TorchRec's DMP shards
# them; compemb.training.sharding). The optimizers FBGEMM has fused CPU kernels for.
SHARDINGS = ("replicate", "torchrec")
TORCHREC_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "movielens"  # "movielens" or a dataset folder (preprocessed Criteo, synth)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "dlrm"  # dlrm or dcn
    embedding_dim: int = 16  # D: the paper's 16 (32 with thresholding + concat)
    # How every feature is embedded (scheme, operation, collisions, init, ...); its sparse
    # field follows model.sparse, which alone sets it.
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    sparse: bool | None = None  # sparse table gradients; None: the optimizer's choice

    def __post_init__(self) -> None:
        if self.embedding.sparse != bool(self.sparse):
            object.__setattr__(self, "embedding", self.embedding.with_(sparse=bool(self.sparse)))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adagrad"  # a name of compemb.optim.OPTIMIZERS (paper: adagrad, amsgrad)
    lr: float | None = None  # None: the optimizer's default (Adagrad 0.01, AMSGrad 0.001)
    batch_size: int = 128  # global rows per step, split across ranks under torchrun
    epochs: int = 1  # the paper trains one epoch
    seed: int = 0  # model init, and shuffling unless shuffle_seed is set
    # the data order's seed (epoch e shuffles with shuffle_seed + e); None: seed, so one seed
    # sets both. Apart, an init draw and a data order can be told apart (seed studies).
    shuffle_seed: int | None = None
    shuffle: bool = True  # shuffle training rows each epoch
    eval_every: int = 0  # validation log loss every N steps (0: only at the end)
    checkpoint_every: int = 1000  # atomic checkpoint every N steps (and always at the end)
    eval_batch_size: int = 16384  # rows per evaluation batch
    max_steps: int | None = None  # stop after this many steps in all
    device: str | None = None  # cpu or cuda; None: cuda when available
    sharding: str = "replicate"  # replicate, or torchrec: tables sharded by TorchRec's DMP
    keep_checkpoints: int = 1  # sharded runs: the newest N checkpoints kept (one folder each)
    # CCE's reclustering schedule (compemb.training.recluster.recluster_steps): None: at the
    # end of each epoch, the authors'; N: every N steps; 0: never. Runs written before the
    # schedule existed: None meant never (now 0) and N reclustered to the end (recluster_until 1).
    recluster_every: int | None = None
    recluster_until: float = 0.75  # CCE: none after this share of the run (the authors' 75 %)
    # CCE: for a run whose first epoch ends after the cut-off (MovieLens, one epoch: 1 and 3
    # level, 7 worse; docs/robe-dhe.md)
    recluster_times: int = 3
    # the learning rate rises linearly from lr / N to lr over the first N steps (every
    # parameter, as the reference DLRM's warm-up); without it Adagrad's first steps, each
    # lr * sign(gradient) on every MLP weight, can kill the bottom MLP's output layer (a run
    # that stalls, docs/results/stalls.md). 0: none, the paper's protocol.
    warmup_steps: int = 100
    # the learning rate falls linearly towards 0 over this share of the run's last steps (the
    # reference DLRM's MLPerf runs decay over their last 30,000 of 100,000 steps): at a
    # constant rate the validation log loss wanders by 0.003-0.006 from one step to the next,
    # so a run could end 0.006 above its seeds' median by where its last step fell
    # (docs/results/stalls.md). 0: none, the paper's protocol.
    lr_decay: float = 0.3

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The factor on the learning rate of step ``step`` (0-based) of a run of
        ``total_steps``: the warm-up's rise, then the decay's fall (to 1 / its steps at the last
        step, never 0)."""
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay_from = total_steps - round(total_steps * self.lr_decay)
        if step >= decay_from:
            factor *= (total_steps - step) / (total_steps - decay_from)
        return factor

    @property
    def schedules_lr(self) -> bool:
        """Whether the learning rate changes over the run (a warm-up or a decay)."""
        return bool(self.warmup_steps or self.lr_decay)

    @property
    def order_seed(self) -> int:
        """The seed of epoch 0's data order (epoch e uses it + e)."""
        return self.seed if self.shuffle_seed is None else self.shuffle_seed


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    imports: tuple[str, ...] = ()  # modules imported before the sections are read

    def to_dict(self) -> dict[str, Any]:
        """The config as nested dicts, the form config files take."""
        raw = dataclasses.asdict(self)
        raw["model"]["embedding"] = self.model.embedding.to_dict()
        raw["imports"] = list(self.imports)
        if not self.imports:
            del raw["imports"]
        for key in _SET_ELSEWHERE:
            *path, last = key.split(".")
            section = raw
            for name in path:
                section = section[name]
            del section[last]
        return raw


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
# Fields of a nested section that another key sets (and that config files leave out).
_SET_ELSEWHERE = {"model.embedding.sparse": "model.sparse"}


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(choices)}"


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _field_types(cls: type, path: str) -> dict[str, Any]:
    """The keys of the section at ``path`` (``model``, ``model.embedding``) and their types."""
    hints = setting_types() if cls is EmbeddingSpec else typing.get_type_hints(cls)
    return {k: v for k, v in hints.items() if f"{path}.{k}" not in _SET_ELSEWHERE}


def _unknown_key(key: str, cls: type, path: str) -> str:
    """The message for an unknown key, suggesting the nearest key here or one level down."""
    hints = _field_types(cls, path)
    candidates = {name: name for name in hints}
    for name, annotation in hints.items():
        if _is_section(annotation):
            for sub in _field_types(annotation, f"{path}.{name}"):
                candidates.setdefault(sub, f"{path}.{name}.{sub}")
    close = difflib.get_close_matches(key, list(candidates), n=1)
    hint = f"; did you mean {candidates[close[0]]!r}?" if close else \
        f"; valid keys: {', '.join(hints)}"
    return f"unknown key '{path}.{key}'{hint}"


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` if it fits ``annotation`` (ints are accepted for floats), else raise."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for one in inner[:-1]:  # the first that fits (model.embedding.budget: str | int | float)
            try:
                return _check_type(value, one, where)
            except ValueError:
                pass
        try:
            return _check_type(value, inner[-1], where)
        except ValueError:
            if len(inner) == 1:
                raise
        names = " or ".join(a.__name__ for a in inner)
        raise ValueError(f"{where}: expected {names}, got {value!r} ({type(value).__name__})")
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


def _section(cls: type, raw: Any, path: str, source: str) -> Any:
    """The section at ``path`` (``model``, ``model.embedding``) built from its mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: section {path!r} must be a mapping, got {raw!r}")
    hints = _field_types(cls, path)
    values = {}
    for key, value in raw.items():
        where = f"{path}.{key}"
        if where in _SET_ELSEWHERE:
            raise ValueError(f"{source}: {where} follows {_SET_ELSEWHERE[where]}: set that")
        if key not in hints:
            raise ValueError(f"{source}: {_unknown_key(str(key), cls, path)}")
        if _is_section(hints[key]):
            values[key] = _section(hints[key], value, where, source)
        else:
            values[key] = _check_type(value, hints[key], f"{source}: {where}")
    try:
        return cls(**values)
    except ValueError as err:  # a section that checks itself (the embedding spec)
        raise ValueError(f"{source}: {path}: {err}") from err


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
        (t.sharding in SHARDINGS, f"train.sharding={t.sharding!r}: use one of {SHARDINGS}"),
        (t.sharding != "torchrec" or t.optimizer in TORCHREC_OPTIMIZERS,
         f"train.sharding=torchrec trains the tables with FBGEMM's fused optimizers "
         f"({', '.join(TORCHREC_OPTIMIZERS)}); train.optimizer={t.optimizer!r} has none on CPU "
         f"(FBGEMM's Adam and LAMB are CUDA-only, AMSGrad has no kernel): use "
         f"train.sharding=replicate for it"),
    ]  # fmt: skip
    positive = ("batch_size", "epochs", "eval_batch_size", "checkpoint_every", "keep_checkpoints")
    checks += [(getattr(t, f) >= 1, f"train.{f}={getattr(t, f)}: must be >= 1") for f in positive]
    checks += [
        (t.eval_every >= 0, f"train.eval_every={t.eval_every}: must be >= 0 (0: at the end)"),
        (t.warmup_steps >= 0, f"train.warmup_steps={t.warmup_steps}: must be >= 0 (0: none)"),
        (0 <= t.lr_decay < 1, f"train.lr_decay={t.lr_decay}: must be in [0, 1), the share of "
                              "the run's last steps over which the rate falls (0: none)"),
        (t.max_steps is None or t.max_steps >= 1, f"train.max_steps={t.max_steps}: must be >= 1"),
        (t.recluster_every is None or t.recluster_every >= 0,
         f"train.recluster_every={t.recluster_every}: must be >= 0 (0: never; null: at the end "
         f"of each epoch)"),
        (0 < t.recluster_until <= 1,
         f"train.recluster_until={t.recluster_until}: must be a share of the run in (0, 1]"),
        (t.recluster_times >= 1,
         f"train.recluster_times={t.recluster_times}: must be >= 1 (never: recluster_every=0)"),
    ]  # fmt: skip
    scheduled = [f"train.{f.name}={getattr(t, f.name)}" for f in dataclasses.fields(TrainConfig)
             if f.name.startswith("recluster_") and getattr(t, f.name) != f.default
             and getattr(t, f.name) != 0]  # fmt: skip
    checks += [
        (not scheduled or m.embedding.owner.reclusters,
         f"{', '.join(scheduled)}: scheme {m.embedding.scheme!r} has nothing to recluster; leave "
         f"{'it' if len(scheduled) == 1 else 'them'} out"),
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


def _import(modules: Any, source: str) -> tuple[str, ...]:
    """Import the ``imports`` list's modules (where schemes defined outside compemb register)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ValueError(f"{source}: imports must be a list of module names, got {modules!r}")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"{source}: imports: cannot import {name!r} ({err}); is it on "
                             f"PYTHONPATH?") from err
    return tuple(modules)


def config_from_dict(raw: Any, source: str = "config") -> Config:
    """Build a checked :class:`Config` from a parsed mapping (sections data, model, train; and
    ``imports``, imported first)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    sections: dict[str, Any] = {"imports": _import(raw.pop("imports", []), source)}
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


# Defaults changed since runs were first written: a run's config.yaml holds every field there was
# when it was written, so one that lacks a field here predates it and ran with this value
# (``model.embedding[S].NAME``: a setting of scheme S only).
PAST_DEFAULTS: dict[str, Any] = {
    "train.warmup_steps": 0,
    "train.lr_decay": 0.0,
    "model.embedding.cap_at_full": False,
    "model.embedding[md].widths_over_all": False,
}


def _written_before(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's config as it ran, for a config.yaml written before fields it lacks existed."""
    train = raw.get("train")
    if isinstance(train, dict) and "recluster_until" not in train:  # before CCE's schedule
        if train.get("recluster_every") is None:
            train["recluster_every"] = 0  # null meant never
        elif train["recluster_every"]:
            train["recluster_until"] = 1.0  # every N steps, to the end
    for key, value in PAST_DEFAULTS.items():
        path, name = key.rsplit(".", 1)
        section, _, scheme = path.partition("[")
        holder: Any = raw
        for part in section.split("."):
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        if scheme and holder.get("scheme") != scheme.rstrip("]"):
            continue
        holder.setdefault(name, value)
    return raw


def load_run_config(path: str | Path) -> Config:
    """A run folder's ``config.yaml``, with the value it ran with for a field added since
    (``compemb.config.PAST_DEFAULTS``) rather than that field's new default."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: cannot parse: {err}") from err
    return config_from_dict(_written_before(raw) if isinstance(raw, dict) else raw, str(path))


def _parse_override(item: str) -> tuple[list[str], str]:
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. "
                         f"model.embedding.collisions=4")  # fmt: skip
    return path, text.strip()


def apply_overrides(config: Config, overrides: typing.Iterable[str]) -> Config:
    """Apply ``section.key=value`` overrides (``model.embedding.collisions=60``), each
    type-checked against its field.

    Values are read as YAML scalars (``4``, ``0.5``, ``true``, ``null``); a ``str`` field takes
    the text as it is.
    """
    raw = config.to_dict()
    if raw["model"]["sparse"] is not None:
        # Re-derive sparse from the (possibly overridden) optimizer unless it was set explicitly.
        raw["model"]["sparse"] = None if _derived_sparse(config) else raw["model"]["sparse"]
    for item in overrides:
        (section, *inner, name), text = _parse_override(item)
        source = f"--set {item}"
        if section not in _SECTIONS:
            raise ValueError(f"{source}: unknown section {section!r}{_suggest(section, _SECTIONS)}")
        cls, path, values = _SECTIONS[section], section, raw[section]
        keys = [*inner, name]
        for depth, part in enumerate(keys):
            where = f"{path}.{part}"
            if where in _SET_ELSEWHERE:
                raise ValueError(f"{source}: {where} follows {_SET_ELSEWHERE[where]}: set that")
            hints = _field_types(cls, path)
            if part not in hints:
                raise ValueError(f"{source}: {_unknown_key(part, cls, path)}")
            if depth == len(keys) - 1:
                break
            if not _is_section(hints[part]):
                raise ValueError(f"{source}: {where} is a value, not a section")
            cls, path, values = hints[part], where, values[part]
        if _is_section(hints[name]):
            raise ValueError(f"{source}: {path}.{name} is a section: set {path}.{name}.KEY=VALUE")
        if hints[name] is str:
            value: Any = text
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"{source}: cannot read {text!r} as a value") from err
        values[name] = _check_type(value, hints[name], source)
        if f"{path}.{name}" == "model.embedding.scheme":
            # a new scheme drops the settings it does not have (a budget is any scheme's)
            try:
                own = (*SCHEMES.lookup(value).setting_names(), *SHARED, "budget")
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from err
            for key in [k for k in values if k not in own and k != "scheme"]:
                del values[key]
    return config_from_dict(raw, "config with --set overrides")


def _derived_sparse(config: Config) -> bool:
    optimizer = OPTIMIZERS.get(config.train.optimizer)
    return optimizer is not None and config.model.sparse == optimizer.sparse


def dump_config(config: Config) -> str:
    """The config as YAML, loadable again by :func:`load_config`."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
