"""The API reference pages, generated from ``__all__`` when the documentation builds.

Every importable compemb module whose name has no leading underscore and that defines
``__all__`` gets a page listing its public names. Each object is documented once, on the page of
the module that defines it (or, when that module is private or does not export it, of the
exporting module nearest to it); the other pages that export it link there. A name added to any
``__all__`` therefore appears in the reference without an edit here
(``tests/test_docs.py`` checks that every one does).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

OUT = "api"  # under the documentation's source folder; generated, not committed


def public_modules(package: str = "compemb") -> list[ModuleType]:
    """Every module of ``package`` without a ``_`` component in its name that defines __all__."""
    root = importlib.import_module(package)
    names = [package] + [info.name for info in pkgutil.walk_packages(root.__path__, package + ".")]
    modules = []
    for name in sorted(names):
        if any(part.startswith("_") for part in name.split(".")):
            continue
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            modules.append(module)
    return modules


def _home(obj: Any, exporters: list[str]) -> str:
    """The module whose page documents ``obj``: its defining module if that exports it, else
    the exporting module sharing the longest dotted prefix with it (the deepest for data)."""
    defined = getattr(obj, "__module__", None)
    if defined in exporters:
        return defined
    if defined is None:
        return max(exporters, key=lambda m: (m.count("."), m))

    def shared(module: str) -> int:
        a, b = module.split("."), defined.split(".")
        pairs = enumerate(zip(a, b, strict=False))
        return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))

    return max(exporters, key=lambda m: (shared(m), -m.count("."), m))


def _directive(obj: Any) -> tuple[str, list[str]]:
    if inspect.isclass(obj):
        kind = "exception" if issubclass(obj, BaseException) else "class"
        return "auto" + kind, [":members:"]
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction", []
    return "autodata", [":annotation:"]


def reference_pages(modules: list[ModuleType]) -> dict[str, str]:
    """Page name -> reStructuredText for every module in ``modules``, and ``index``."""
    exporters: dict[int, list[str]] = {}
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                exporters.setdefault(id(obj), []).append(module.__name__)
    pages = {}
    for module in modules:
        title = f"``{module.__name__}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {module.__name__}",
                 "   :no-members:", ""]  # fmt: skip
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                lines += [f"- ``{name}``: the module :py:mod:`{obj.__name__}`", ""]
                continue
            home = _home(obj, exporters[id(obj)])
            if home != module.__name__:
                lines += [f"- ``{name}``: :py:obj:`{home}.{name}`", ""]
                continue
            directive, options = _directive(obj)
            lines += [f".. {directive}:: {module.__name__}.{name}"]
            lines += [f"   {option}" for option in options] + [""]
        pages[module.__name__] = "\n".join(lines)
    toc = "\n".join(f"   {module.__name__}" for module in modules)
    pages["index"] = (
        "API reference\n=============\n\n"
        "Every public name of compemb: the names in ``compemb.__all__`` and in the ``__all__`` of "
        "every module without a leading underscore, generated from their docstrings.\n\n"
        f".. toctree::\n   :maxdepth: 1\n\n{toc}\n"
    )
    return pages


def write_pages(folder: Path) -> list[Path]:
    """Write the reference pages into ``folder``; files whose text is unchanged are left alone
    (so an incremental build does not redo them)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in reference_pages(public_modules()).items():
        path = folder / f"{name}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    for stale in set(folder.glob("*.rst")) - set(written):
        stale.unlink()
    return written


def _on_builder_inited(app: Any) -> None:
    write_pages(Path(app.srcdir) / OUT)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
