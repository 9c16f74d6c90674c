import doctest
from pathlib import Path

import compemb.embeddings.base
import compemb.embeddings.collection
import compemb.embeddings.operation
import compemb.embeddings.path
import compemb.partitions

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20 and result.failed == 0


def test_docstring_examples_run():
    for module in (compemb.partitions, compemb.embeddings.base, compemb.embeddings.operation,
                   compemb.embeddings.path, compemb.embeddings.collection):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
