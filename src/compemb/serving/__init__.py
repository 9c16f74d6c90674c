"""Serving trained models: tables row-wise quantized (fp16, int8, int4) and looked up by
FBGEMM's inference kernels for every scheme, bytes counted, the model exported as one program.

``fbgemm_gpu`` (the ``torchrec`` extra) is imported when a quantized table is built.
"""

from compemb.serving.collection import QuantizedEmbeddingCollection, feature_precisions
from compemb.serving.model import (
    ServingModel,
    export_program,
    load_program,
    quantize_model,
    serving_bytes,
)
from compemb.serving.precision import PRECISIONS, Precision, table_precision
from compemb.serving.tables import QuantizedTables

__all__ = [
    "PRECISIONS",
    "Precision",
    "QuantizedEmbeddingCollection",
    "QuantizedTables",
    "ServingModel",
    "export_program",
    "feature_precisions",
    "load_program",
    "quantize_model",
    "serving_bytes",
    "table_precision",
]
