"""MovieLens-100k as a click-through task, read from the installed ``recbole`` package.

The files ship in the recbole wheel (``recbole/dataset_example/ml-100k/``); their licence forbids
redistribution, so they are read in place and never copied. recbole itself is not imported (its
dependencies are not installed): only its folder is located.

Task: label = rating >= 4 (55.4 % positive). One row per rating (100,000), split by a seeded
permutation into 80 % train, 10 % val, 10 % test (rows kept in file order within a split).

Features (ids are contiguous, in sorted token order, numeric tokens numerically; a missing value
is a category of its own, the last id):

============  ===========  ==========================================================
feature       cardinality  notes
============  ===========  ==========================================================
user_id       943
item_id       1682
age           61           ages as tokens
gender        2
occupation    21
zip_code      795
release_year  72           71 years + missing (items 267, 1412: "unkonwn", "V")
genres        19           multi-hot bag (1 to 6 genres per movie), "unknown" included
============  ===========  ==========================================================

No dense features. :func:`movielens_100k_counts` gives the training split's per-id counts in the
form :func:`~compemb.data.storage.read_category_counts` gives a dataset folder's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl

from compemb.data.dataset import ArrayDataset, SplitArrays

__all__ = [
    "MOVIELENS_FEATURES",
    "movielens_100k_dir",
    "load_movielens_100k",
    "movielens_100k_counts",
]

MOVIELENS_FEATURES: tuple[str, ...] = (
    "user_id", "item_id", "age", "gender", "occupation", "zip_code", "release_year", "genres",
)  # fmt: skip
_MISSING = "\x00missing"  # sorts apart from every real token


def movielens_100k_dir() -> Path:
    """The ``ml-100k`` folder inside the installed recbole package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MovieLens-100k is read from the recbole package, which is not installed "
            "(pip install --no-deps recbole==1.2.1)"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    locations = list(spec.submodule_search_locations)
    raise FileNotFoundError(f"no dataset_example/ml-100k in the recbole package at {locations}")


def _read_atomic(path: Path) -> pl.DataFrame:
    """A recbole atomic file: tab-separated, header ``name:type``; every column as a string."""
    frame = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    return frame.rename({c: c.split(":", 1)[0] for c in frame.columns})


def _token_order(token: str) -> tuple[int, int, str]:
    if token == _MISSING:
        return (2, 0, "")
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


def _encode(column: pl.Series) -> tuple[np.ndarray, int]:
    """Contiguous ids ((n,) int32) of a string column, and the number of ids."""
    tokens = sorted(column.unique().to_list(), key=_token_order)
    mapping = {token: i for i, token in enumerate(tokens)}
    ids = column.replace_strict(mapping, return_dtype=pl.Int32).to_numpy()
    return ids, len(tokens)


def load_movielens_100k(seed: int = 0) -> ArrayDataset:
    """MovieLens-100k as a :class:`~compemb.data.dataset.ArrayDataset` (features above).

    Args:
        seed: seed of the 80/10/10 split permutation.
    """
    splits, cardinalities = _splits(seed)
    return ArrayDataset(
        name="movielens-100k",
        feature_names=MOVIELENS_FEATURES,
        cardinalities=cardinalities,
        num_dense=0,
        splits=splits,
        num_bag_features=1,
    )


def _splits(seed: int) -> tuple[dict[str, SplitArrays], list[int]]:
    """The three splits' arrays and every feature's cardinality."""
    folder = movielens_100k_dir()
    ratings = _read_atomic(folder / "ml-100k.inter")
    users = _read_atomic(folder / "ml-100k.user")
    items = _read_atomic(folder / "ml-100k.item")
    rows = ratings.join(users, on="user_id", how="left", maintain_order="left").join(
        items, on="item_id", how="left", maintain_order="left"
    )
    if rows.height != ratings.height:
        raise ValueError(f"{folder}: duplicate user or item ids in the .user/.item files")

    def clean(name: str, valid: pl.Expr) -> pl.Expr:
        col = pl.col(name).str.strip_chars()
        present = col.is_not_null() & (col != "") & valid
        return pl.when(present).then(col).otherwise(pl.lit(_MISSING))

    single = rows.select(
        *[clean(name, pl.lit(True)) for name in MOVIELENS_FEATURES[:6]],
        clean("release_year", pl.col("release_year").str.contains(r"^\s*\d{4}\s*$")),
        clean("class", pl.lit(True)).str.split(" ").alias("genres"),
    )
    columns, cardinalities = [], []
    for name in MOVIELENS_FEATURES[:7]:
        ids, size = _encode(single.get_column(name))
        columns.append(ids)
        cardinalities.append(size)
    categorical = np.stack(columns, axis=1)
    genres = single.get_column("genres")
    genre_ids, genre_size = _encode(genres.explode())
    cardinalities.append(genre_size)
    row_offsets = np.zeros(rows.height + 1, dtype=np.int64)
    np.cumsum(genres.list.len().to_numpy(), out=row_offsets[1:])
    labels = (rows.get_column("rating").cast(pl.Float64) >= 4).cast(pl.UInt8).to_numpy()

    order = np.random.default_rng(seed).permutation(rows.height)
    cuts = [round(0.8 * rows.height), round(0.9 * rows.height)]
    splits = {}
    for name, part in zip(("train", "val", "test"), np.split(order, cuts), strict=True):
        part = np.sort(part)
        starts, ends = row_offsets[part], row_offsets[part + 1]
        offsets = np.zeros(len(part) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], ends - starts) + np.arange(offsets[-1])
        splits[name] = SplitArrays(
            categorical=categorical[part],
            dense=np.zeros((len(part), 0), dtype=np.float32),
            labels=labels[part],
            bags=((genre_ids[index], offsets),),
        )
    return splits, cardinalities


def movielens_100k_counts(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Per-id counts of the training split of :func:`load_movielens_100k` ``(seed)``.

    Returns one (cardinality_f,) int64 array per feature, in ``MOVIELENS_FEATURES`` order, as
    :func:`~compemb.data.storage.read_category_counts` returns a dataset folder's: ``counts[f][i]``
    is how many training rows hold id ``i`` of feature ``f``; for the ``genres`` bag, how many bag
    entries (a movie of 3 genres counts once for each).
    """
    splits, cards = _splits(seed)
    train = splits["train"]
    counts = [np.bincount(train.categorical[:, f], minlength=cards[f]).astype(np.int64)
              for f in range(train.categorical.shape[1])]  # fmt: skip
    for b, (values, _) in enumerate(train.bags):
        f = train.categorical.shape[1] + b
        counts.append(np.bincount(values, minlength=cards[f]).astype(np.int64))
    return tuple(counts)
