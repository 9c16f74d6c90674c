"""The README is the door: short, with the parts a newcomer needs, every link working. (Its
examples and commands run in tests/test_docs.py, with the documentation's.)"""

import doctest
import re
from pathlib import Path

import compemb.embeddings.base
import compemb.embeddings.budget
import compemb.embeddings.collection
import compemb.embeddings.operation
import compemb.embeddings.path
import compemb.experiments.digest
import compemb.operations
import compemb.partitions
import compemb.registry
import compemb.spec

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_is_the_door_not_the_archive():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for part in ("## Set-up", "make test", "make demo", "## Use it as a library",
                 "## Train and evaluate", "## Shard on TorchRec", "## Headline results",
                 "## Documentation", "frontier.png"):  # fmt: skip
        assert part in text, part
    # the headline table is the demo's own report, row for row
    rows = [line for line in text.splitlines()
            if line.startswith(("| full", "| hash", "| qr", "| path", "| md", "| robe", "| cce",
                                "| tt", "| dhe"))]  # fmt: skip
    report = (ROOT / "docs" / "demo" / "report.md").read_text()
    assert len(rows) == 21 and all(row in report for row in rows)


def test_links_of_the_readme_and_the_pages_lead_somewhere():
    pages = [README, *sorted((ROOT / "docs").glob("*.md")), *(ROOT / "docs").glob("*/*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = target.split("#")[0]
            assert (page.parent / path).exists(), f"{page.relative_to(ROOT)}: {target}"


def test_docstring_examples_run():
    for module in (compemb.partitions, compemb.operations, compemb.registry, compemb.spec,
                   compemb.embeddings.base, compemb.embeddings.operation, compemb.embeddings.path,
                   compemb.embeddings.collection, compemb.embeddings.budget,
                   compemb.experiments.digest):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0 or module is compemb.embeddings.base, module.__name__
