"""Sphinx configuration of compemb's documentation (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "compemb"
author = "compemb contributors"
copyright = "compemb contributors"  # noqa: A001 (Sphinx's name)

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "myst_parser",
    "apiref",  # docs/_ext/apiref.py: the API reference pages, from every module's __all__
    "docstrings",  # docs/_ext/docstrings.py: napoleon, reading our properties as prose
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "**/rows-150k/*.csv"]
html_theme = "furo"
html_title = "compemb"

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# torch's docstrings (nn.EmbeddingBag.forward, ...) are not ours to render.
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Strict: every reference must resolve. Names from other projects cannot, offline (no
# intersphinx inventories are downloaded), so they are the only ones let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|nn|numpy|np|polars|pl|pyarrow|matplotlib|yaml|torchrec|fbgemm_gpu|tqdm|"
               r"abc)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|pathlib|os|io|argparse|dataclasses|enum|concurrent)"
               r"(\..*)?"),
    # TYPE_CHECKING-only names of torchrec in our signatures.
    (r"py:class", r"(KeyedJaggedTensor|KeyedTensor)"),
    # private names (a leading underscore: not documented) in signatures and bases, such as the
    # bag type of stacked groups' signatures (compemb.embeddings._bags.Bags)
    (r"py:class", r"Bags"),
    (r"py:class", r"compemb(\.\w+)*\._\w+"),
    # Config's dataclass signature keeps its annotations as strings; Sphinx splits the quoted
    # "tuple[str, ...]" of Config.imports at its comma.
    (r"py:class", r"'tuple\[str"),
    # Type variables of generic helpers (Registry[T]) are not documented objects.
    (r"py:.*", r"compemb(\.\w+)*\.T"),
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|frozenset|type|object|None|"
               r"Ellipsis|NotImplemented|BaseException|Exception|ValueError|slice|range|"
               r"Callable|Iterable|Iterator|Sequence|Mapping|Any|Literal|ClassVar|Path|"
               r"Tensor|ndarray|Module|Parameter|Optimizer|DataFrame|dtype|device)"),
]
