"""A run folder served: its model quantized, evaluated, and exported as one program."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from compemb.config import Config, config_from_dict
from compemb.data import Dataset, open_dataset
from compemb.models import RankingModel
from compemb.serving.model import (
    EXTRA_FILE,
    export_program,
    load_program,
    quantize_model,
    serving_bytes,
)
from compemb.training.evaluate import evaluate, load_local
from compemb.training.metrics import binary_metrics
from compemb.training.run_folder import RunFolder

__all__ = ["SERVED_FILE", "evaluate_program", "evaluate_quantized", "export_served",
           "quantize_run", "quantized_metrics", "served_metrics"]


def _quantize(model: RankingModel, dataset: Dataset, precision: str,
              per_feature: Mapping[str, str] | None) -> RankingModel:
    return quantize_model(model, precision, per_feature=per_feature,
                          feature_names=dataset.feature_names,
                          one_hot=len(dataset.cardinalities) - dataset.num_bag_features)


def quantize_run(run_dir: str | Path, precision: str, *,
                 per_feature: Mapping[str, str] | None = None
                 ) -> tuple[RankingModel, Config, Dataset]:
    """A run folder's last checkpoint (a sharded one read table by table) with its tables
    quantized; features named as the dataset names them. Also the run's config and dataset."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    dataset = open_dataset(config.data.dataset)
    model = load_local(config, dataset, folder.path)
    served = _quantize(model, dataset, precision, per_feature)
    del model
    return served, config, dataset


def quantized_metrics(model: RankingModel, dataset: Dataset, precision: str, split: str,
                      batch_size: int, *, per_feature: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
    """Log loss, accuracy, AUC and bytes on ``split`` of a float model served in
    ``precision`` (``model`` itself is left as it was); keys ``<split>_<metric>`` and
    ``*_bytes``."""
    served = _quantize(model, dataset, precision, per_feature)
    metrics = evaluate(served, dataset, split, batch_size)
    return {**{f"{split}_{k}": v for k, v in metrics.items()}, **serving_bytes(served)}


def evaluate_quantized(run_dir: str | Path, precision: str, split: str = "test", *,
                       per_feature: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Metrics of a run served in ``precision`` on ``split``, its bytes, and the float32
    model's bytes for comparison (``float32_*_bytes``)."""
    if split not in ("test", "val"):
        raise ValueError(f"split {split!r}: use test or val")
    folder = RunFolder(run_dir)
    config = folder.read_config()
    dataset = open_dataset(config.data.dataset)
    model = load_local(config, dataset, folder.path)
    base = {f"float32_{k}": v for k, v in serving_bytes(model).items()}
    served = _quantize(model, dataset, precision, per_feature)
    del model
    metrics = evaluate(served, dataset, split, config.train.eval_batch_size)
    return {"run": str(folder.path), "split": split, "precision": precision,
            **{f"{split}_{k}": v for k, v in metrics.items()}, **serving_bytes(served), **base}


def export_served(run_dir: str | Path, out: str | Path, precision: str, *,
                  per_feature: Mapping[str, str] | None = None) -> Path:
    """Write a run's model, tables in ``precision``, as one ``torch.export`` program
    (:func:`~compemb.serving.model.export_program`): ``(dense, ids, bags) -> probabilities``,
    with the run's config, precision, feature names and bytes stored beside it."""
    served, config, dataset = quantize_run(run_dir, precision, per_feature=per_feature)
    batch = next(iter(dataset.batches("test", 2)))
    info = {"config": config.to_dict(), "precision": precision,
            "per_feature": dict(per_feature or {}), "feature_names": list(dataset.feature_names),
            "num_bag_features": dataset.num_bag_features, **serving_bytes(served)}
    with torch.no_grad():
        return export_program(served, out, (batch.dense, batch.categorical, batch.bags), info)


@torch.no_grad()
def evaluate_program(path: str | Path, split: str = "test") -> dict[str, Any]:
    """Metrics on ``split`` of a program :func:`export_served` wrote, on the dataset of the
    run it came from (what the artifact itself answers, not the model it was made from)."""
    if split not in ("test", "val"):
        raise ValueError(f"split {split!r}: use test or val")
    program, info = load_program(path)
    if "config" not in info:
        raise ValueError(f"{path}: no run config stored beside the program (not written by "
                         f"compemb export --quantize)")
    config = config_from_dict(info["config"], f"{path} ({EXTRA_FILE})")
    dataset = open_dataset(config.data.dataset)
    probs, labels = [], []
    for batch in dataset.batches(split, config.train.eval_batch_size):
        probs.append(program(batch.dense, batch.categorical, batch.bags))
        labels.append(batch.labels)
    p = torch.cat(probs).clamp(1e-7, 1 - 1e-7).double()
    metrics = binary_metrics(torch.log(p / (1 - p)).float(), torch.cat(labels))
    keep = ("precision", "table_bytes", "map_bytes", "dense_bytes", "total_bytes")
    return {"program": str(path), "split": split, **{k: info[k] for k in keep if k in info},
            **{f"{split}_{k}": v for k, v in metrics.items()}}


SERVED_FILE = "served.json"  # a run folder's metrics served in each precision


def served_metrics(run_dir: str | Path, precisions: Sequence[str], *,
                   dataset: Dataset | None = None) -> dict[str, dict[str, Any]]:
    """Test metrics and bytes of a finished run served in each of ``precisions``, from its
    checkpoint, kept in the run folder's ``served.json`` and read back from there once
    computed (so after the checkpoint is removed). A precision that refuses one of the run's
    tables (a width FBGEMM cannot pack) gets ``{"error": why}``."""
    folder = RunFolder(run_dir)
    path = folder.path / SERVED_FILE
    done = json.loads(path.read_text()) if path.is_file() else {}
    missing = [p for p in precisions if p not in done]
    if missing:
        config = folder.read_config()
        dataset = dataset if dataset is not None else open_dataset(config.data.dataset)
        model = load_local(config, dataset, folder.path)
        for p in missing:
            try:
                done[p] = quantized_metrics(model, dataset, p, "test",
                                            config.train.eval_batch_size)
            except ValueError as err:
                done[p] = {"error": str(err)}
        path.write_text(json.dumps(done, indent=2) + "\n")
    return {p: done[p] for p in precisions}
