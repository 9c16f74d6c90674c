import doctest
from pathlib import Path

import compemb.embeddings.base
import compemb.embeddings.budget
import compemb.embeddings.collection
import compemb.embeddings.operation
import compemb.embeddings.path
import compemb.operations
import compemb.partitions
import compemb.registry
import compemb.spec

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20 and result.failed == 0


def test_docstring_examples_run():
    for module in (compemb.partitions, compemb.operations, compemb.registry, compemb.spec,
                   compemb.embeddings.base, compemb.embeddings.operation, compemb.embeddings.path,
                   compemb.embeddings.collection, compemb.embeddings.budget):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0 or module is compemb.embeddings.base, module.__name__
