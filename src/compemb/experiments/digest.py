"""What names an experiment's run folder: the config fields that matter and the results version.

A run trains into ``OUT/runs/<variant>-<optimizer>-s<seed>-<digest>``, and a folder holding
``final.json`` is read, not trained again. ``<digest>`` (:func:`run_digest`) is a sha1 over
:data:`RESULTS_VERSION` and the run's config, flattened to dotted keys (``train.lr``; a scheme's
own settings qualified by the scheme, ``model.embedding[qr].collisions``), less every field at
its neutral value (:data:`NEUTRAL`).

Two rules keep cached runs valid and never stale:

- **A new config field or setting of an existing scheme** has its neutral value recorded in
  :data:`NEUTRAL`: the value at which training runs as it did before the field existed (an
  option that is off). A run at that value keeps its digest, so adding the field leaves finished
  runs cached; a run at another value (its default included) gets a folder of its own. **A new
  scheme** lists its settings in ``_BASELINE_SCHEMES`` (no run of it exists yet, so all are
  hashed). A field of compemb's config or schemes in neither :data:`BASELINE` (the fields there
  were when this rule began, and each later scheme's settings as it was added; never grown
  otherwise) nor :data:`NEUTRAL` fails a test (``tests/experiments/test_experiments_digest.py``).
  A field nobody registered (of a scheme defined outside compemb) is always hashed: a cached run
  may be missed, never wrongly reused.
- **Bump RESULTS_VERSION** when the same config trains to a different result: a fix in the
  training loop, an init or a scheme (a stall fixed), a value that now means something else
  (``lr: null`` another rate), a default that is not a config value. A config field's changed
  default needs no bump: the planned configs carry the new value. A change that leaves results
  as they were (speed, logging) needs none either.

Every run folder records the version that wrote it (``results_version``; a folder without one
was written before the stamp existed: version 1). Folders named by the earlier rule (a sha1 of
the whole config dump, so every new field renamed them all) are renamed once by
:func:`adopt_earlier` when an experiment plans the same run at the same results version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from compemb.config import Config, config_from_dict
from compemb.spec import SHARED
from compemb.training.run_folder import RunFolder

__all__ = [
    "BASELINE",
    "NEUTRAL",
    "RESULTS_VERSION",
    "VERSION_FILE",
    "adopt_earlier",
    "check_version",
    "config_fields",
    "flat_config",
    "folder_version",
    "run_digest",
    "write_version",
]

# bump when the same config trains to a different result (module docstring). 2: recluster_every
# null changed meaning (never -> the authors' schedule) and the successors' stacked forms draw
# their init in another order, in the same change as the warm-up, ROBE-Z, MD's threshold
# planning, DHE's k and the cap at the full table's bytes.
RESULTS_VERSION = 2
VERSION_FILE = "results_version"  # in each run folder: the RESULTS_VERSION that wrote it
_UNSTAMPED = 1  # the version of a folder written before folders were stamped

# Each scheme's settings when this rule began or when the scheme was added (a new scheme: a line).
_BASELINE_SCHEMES: dict[str, tuple[str, ...]] = {
    "full": (), "hash": ("collisions",),
    "path": ("collisions", "family", "path_transform", "path_hidden"),
    "feature": ("collisions", "k", "family"),
    "md": ("alpha", "base_width", "budget", "round_pow2", "multiple_of", "init"),
    "tt": ("rank", "num_cores", "init"), "robe": ("size", "block", "aligned", "seed"),
    "dhe": ("width", "depth", "hashes", "encoding", "seed"),
    "md_block": ("alpha", "num_blocks", "base_width", "multiple_of", "init"),
    "md_qr": ("operation", "collisions", "head", "alpha", "base_width", "multiple_of", "init"),
    "cce": ("rows", "chunks", "seed", "kmeans_iters", "kmeans_samples"),
    **dict.fromkeys(("qr", "mixed_radix", "crt"), ("operation", "collisions", "k", "init")),
}  # fmt: skip
# The fields hashed whatever their value: every field there was when this rule began (results
# version 1), and a scheme added since with the settings it was added with. A field added to a
# section or to a scheme that is already here goes in NEUTRAL, never here.
BASELINE: frozenset[str] = frozenset({
    "imports", "data.dataset", "model.name", "model.embedding_dim", "model.sparse",
    *(f"model.embedding.{name}" for name in ("scheme", "threshold", "mode", "order",
                                             "order_seed", "hot")),
    *(f"model.embedding[{scheme}].{name}" for scheme, names in _BASELINE_SCHEMES.items()
      for name in names),
    *(f"train.{name}" for name in ("optimizer", "lr", "batch_size", "epochs", "seed", "shuffle",
                                   "eval_every", "checkpoint_every", "eval_batch_size",
                                   "max_steps", "device", "sharding", "keep_checkpoints")),
})  # fmt: skip
# A field added later -> the value at which training runs as before the field existed; the field
# is left out of the digest at that value. Whoever adds a config field or a scheme setting
# records it here (scheme settings as model.embedding[SCHEME].NAME).
NEUTRAL: dict[str, Any] = {
    "train.recluster_every": None,  # runs of the MovieLens frontier were written before it
    "train.shuffle_seed": None,  # None: the order follows train.seed, as before the field
    "model.embedding.budget": None,  # None: the scheme's own knob sizes it, as before
    "train.warmup_steps": 0,  # 0: no warm-up, as before the field (its default is 100)
    "train.lr_decay": 0.0,  # 0: a constant rate after the warm-up, as before the field
    "model.embedding[robe].shared": False,  # one array per feature, as before ROBE-Z
    "model.embedding.cap_at_full": False,  # features planned as asked, as before the cap
    "model.embedding[md].widths_over_all": False,  # MD's planning before the reference's
    "model.embedding[md].bias": False,
    "train.recluster_until": 1.0,  # to the end, as recluster_every N did before
    "train.recluster_times": 3,  # (only for recluster_every: null, which meant never before)
    # CCE's KD-tree k-means, for R above 4,096 only: every run before it had R <= 1,964, and
    # clusters at these values as it did
    "model.embedding[cce].kmeans_exact_rows": 4096,
    "model.embedding[cce].kmeans_max_queries": 2**25,
}
# A setting renamed since -> the name it is hashed under, so runs written before keep their digest.
RENAMED: dict[str, str] = {
    "model.embedding[md].table_budget": "model.embedding[md].budget",
}


def flat_config(config: Config) -> dict[str, Any]:
    """Every field of ``config`` by dotted key (a scheme's own as ``model.embedding[S].NAME``).

    >>> from compemb.config import load_config_text
    >>> flat = flat_config(load_config_text("model: {embedding: {scheme: hash, collisions: 4}}",
    ...                                     "inline"))
    >>> flat["model.embedding.scheme"], flat["model.embedding[hash].collisions"], flat["train.lr"]
    ('hash', 4, None)
    """
    return _flatten(config.to_dict(), config.model.embedding.scheme)


def _flatten(tree: dict[str, Any], scheme: str, path: str = "") -> dict[str, Any]:
    """Dotted keys of a config in the nested form of ``Config.to_dict`` or a config file."""
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        where = f"{path}.{key}" if path else str(key)
        if path == "model.embedding" and key not in ("scheme", *SHARED):
            where = f"model.embedding[{scheme}].{key}"
        where = RENAMED.get(where, where)
        if isinstance(value, dict):
            out.update(_flatten(value, scheme, where))
        else:
            out[where] = list(value) if isinstance(value, tuple) else value
    return out


def _is_neutral(key: str, value: Any) -> bool:
    if key not in NEUTRAL:
        return False
    neutral = NEUTRAL[key]
    return type(value) is type(neutral) and value == neutral


def config_fields(config: Config) -> dict[str, Any]:
    """The fields a run's digest hashes: :func:`flat_config` less those at their neutral value."""
    return {k: v for k, v in flat_config(config).items() if not _is_neutral(k, v)}


def _digest(fields: dict[str, Any], version: int) -> str:
    payload = json.dumps({"results_version": version, "config": fields}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:8]


def run_digest(config: Config) -> str:
    """The 8 hex digits that end the run folder's name of ``config`` at :data:`RESULTS_VERSION`."""
    return _digest(config_fields(config), RESULTS_VERSION)


def write_version(folder: Path) -> None:
    """Stamp ``folder`` (made if missing) with :data:`RESULTS_VERSION`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / VERSION_FILE).write_text(f"{RESULTS_VERSION}\n")


def folder_version(folder: Path) -> int:
    """The results version that wrote the run in ``folder`` (1 for a folder without a stamp)."""
    path = folder / VERSION_FILE
    if not path.is_file():
        return _UNSTAMPED
    text = path.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{path}: expected a results version (an integer), got {text!r}")
    return int(text)


def check_version(folder: Path) -> None:
    """Raise unless the run in ``folder`` was written at :data:`RESULTS_VERSION` (its name carries
    this version's digest, so another stamp means the folder was moved by hand)."""
    version = folder_version(folder)
    if version != RESULTS_VERSION:
        raise ValueError(f"{folder} was written at results version {version}, this code is at "
                         f"{RESULTS_VERSION}, yet its name carries this version's digest (moved "
                         f"by hand?): delete it to train the run again")  # fmt: skip


def _written_digest(folder: Path) -> str | None:
    """The digest today's rule gives the run ``folder`` holds, from its config file and version;
    None if it cannot be known: no config file, one that no longer loads, or one written before a
    field existed that has no neutral value."""
    path = RunFolder(folder).config
    try:
        raw = yaml.safe_load(path.read_text())
        config = config_from_dict(raw, str(path))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    written = _flatten(raw, config.model.embedding.scheme)
    fields = {}
    for key, value in flat_config(config).items():
        if key not in written:  # a field added after the run: it ran as at the neutral value
            if key not in NEUTRAL:
                return None
        elif not _is_neutral(key, value):
            fields[key] = value
    return _digest(fields, folder_version(folder))


def adopt_earlier(folder: Path, config: Config) -> bool:
    """Rename to ``folder`` an earlier folder of the same run, if ``folder`` does not exist.

    An earlier folder is a sibling whose name differs from ``folder``'s in the digest alone and
    whose run, read from its ``config.yaml`` and version stamp, has ``config``'s digest at
    :data:`RESULTS_VERSION` (a finished one first). It is then stamped with the current version,
    which its digest says it was written at. Returns whether one was adopted.
    """
    parent, name, digest = folder.parent, folder.name, run_digest(config)
    if not name.endswith(f"-{digest}"):
        raise ValueError(f"{folder}: a run folder of this config ends in -{digest}")
    if folder.exists() or not parent.is_dir():
        return False
    stem = name[: -len(digest)]
    candidates = [
        p for p in parent.iterdir()
        if p.name.startswith(stem) and len(p.name) == len(name)
        and all(c in "0123456789abcdef" for c in p.name[len(stem):])
    ]  # fmt: skip
    candidates.sort(key=lambda p: (not RunFolder(p).is_done(), p.name))
    for earlier in candidates:
        if _written_digest(earlier) == digest:
            earlier.rename(folder)
            write_version(folder)
            return True
    return False
