"""Serving: modules, the collection and a model export with torch.export (validation off)."""

import pytest
import torch

from compemb import partitions as P
from compemb.embeddings import (
    CompositionalEmbeddingBag,
    EmbeddingBagCollection,
    EmbeddingSpec,
    HashEmbeddingBag,
    PathEmbeddingBag,
)
from compemb.models import build_model

BATCH = torch.export.Dim("batch")


def _check(module, args, dynamic_shapes, more_args):
    module.eval()
    with torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
        for a in (args, more_args):
            torch.testing.assert_close(program.module()(*a), module(*a))


@pytest.mark.parametrize(
    "module",
    [
        CompositionalEmbeddingBag(1000, 8, P.quotient_remainder(1000, 7), "mult", validate=False),
        CompositionalEmbeddingBag(1000, 8, P.chinese_remainder(1000, (31, 37)), "concat",
                                  validate=False),
        PathEmbeddingBag(1000, 8, P.quotient_remainder(1000, 4), hidden=16, validate=False),
        HashEmbeddingBag(1000, 8, 100, validate=False),
    ],
    ids=["qr-mult", "crt-concat", "path", "hash"],
)
def test_module_exports(module):
    x = torch.randint(0, 1000, (4, 3))
    _check(module, (x,), {"input": {0: BATCH}}, (torch.randint(0, 1000, (9, 3)),))


@pytest.mark.parametrize("scheme", ["full", "qr", "path", "feature"])
def test_collection_exports(scheme):
    spec = EmbeddingSpec(scheme, collisions=None if scheme == "full" else 4)
    cards = [1000, 3, 5000, 40]
    ebc = EmbeddingBagCollection(cards, 8, spec, validate=False)
    ids = torch.stack([torch.randint(0, n, (5,)) for n in cards], 1)
    more = torch.stack([torch.randint(0, n, (11,)) for n in cards], 1)
    _check(ebc, (ids,), {"ids": {0: BATCH}}, (more,))


def test_dlrm_exports_and_matches_eager():
    torch.manual_seed(0)
    cards = [1000, 3, 5000, 40]
    model = build_model("dlrm", cards, 13, 16, EmbeddingSpec("qr", collisions=4), validate=False)
    ids = torch.stack([torch.randint(0, n, (6,)) for n in cards], 1)
    more = torch.stack([torch.randint(0, n, (17,)) for n in cards], 1)
    dense, more_dense = torch.rand(6, 13), torch.rand(17, 13)
    _check(model, (dense, ids), {"dense": {0: BATCH}, "ids": {0: BATCH}}, (more_dense, more))
