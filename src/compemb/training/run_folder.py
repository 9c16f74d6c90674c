"""A run folder and the files ``compemb train`` writes into it, named in one place."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from compemb.config import Config, load_run_config


class RunInUse(FileExistsError):
    """A run folder another process is writing (:meth:`RunFolder.writing`): taken, as a
    folder that already holds a run is for a new one."""


@dataclass(frozen=True)
class RunFolder:
    """The folder of one training run.

    It holds ``config.yaml`` (the resolved config, written first), ``metrics.jsonl`` (one record
    per validation), the last atomic checkpoint (``checkpoint.pt``, or for a sharded run the
    newest complete folder in ``checkpoints/``), once the run is done ``final.json`` (its
    final metrics), and ``.lock``, locked while a process writes the run (:meth:`writing`).

    >>> RunFolder(Path("runs/a")).checkpoint.as_posix()
    'runs/a/checkpoint.pt'
    """

    path: Path  # a str is taken as a path

    CONFIG: ClassVar[str] = "config.yaml"
    METRICS: ClassVar[str] = "metrics.jsonl"
    CHECKPOINT: ClassVar[str] = "checkpoint.pt"
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    FINAL: ClassVar[str] = "final.json"
    LOCK: ClassVar[str] = ".lock"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def checkpoints(self) -> Path:
        """The folder of a sharded run's checkpoints."""
        return self.path / self.CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.path / self.FINAL

    def latest_sharded(self) -> Path | None:
        """The newest complete checkpoint folder of a sharded run, or None."""
        from compemb.training.sharded_checkpoint import latest

        return latest(self.checkpoints)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the folder's lock (its file ``.lock``) while this process writes the run; the
        lock goes with the process, however it ends.

        Raises:
            FileNotFoundError: no such folder.
            RunInUse: another process holds it (the same run started twice, or ranks of a
                killed run still alive), with that process's pid.
        """
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such run folder")
        with open(self.path / self.LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise RunInUse(f"{self.path} is in use: another process is training it (pid "
                               f"{f.read().strip() or '?'}); resume it once that process has "
                               f"ended") from None  # fmt: skip
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield

    def holds_run(self) -> bool:
        """Whether a run was started here (its config, a checkpoint or final metrics exist)."""
        return any(p.exists() for p in (self.config, self.checkpoint, self.checkpoints,
                                        self.final))

    def is_done(self) -> bool:
        return self.final.is_file()

    def require(self, file: Path, hint: str) -> Path:
        """``file`` if it exists, else a FileNotFoundError naming it and what to do."""
        if not file.is_file():
            raise FileNotFoundError(f"{self.path}: {file.name} is missing ({hint})")
        return file

    def read_config(self) -> Config:
        """The config the run was started with."""
        return load_run_config(self.require(self.config, "not a run folder"))

    def read_final(self) -> dict[str, Any]:
        """The final metrics of a finished run."""
        return _read_json(self.require(self.final, "the run has not finished"))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The validation records, in order."""
        path = self.require(self.metrics, "not a run folder, or not started")
        lines = path.read_text().splitlines()
        try:
            return [json.loads(line) for line in lines if line]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON lines ({err})") from err


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
