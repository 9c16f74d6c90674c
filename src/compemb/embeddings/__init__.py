"""Embedding modules that drop in where ``torch.nn.EmbeddingBag`` was."""

from compemb.embeddings.base import FullEmbeddingBag, full_table_bound
from compemb.embeddings.budget import (
    embedding_bytes,
    embedding_parameters,
    fit_budget,
    resolve_budget,
)
from compemb.embeddings.collection import EmbeddingBagCollection
from compemb.embeddings.factory import make_embedding_bag, module_from_plan
from compemb.embeddings.operation import (
    CompositionalEmbeddingBag,
    FeatureEmbeddingBag,
    HashEmbeddingBag,
)
from compemb.embeddings.path import TRANSFORMS, PathEmbeddingBag
from compemb.operations import OPERATIONS, get_operation, register_operation
from compemb.scheme import SCHEMES, Scheme, register_scheme
from compemb.spec import (
    EmbeddingSpec,
    FeaturePlan,
    plan_collection,
    plan_feature,
    resolve_spec,
    schemes,
    spec_partitions,
)

__all__ = [
    "OPERATIONS",
    "SCHEMES",
    "TRANSFORMS",
    "CompositionalEmbeddingBag",
    "EmbeddingBagCollection",
    "EmbeddingSpec",
    "FeatureEmbeddingBag",
    "FeaturePlan",
    "FullEmbeddingBag",
    "HashEmbeddingBag",
    "PathEmbeddingBag",
    "Scheme",
    "embedding_bytes",
    "embedding_parameters",
    "fit_budget",
    "full_table_bound",
    "get_operation",
    "make_embedding_bag",
    "module_from_plan",
    "plan_collection",
    "plan_feature",
    "register_operation",
    "register_scheme",
    "resolve_budget",
    "resolve_spec",
    "schemes",
    "spec_partitions",
]
