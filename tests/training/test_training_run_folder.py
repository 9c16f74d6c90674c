"""Run folders that cannot be used stop ``evaluate`` and ``train --resume`` with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trainkit

from compemb.cli import main
from compemb.config import dump_config
from compemb.training import train
from compemb.training.checkpoint import CheckpointError, load_checkpoint
from compemb.training.run_folder import RunFolder


class _Payload:
    """Unpickling this with plain ``torch.load`` would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    data = trainkit.synth_folder(root / "data")
    train(trainkit.tiny_config(data, "train.max_steps=2"), root / "run", progress=False)
    return root / "run"


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _fails_in_one_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_checkpoint_carrying_code_is_refused(copy: Path, capsys, command: str) -> None:
    marker = copy.parent / "code-ran"
    torch.save({"model": _Payload(marker)}, copy / "checkpoint.pt")
    argv = ["evaluate", str(copy)] if command == "evaluate" else ["train", "--resume", str(copy)]
    err = _fails_in_one_line(capsys, *argv)
    assert str(copy / "checkpoint.pt") in err
    assert "weights_only=True" in err and "GLOBAL getattr was not an allowed global" in err
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_truncated_checkpoint_says_so(copy: Path, capsys, command: str) -> None:
    path = copy / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:200])
    argv = ["evaluate", str(copy)] if command == "evaluate" else ["train", "--resume", str(copy)]
    err = _fails_in_one_line(capsys, *argv)
    assert f"{path}: not a readable checkpoint" in err


def test_a_checkpoint_of_another_model_says_so(copy: Path, capsys) -> None:
    saved = load_checkpoint(copy / "checkpoint.pt")
    weights = saved["model"]
    saved["model"] = {k: v[:1] for k, v in weights.items()}
    torch.save(saved, copy / "checkpoint.pt")
    err = _fails_in_one_line(capsys, "evaluate", str(copy))
    assert f"{copy / 'checkpoint.pt'}: its model does not fit" in err and "size mismatch" in err
    saved["model"] = weights
    del saved["optimizer"]
    torch.save(saved, copy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no 'optimizer' entry"):
        train(RunFolder(copy).read_config(), copy, resume=True, progress=False)


def test_missing_files_are_named(copy: Path, capsys) -> None:
    (copy / "checkpoint.pt").unlink()
    err = _fails_in_one_line(capsys, "evaluate", str(copy))
    assert f"{copy}: checkpoint.pt is missing" in err
    (copy / "config.yaml").unlink()
    for argv in (["evaluate", str(copy)], ["train", "--resume", str(copy)]):
        err = _fails_in_one_line(capsys, *argv)
        assert f"{copy}: config.yaml is missing (not a run folder)" in err
    err = _fails_in_one_line(capsys, "evaluate", str(copy / "nowhere"))
    assert "config.yaml is missing" in err


def test_a_run_another_process_writes_is_refused_until_that_process_ends(copy: Path,
                                                                        capsys) -> None:
    """A second writer of a run folder (the run resumed twice, or started while ranks of a
    killed run still train) stops in one line naming the holder; the lock goes with the
    holding process, however it ends (SIGKILL here)."""
    (copy / "final.json").unlink()
    hold = ("import sys, time\nfrom compemb.training.run_folder import RunFolder\n"
            "with RunFolder(sys.argv[1]).writing():\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(copy)], env=trainkit.env(),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        err = _fails_in_one_line(capsys, "train", "--resume", str(copy))
        assert f"{copy} is in use: another process is training it (pid {holder.pid})" in err
        assert not (copy / "final.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(copy)]) == 0
    assert RunFolder(copy).read_final()["steps"] == 2


def test_run_folder_reads_what_the_trainer_wrote(run: Path) -> None:
    folder = RunFolder(str(run))
    assert folder.is_done() and folder.holds_run()
    assert folder.read_final()["steps"] == 2
    assert [r["step"] for r in folder.read_metrics()] == [2]
    assert dump_config(folder.read_config()) == folder.config.read_text()
    assert not RunFolder(run.parent / "empty").holds_run()
