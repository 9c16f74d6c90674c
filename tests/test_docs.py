"""The documentation cannot drift from the code: its Python examples and shell commands run
here, and its API reference lists every public name."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The pages a reader follows; the experiments' report.md files under docs/ are their output.
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted(DOCS.glob("guide/*.md")),
         *sorted(DOCS.glob("results/*.md"))]  # fmt: skip
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
SETUP = re.compile(r"<!-- test setup: (\w+) -->")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the text just before the fence) of every fenced block."""
    return [(m.group(1), m.group(2), text[: m.start()].rstrip().rsplit("\n", 1)[-1])
            for m in FENCE.finditer(text)]  # fmt: skip


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "getting-started.md", "criteo.md", "design.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_examples_run(page: Path):
    text = page.read_text()
    blocks = [(lang, body) for lang, body, _ in _blocks(text) if lang in ("python", "pycon")]
    for lang, body in blocks:
        # pycon blocks are doctests; they end in a blank line so doctest sees where output ends
        assert lang == "pycon" and body.startswith(">>>") and body.endswith("\n\n"), (
            f"{page.name}: Python examples are doctests: ```pycon, '>>> ' prompts, a blank last "
            f"line; found:\n{body}"
        )
    if blocks:
        result = doctest.testfile(str(page), module_relative=False,
                                  optionflags=doctest.ELLIPSIS)  # fmt: skip
        assert result.failed == 0 and result.attempted >= len(blocks)


def _tiny_criteo(folder: Path) -> None:
    """A Criteo Kaggle train.txt of 7 days of 40 lines, and a Terabyte folder of 3 day files."""
    # tests/data/conftest.py writes the data tests' Criteo lines; a conftest is not importable
    # by name from here (tests/conftest.py shadows it), so it is loaded from its file.
    spec = importlib.util.spec_from_file_location("criteo_lines", ROOT / "tests/data/conftest.py")
    lines_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lines_module)
    criteo_line = lines_module.criteo_line

    (folder / "train.txt").write_text("".join(criteo_line(i) + "\n" for i in range(280)))
    (folder / "terabyte").mkdir()
    for day in range(3):
        lines = (criteo_line(100 * day + i) + "\n" for i in range(60))
        (folder / "terabyte" / f"day_{day}").write_text("".join(lines))


SETUPS = {"criteo": _tiny_criteo}


def _ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session marks the blocks it ran (verbatim, from a fresh folder): the
    getting-started page repeats the README's, and a block run once is not run again. Under
    xdist the folder is shared by the workers (their base temp folders' parent)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "docs-ran"
    folder.mkdir(exist_ok=True)
    return folder


def _mark(body: str) -> str:
    return hashlib.sha1(body.encode()).hexdigest()


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_shell_commands_run_or_say_why_not(page: Path, tmp_path: Path,
                                           tmp_path_factory: pytest.TempPathFactory):
    """Every ```bash block runs, in order, in a fresh folder beside the configs, or is marked
    <!-- not run: REASON --> just above its fence."""
    text = page.read_text()
    ran = _ran(tmp_path_factory)
    commands = []
    for lang, body, before in _blocks(text):
        if lang in ("sh", "shell", "console"):
            pytest.fail(f"{page.name}: shell blocks are ```bash (found ```{lang})")
        if lang != "bash":
            continue
        marked = NOT_RUN.search(before)
        if marked is not None:
            assert len(marked.group(1).split()) >= 3, f"{page.name}: say why not: {body}"
        elif not (ran / _mark(body)).exists():
            commands.append(body)
    if not commands:
        return
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for name in SETUP.findall(text):
        SETUPS[name](tmp_path)
    # One torch thread per command: on a busy machine two threads wait for each other and a
    # MovieLens epoch takes minutes instead of seconds.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = "set -euo pipefail\n" + "\n".join(commands)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"{page.name}:\n{script}\n{output}"
    if not SETUP.search(text):
        for body in commands:
            (ran / _mark(body)).touch()


def _apiref():
    sys.path.insert(0, str(DOCS / "_ext"))
    return importlib.import_module("apiref")


def test_api_reference_documents_every_public_name():
    apiref = _apiref()
    modules = apiref.public_modules()
    names = {m.__name__ for m in modules}
    # the walk reaches packages, their modules, and nothing private
    assert {"compemb", "compemb.spec", "compemb.optim", "compemb.optim.rowwise",
            "compemb.data.criteo", "compemb.config"} <= names  # fmt: skip
    assert not any("._" in n for n in names)
    pages = apiref.reference_pages(modules)
    documented = set()
    for module in modules:
        text = pages[module.__name__]
        for full in re.findall(r"^\.\. auto(?:class|exception|function|data):: (\S+)$", text, re.M):
            owner, _, name = full.rpartition(".")
            documented.add(id(getattr(importlib.import_module(owner), name)))
        assert f".. automodule:: {module.__name__}\n" in text
        assert module.__name__ in pages["index"]
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                assert obj.__name__ in names, f"{module.__name__}.{name}: module not in reference"
            else:
                assert id(obj) in documented, f"{module.__name__}.{name} is not in the reference"
                assert f"``{name}``" in pages[module.__name__] or (
                    f"{module.__name__}.{name}\n" in pages[module.__name__])


def test_api_reference_documents_each_object_once_and_links_the_rest():
    apiref = _apiref()
    pages = apiref.reference_pages(apiref.public_modules())
    directives = re.findall(r"^\.\. auto(?:class|exception|function|data):: (\S+)$",
                            "\n".join(pages.values()), re.M)  # fmt: skip
    assert len(directives) == len(set(directives))
    spec = pages["compemb"]
    assert ".. autoclass:: compemb.EmbeddingSpec" not in spec
    assert ":py:obj:`compemb.spec.EmbeddingSpec`" in spec  # defined in compemb.spec
