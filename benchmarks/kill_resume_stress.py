"""Kill and resume under stress: 2-rank MovieLens runs killed with SIGKILL at random points
(also inside a checkpoint save), resumed on 1 or 2 ranks, must end where an uninterrupted run
ends. Not a test of the default suite: each try takes one or two minutes of two cores.

Each try launches `torchrun --nproc_per_node=2 ... compemb train` (sharded by TorchRec, or
replicated with ``--replicated``), then kills it with SIGKILL:

- whom: ``all`` (the launcher and every rank at once, as a lost machine), ``launcher`` (the
  torchrun process alone, as `kill -9 PID` of the command one started), ``rank`` (one rank;
  torchrun stops the other);
- when: ``random`` (a uniform time, once the run trains: a validation record past where it
  started), ``save`` (after a shorter random wait, once a save's temporary folder or file
  appears: 0-30 ms later, or as it goes if sooner), ``commit`` (likewise, as soon as a new
  checkpoint is complete: while the older ones are deleted).

``--whom`` and ``--when`` narrow the draws (``--when save`` to hammer the saves).

The run is resumed with `compemb train --resume` on 1 or 2 ranks, at once as a user would,
killed again in a third of the tries, and resumed to the end. A try passes when every process
of a killed run is gone within ``--grace`` seconds, the last resume exits 0 (a resume that
starts while the killed ranks still live may be refused with a message naming the folder; it
is retried once they are gone), and the run's final metrics and validation records equal the
uninterrupted run's (exactly when every part ran on 2 ranks, within 1e-4 in log loss when a
part ran on 1: the float sums differ). Failing tries keep their run folder and every log.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kill_resume_stress.py --out /tmp/kr \\
        --tries 20 --replicated 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from compemb.training.checkpoint import load_checkpoint
from compemb.training.run_folder import RunFolder
from compemb.training.sharded_checkpoint import EXTRA

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "movielens-dlrm-qr.yaml"
WHOM = ("all", "launcher", "rank")
WHEN = ("random", "save", "commit")
TIMING = ("train_seconds", "samples_per_s", "world_size")
BUSY = "another process is training it"  # the refusal of a resume while the run still runs


@dataclass
class Run:
    """One `compemb train` (torchrun and its ranks, or one process) and its log. ``after``: the
    pids of the killed run it resumes; while they live, it may be refused."""

    args: list[str]
    ranks: int
    log: Path
    after: list[int] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    refusals: int = 0

    def start(self) -> Run:
        command = [sys.executable, "-m", "compemb.cli", *self.args]
        if self.ranks > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={self.ranks}", "-m", "compemb.cli",
                       *self.args]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)  # fmt: skip
        self.started = time.monotonic()
        return self

    def tree(self) -> list[int]:
        """The launcher's pid and its children's (the ranks, each in a session of its own)."""
        return [self.proc.pid, *children(self.proc.pid)] if self.proc.poll() is None else []

    def retry_if_refused(self, grace: float) -> bool:
        """Whether it ended refused (the killed ranks still ran); then start it again once
        they are gone, its log kept beside."""
        if self.proc.poll() in (None, 0) or BUSY not in self.log.read_text():
            return False
        self.refusals += 1
        os.replace(self.log, self.log.with_suffix(f".refused-{self.refusals}.log"))
        wait_gone(self.after, grace)
        self.start()
        return True

    def wait(self, grace: float, timeout: float = 600) -> int | str:
        """Its exit status (after any retries), or "timeout" (then it is killed)."""
        try:
            while self.proc.wait(timeout=timeout) != 0 and self.retry_if_refused(grace):
                pass
        except subprocess.TimeoutExpired:
            for pid in self.tree():
                os.kill(pid, signal.SIGKILL)
            return "timeout"
        return self.proc.returncode


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def settings(replicated: bool, steps: int, every: int) -> list[str]:
    sharding = "replicate" if replicated else "torchrec"
    args = ["--config", str(CONFIG)]
    for s in (f"train.sharding={sharding}", f"train.max_steps={steps}",
              f"train.checkpoint_every={every}", "train.eval_every=25"):  # fmt: skip
        args += ["--set", s]
    return args


def checkpoints(run_dir: Path) -> list[str]:
    """What marks the run's saves: complete sharded checkpoints, or checkpoint.pt's mtime."""
    found = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    single = run_dir / "checkpoint.pt"
    return found + ([f"pt@{single.stat().st_mtime_ns}"] if single.exists() else [])


def in_save(run_dir: Path) -> bool:
    partial = any((run_dir / "checkpoints").glob(".partial-*"))
    return partial or (run_dir / ".checkpoint.pt.tmp").exists()


def last_record(run_dir: Path) -> int | None:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else None
    except (OSError, ValueError, KeyError):
        return None


def saved_step(run_dir: Path) -> int | None:
    """The step the newest complete checkpoint holds (what a resume starts from), if any."""
    folder = RunFolder(run_dir)
    newest = folder.latest_sharded()
    try:  # a rank that outlived the kill may be replacing it
        saved = load_checkpoint(newest / EXTRA if newest is not None else folder.checkpoint)
        return int(saved["state"]["step"])
    except (OSError, ValueError):
        return None


def kill(run: Run, run_dir: Path, whom: str, when: str, start: int, window: float,
         rng: random.Random, grace: float) -> dict:
    """Once the run trains past step ``start`` (a validation record beyond it), wait a time
    drawn from [0, ``window``] s, then for the moment ``when``, and SIGKILL ``whom``; what
    happened, for the summary."""
    deadline = time.monotonic() + 600

    def running() -> bool:
        ended = run.proc.poll() is not None and not run.retry_if_refused(grace)
        return not ended and time.monotonic() < deadline

    while running() and (last_record(run_dir) or 0) <= start:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, window if when == "random" else 0.7 * window))
    before = checkpoints(run_dir)
    while when != "random" and running():
        if when == "save" and in_save(run_dir):  # a random point of it, or its end if sooner
            until = time.monotonic() + rng.uniform(0, 0.03)
            while time.monotonic() < until and in_save(run_dir):
                time.sleep(0.0005)
            break
        if when == "commit" and checkpoints(run_dir) != before:
            break
        time.sleep(0.001)
    tree = run.tree()
    event = {"whom": whom, "when": when, "ranks": run.ranks, "saving": in_save(run_dir),
             "after_s": round(time.monotonic() - run.started, 2)}  # fmt: skip
    if run.refusals:
        event["refused_first"] = run.refusals
    if not tree:
        event["missed"] = f"the run had ended (exit {run.proc.returncode})"
        return event
    targets = {"all": tree, "launcher": tree[:1], "rank": [rng.choice(tree[1:] or tree)]}[whom]
    for pid in targets:
        os.kill(pid, signal.SIGKILL)
    run.proc.wait()
    event.update(pids=tree, last_record=last_record(run_dir))
    return event


def wait_gone(pids: list[int], grace: float) -> list[int]:
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def final(run_dir: Path) -> dict:
    data = json.loads((run_dir / "final.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compare(run_dir: Path, reference: Path, exact: bool) -> str | None:
    """None when the run ended as the reference did, else what differs."""
    got, want = final(run_dir), final(reference)
    if exact and got != want:
        return f"final.json differs: {got} != {want}"
    for key, b in want.items():
        a = got.get(key)
        # log losses are float sums; an accuracy or AUC moves when a score crosses a threshold
        off = 1e-4 if "loss" in key else 1e-3
        if not (a == b or isinstance(b, float) and a is not None and abs(a - b) <= off):
            return f"final.json {key}: {a} != {b}"
    mine, theirs = records(run_dir), records(reference)
    steps = [r["step"] for r in mine]
    if steps != [r["step"] for r in theirs]:
        return f"metrics.jsonl steps {steps} != {[r['step'] for r in theirs]}"
    worst = max(abs(a["val_logloss"] - b["val_logloss"]) for a, b in zip(mine, theirs,
                                                                          strict=True))
    if worst > (0 if exact else 1e-4):
        return f"metrics.jsonl val_logloss off by {worst:.2e}"
    leftovers = list((run_dir / "checkpoints").glob(".partial-*"))
    return f"left {leftovers}" if leftovers else None


def one_try(n: int, out: Path, replicated: bool, reference: Path, seconds_per_step: float,
            args: argparse.Namespace, rng: random.Random) -> dict:
    """Launch, kill once or twice, resume on 1 or 2 ranks each time, check the end."""
    folder = out / f"try-{n:03d}-{'replicated' if replicated else 'sharded'}"
    run_dir, logs = folder / "run", folder / "logs"
    logs.mkdir(parents=True)
    run = Run(["train", *settings(replicated, args.steps, args.checkpoint_every), "--out",
               str(run_dir)], 2, logs / "0-launch.log").start()  # fmt: skip
    result: dict = {"try": n, "path": "replicated" if replicated else "sharded", "kills": [],
                    "resumes": [], "failures": []}  # fmt: skip
    exact, reached = True, 0
    for k in range(2 if rng.random() < 0.35 else 1):
        left = args.steps - reached - 25  # the kill waits for a validation record (every 25)
        event = kill(run, run_dir, rng.choice(args.whom), rng.choice(args.when), reached,
                     max(0.0, left * seconds_per_step), rng, args.grace)  # fmt: skip
        done = saved_step(run_dir) or 0
        reached = max(done, event.get("last_record") or 0)
        event["resumes_from"] = done
        result["kills"].append(event)
        ranks = rng.choice((1, 2))
        exact &= ranks == 2
        result["resumes"].append(ranks)
        run = Run(["train", "--resume", str(run_dir)], ranks,
                  logs / f"{k + 1}-resume-{ranks}.log", event.get("pids", [])).start()
        survivors = wait_gone(event.get("pids", []), args.grace)  # while the resume starts
        if survivors:
            result["failures"].append(f"pids {survivors} outlived the SIGKILL by {args.grace} s")
    code = run.wait(args.grace)
    result["refused"] = run.refusals
    if code != 0:
        result["failures"].append(f"the last resume exited {code} (log {run.log})")
    else:
        result["failures"] += [d for d in [compare(run_dir, reference, exact)] if d]
    result["ok"] = not result["failures"]
    if result["ok"]:
        shutil.rmtree(run_dir)  # the logs stay
    return result


def reference_run(out: Path, replicated: bool, args: argparse.Namespace) -> tuple[Path, float]:
    """An uninterrupted 2-rank run of the same settings, and its seconds per step."""
    run_dir = out / f"reference-{'replicated' if replicated else 'sharded'}"
    if not (run_dir / "final.json").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        run = Run(["train", *settings(replicated, args.steps, args.checkpoint_every), "--out",
                   str(run_dir)], 2, out / f"{run_dir.name}.log").start()  # fmt: skip
        if run.wait(args.grace) != 0:
            raise RuntimeError(f"the reference run failed: see {run.log}")
    data = json.loads((run_dir / "final.json").read_text())
    return run_dir, data["train_seconds"] / data["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="tries, logs, summary.jsonl")
    parser.add_argument("--tries", type=int, default=20, help="tries on the sharded path")
    parser.add_argument("--replicated", type=int, default=4, help="tries on the replicated path")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds a killed run's processes may take to end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whom", nargs="+", choices=WHOM, default=list(WHOM),
                        help="whom a kill may hit (drawn per kill)")
    parser.add_argument("--when", nargs="+", choices=WHEN, default=list(WHEN),
                        help="the moments a kill may come at (drawn per kill)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    paths = [False] * args.tries + [True] * args.replicated
    references = {r: reference_run(args.out, r, args) for r in set(paths)}
    start = 1 + len(list(args.out.glob("try-*")))
    failed = 0
    with open(args.out / "summary.jsonl", "a") as summary:
        for n, replicated in enumerate(paths, start):
            result = one_try(n, args.out, replicated, *references[replicated], args, rng)
            failed += not result["ok"]
            summary.write(json.dumps(result) + "\n")
            summary.flush()
            print(json.dumps(result), flush=True)
    print(f"{len(paths) - failed} of {len(paths)} tries passed; summary in "
          f"{args.out / 'summary.jsonl'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
