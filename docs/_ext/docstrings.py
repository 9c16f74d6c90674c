"""Two readings napoleon and autodoc would get wrong in compemb's docstrings, set right as the
documentation builds (the docstrings stay as they read in the code).

- napoleon reads the first line of a property's docstring as ``type: description``; ours are
  prose ("Trainable parameters (works on the meta device: counts, never allocates)"), so
  properties are read as methods are (a ``Returns:`` section still works).
- A module-level constant without a doc comment (``MODELS = {...}``) would show the docstring of
  its type (``dict``'s); it shows none.
"""

from __future__ import annotations

import inspect
from typing import Any

from sphinx.ext import napoleon


def _napoleon(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    napoleon._process_docstring(app, "method" if what == "property" else what, name, obj,
                                options, lines)  # fmt: skip


def _drop_type_docstring(app: Any, what: str, name: str, obj: Any, options: Any,
                         lines: list[str]) -> None:  # fmt: skip
    # A constant's own __doc__ is its type's (an alias's: its origin's); ours are #: comments.
    if what in ("data", "attribute") and lines and not inspect.isclass(obj):
        own = getattr(obj, "__doc__", None)
        if own and "\n".join(lines).strip() == inspect.cleandoc(own).strip():
            lines[:] = []


def setup(app: Any) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.napoleon")
    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _drop_type_docstring, priority=400)
    app.connect("autodoc-process-docstring", _napoleon)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
