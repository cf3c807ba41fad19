"""A cell's state, read from its directory alone, so any process (a restarted driver,
`--status`, a job on another node) sees the same thing.

* done: results.json exists and its run finished. It is written to a temporary name and
  renamed, so a killed cell never leaves a results file that looks complete.
* running: running.json's process is alive (same host: its pid; elsewhere: a heartbeat
  younger than `stale_after`).
* failed: error.json (the exception and traceback).
* queued: submitted.json names a job that is still alive.
* pending: anything else, including a cell whose process died (a stale running.json).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tta.harness.results import dump_json

STATES = ("done", "running", "queued", "failed", "pending")


@dataclass(frozen=True)
class CellFiles:
    """The files of one cell directory."""

    root: Path

    @property
    def id(self) -> str:
        return self.root.name

    config = property(lambda self: self.root / "config.json")
    results = property(lambda self: self.root / "results.json")
    error = property(lambda self: self.root / "error.json")
    running = property(lambda self: self.root / "running.json")
    submitted = property(lambda self: self.root / "submitted.json")
    attempts = property(lambda self: self.root / "attempts.log")
    log = property(lambda self: self.root / "log.txt")


@dataclass(frozen=True)
class CellState:
    status: str
    detail: str = ""


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, dump_json(value))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_results(files: CellFiles) -> dict | None:
    """results.json when the run finished (not interrupted), else None."""
    results = read_json(files.results)
    if results is None or results.get("interrupted") or results.get("stage") != "finished":
        return None
    return results


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a zombie, exited but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def marker(**extra: Any) -> dict[str, Any]:
    """Who and when: host, pid and time, plus `extra`."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra}


def running_alive(info: dict | None, now: float | None = None) -> bool:
    """Whether the process that wrote running.json still runs the cell."""
    if not info:
        return False
    if info.get("host") == socket.gethostname():
        return pid_alive(int(info.get("pid", -1)))
    beat = float(info.get("beat", info.get("time", 0)))
    stale_after = 4 * float(info.get("heartbeat_s", 30)) + 60
    return (now or time.time()) - beat < stale_after


def job_alive(info: dict | None, slurm_state: Any = None) -> tuple[bool, str]:
    """Whether the job a cell was submitted to is alive, and what is known of it.

    Local jobs: their controller's pid on this host. SLURM jobs: `slurm_state(job_id)`
    (sacct through submitit); when it cannot be asked, the job is assumed alive: a duplicate
    submission would only queue a job that skips the cell.
    """
    if not info:
        return False, ""
    kind, job = info.get("executor"), str(info.get("job_id"))
    if kind == "local":
        alive = info.get("host") == socket.gethostname() and pid_alive(int(job))
        return alive, f"local job {job}"
    if kind == "slurm":
        state = slurm_state(job) if slurm_state else None
        if state is None:
            return True, f"slurm job {job} (state unknown)"
        return state in SLURM_ALIVE, f"slurm job {job} {state}"
    return False, ""


SLURM_ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "READY",
    "UNKNOWN",
}


def cell_state(files: CellFiles, slurm_state: Any = None) -> CellState:
    """The state of a cell from its files (see the module docstring for the order)."""
    if finished_results(files) is not None:
        return CellState("done")
    running = read_json(files.running)
    if running_alive(running):
        return CellState("running", f"{running.get('host')} pid {running.get('pid')}")
    error = read_json(files.error)
    if error is not None:
        return CellState("failed", str(error.get("error", "")).splitlines()[0][:200])
    alive, detail = job_alive(read_json(files.submitted), slurm_state)
    if alive:
        return CellState("queued", detail)
    if running:
        return CellState("pending", "its process died; it will be rerun")
    return CellState("pending")


def attempts(files: CellFiles) -> int:
    """How many times the cell was started (lines of attempts.log)."""
    try:
        return len(files.attempts.read_text().splitlines())
    except OSError:
        return 0
