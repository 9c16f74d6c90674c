"""Training and evaluation: the resumable loop, metrics, checkpoints, torchrun scale-out and
parameter accounting (the optimizers it builds are registered in :mod:`compemb.optim`)."""

from compemb.optim import make_optimizer
from compemb.training.build import embedding_spec, forward, model_for
from compemb.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from compemb.training.distributed import DistInfo, pick_device
from compemb.training.evaluate import evaluate, evaluate_run, export_run, load_local
from compemb.training.loop import TrainingDiverged, resume, train
from compemb.training.metrics import binary_metrics
from compemb.training.params import count_parameters, load_cardinalities, parameter_report

__all__ = [
    "CheckpointError",
    "DistInfo",
    "TrainingDiverged",
    "binary_metrics",
    "count_parameters",
    "embedding_spec",
    "evaluate",
    "evaluate_run",
    "export_run",
    "forward",
    "load_cardinalities",
    "load_checkpoint",
    "load_local",
    "make_optimizer",
    "model_for",
    "parameter_report",
    "pick_device",
    "resume",
    "save_checkpoint",
    "train",
]
