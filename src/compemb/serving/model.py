"""A trained model made ready to serve: its tables quantized, its bytes counted, and the whole
model written as one ``torch.export`` program that runs without compemb.

Letters: B samples, F1 single-valued features, N ids of a bag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compemb import _kernels
from compemb.models import MODELS, RankingModel, build_model
from compemb.serving.collection import QuantizedEmbeddingCollection
from compemb.serving.precision import require_fbgemm

__all__ = ["ServingModel", "export_program", "load_program", "quantize_model", "serving_bytes"]

EXTRA_FILE = "compemb.json"  # what the program was made from, inside the .pt2 file


def quantize_model(model: RankingModel, precision: str, *,
                   per_feature: Mapping[str, str] | None = None,
                   feature_names: Sequence[str] | None = None, one_hot: int = 0
                   ) -> RankingModel:
    """A copy of ``model`` (with the local collection) whose tables are row-wise quantized
    (:class:`~compemb.serving.collection.QuantizedEmbeddingCollection`), in eval mode; its
    dense parts are the model's own float32 values. ``model`` is left as it was.

    Args:
        precision: ``fp32``, ``fp16``, ``int8`` or ``int4`` (see
            ``compemb.serving.precision.PRECISIONS``).
        per_feature: another precision for some features, by name.
        feature_names: the features' names (default ``f0, f1, ...``).
        one_hot: the first ``one_hot`` features always come as ids, one per sample.
    """
    name = next((k for k, cls in MODELS.items() if type(model) is cls), None)
    if name is None:
        raise ValueError(f"quantize_model takes a model of {', '.join(MODELS)}, got "
                         f"{type(model).__name__}")
    arch = model.sparse_arch
    if not hasattr(arch, "plans"):
        raise ValueError(f"quantize_model needs the local collection, got "
                         f"{type(arch).__name__} (load a sharded run with load_local)")
    quantized = QuantizedEmbeddingCollection.from_collection(
        arch, precision, per_feature=per_feature, feature_names=feature_names, one_hot=one_hot)
    served = build_model(name, arch.cardinalities, model.num_dense, model.embedding_dim,
                         arch.spec, sparse_arch=quantized)  # fmt: skip
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("sparse_arch.")}
    state.update({f"sparse_arch.{k}": v for k, v in quantized.state_dict().items()})
    served.load_state_dict(state)
    return served.eval()


def serving_bytes(model: RankingModel) -> dict[str, int]:
    """What a served model holds, in bytes: tables (with scales and biases), id maps, dense
    parts (MLPs, interaction, path functions, projections), their total, and the embedding
    layer's share (tables, maps and the dense parts applied to looked-up rows).

    A model with the local collection counts its tables in float32."""
    arch = model.sparse_arch
    if isinstance(arch, QuantizedEmbeddingCollection):
        tables, maps, arch_dense = sum(arch.table_bytes().values()), arch.map_bytes, \
            arch.dense_bytes
    else:
        table_ids = {id(p) for p in arch.table_parameters()}
        tables = sum(p.numel() * p.element_size() for p in arch.table_parameters())
        maps = arch.index_bytes
        arch_dense = sum(p.numel() * p.element_size() for p in arch.parameters()
                         if id(p) not in table_ids)  # fmt: skip
    outside = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if not name.startswith("sparse_arch."))  # fmt: skip
    return {"table_bytes": tables, "map_bytes": maps, "dense_bytes": outside + arch_dense,
            "total_bytes": tables + maps + outside + arch_dense,
            "embedding_bytes": tables + maps + arch_dense}


class ServingModel(nn.Module):
    """A ranking model answering requests: probabilities instead of logits.

    Forward: ``(dense (B, num_dense), ids (B, F1), bags)`` -> probabilities (B,), ``bags``
    the multi-hot features as ``(values (N,), offsets (B,))`` pairs.
    """

    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, dense: torch.Tensor, ids: torch.Tensor,
                bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
        return torch.sigmoid(self.model(dense, ids, bags))


def export_program(model: RankingModel, out: str | Path, example: tuple[Any, ...],
                   info: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as one ``torch.export`` program (``.pt2``) answering with probabilities.

    The batch size and every bag's length are dynamic; ``example`` is one
    ``(dense, ids, bags)`` request of at least 2 samples to trace with. compemb's compiled
    kernels are off while tracing (ctypes calls do not export). ``info`` (JSON) is stored in
    the file beside the program (:func:`load_program` returns it). The program runs with torch
    alone, and ``fbgemm_gpu`` imported first when its tables are quantized.
    """
    dense, ids, bags = example
    if dense.shape[0] < 2:
        raise ValueError(f"trace with a batch of at least 2 samples (got {dense.shape[0]}): "
                         f"a batch of 1 would be fixed in the program")
    batch = torch.export.Dim("batch")
    shapes = {"dense": {0: batch}, "ids": {0: batch},
              "bags": tuple(({0: torch.export.Dim(f"ids_of_bag{j}")}, {0: batch})
                            for j in range(len(bags)))}  # fmt: skip
    served = ServingModel(model)
    with torch.no_grad(), _kernels.turned_off():
        program = torch.export.export(served, (dense, ids, tuple(bags)), dynamic_shapes=shapes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out, extra_files={EXTRA_FILE: json.dumps(dict(info or {}))})
    return out


def load_program(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a program :func:`export_program` wrote, callable as
    ``(dense, ids, bags) -> probabilities``, and the info stored with it. Outside compemb:
    ``import fbgemm_gpu`` then ``torch.export.load(path).module()``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported program at {path}")
    require_fbgemm()  # registers the lookup operator a quantized program calls
    extra = {EXTRA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra[EXTRA_FILE] or "{}")
