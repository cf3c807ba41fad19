"""The sweep driver: submit what is not done, watch, select, repeat until nothing is left.

Everything the driver knows it reads from the cell directories, so it can be killed at any
moment (even `kill -9`) and started again: finished cells are skipped, cells still running
in jobs of the old driver are waited for (never submitted twice), cells whose process died
are submitted again. Failed cells stay failed until `--retry-failed`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tta.harness.sweep.executors import make_executor, threads_per_job
from tta.harness.sweep.grid import Grid
from tta.harness.sweep.job import run_cells
from tta.harness.sweep.plan import Cell
from tta.harness.sweep.select import selections
from tta.harness.sweep.state import attempts, marker, write_json
from tta.harness.sweep.study import Sweep

Echo = Callable[[str], None]
MAX_SUBMISSIONS = 2  # per cell and driver run: a cell whose job keeps dying is left pending


@dataclass
class Summary:
    """What a driver run did; `rerun` counts cells finished before it that ran again."""

    counts: dict[str, int] = field(default_factory=dict)
    started: int = 0
    rerun: int = 0
    wall_s: float = 0.0
    blocked: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return set(self.counts) <= {"done"}


def retry_failed(sweep: Sweep, echo: Echo) -> int:
    """Move each failed cell's error.json aside (error.prev.json): it is pending again."""
    count = 0
    for cell in sweep.plan.unique(sweep.plan.cells):
        files = sweep.files(cell.id)
        if sweep.state(cell.id).status == "failed":
            shutil.move(files.error, files.root / "error.prev.json")
            count += 1
    echo(f"--retry-failed: {count} failed cell(s) will run again")
    return count


def chunks(cells: list[Cell], size: int) -> list[list[Cell]]:
    return [cells[i : i + size] for i in range(0, len(cells), size)]


class Driver:
    """One driver run over a sweep (see the module docstring)."""

    def __init__(self, sweep: Sweep, echo: Echo = print, wait: bool = True) -> None:
        self.sweep = sweep
        self.spec = sweep.grid.executor
        self.echo = echo
        self.wait = wait
        self.executor = make_executor(self.spec, sweep.jobs_dir, sweep.grid.name)
        self.inflight: list[tuple[Any, list[str]]] = []
        self.submissions: Counter[str] = Counter()

    def run(self) -> Summary:
        sweep = self.sweep
        start = time.time()
        sweep.write_plan()
        every = sweep.plan.unique(sweep.plan.cells)
        before = {c.id: attempts(sweep.files(c.id)) for c in every}
        done_before = {c.id for c in every if sweep.state(c.id).status == "done"}
        self.echo(self.describe_start())
        try:
            while True:
                todo = self.step()
                if not self.wait:  # --no-wait: what could start is submitted
                    break
                busy = self.inflight or any(
                    sweep.state(c.id).status in ("running", "queued") for c in sweep.needed()
                )
                if not todo and not busy:
                    break
                time.sleep(self.spec.poll_s)
        except KeyboardInterrupt:
            self.echo("interrupted: run tta-sweep again to resume (finished cells are kept)")
            raise
        summary = Summary(wall_s=time.time() - start)
        after = {c.id: attempts(sweep.files(c.id)) for c in every}
        summary.started = sum(after[i] - before[i] for i in after)
        summary.rerun = sum(after[i] > before[i] for i in done_before)
        summary.counts = dict(Counter(sweep.state(c.id).status for c in sweep.needed()))
        summary.blocked = blocked_rows(sweep)
        self.log(summary, start)
        return summary

    def describe_start(self) -> str:
        cells = self.sweep.needed()
        counts = Counter(self.sweep.state(c.id).status for c in cells)
        parts = [f"{counts[s]} {s}" for s in ("done", "running", "queued", "failed", "pending")]
        later = ""
        if self.sweep.grid.select and not self.sweep.grid.select.oracle:
            later = " (+ the selected test cells once chosen)"
        return f"sweep {self.sweep.grid.name}: {len(cells)} cells{later}: " + ", ".join(parts)

    def step(self) -> list[Cell]:
        """Collect finished jobs, submit what can start now; returns the cells still to run."""
        self.collect()
        sweep = self.sweep
        mine = {cell for _, ids in self.inflight for cell in ids}
        cells = sweep.needed()
        states = {cell.id: sweep.state(cell.id) for cell in cells}
        todo = [
            cell
            for cell in cells
            if states[cell.id].status == "pending"
            and cell.id not in mine
            and self.submissions[cell.id] < MAX_SUBMISSIONS
        ]
        batches = chunks(todo, self.spec.cells_per_job)
        if self.spec.kind == "local":
            foreign = {
                s.detail for i, s in states.items() if s.status == "running" and i not in mine
            }
            free = self.spec.parallel - len(self.inflight) - len(foreign)
            batches = batches[: max(0, free)]
        if batches:
            self.submit(batches)
            if self.spec.kind == "debug":
                self.collect()  # submitit's debug jobs run when asked for their result
        return todo

    def submit(self, batches: list[list[Cell]]) -> None:
        args = (str(self.sweep.dir), threads_per_job(self.spec), self.spec.heartbeat_s)
        quiet = self.spec.kind != "debug"
        with self.executor.batch():
            jobs = [
                self.executor.submit(run_cells, args[0], [c.id for c in batch], *args[1:], quiet)
                for batch in batches
            ]
        for job, batch in zip(jobs, batches, strict=True):
            ids = [c.id for c in batch]
            self.inflight.append((job, ids))
            for cell_id in ids:
                self.submissions[cell_id] += 1
                info = marker(executor=self.spec.kind, job_id=str(job.job_id))
                write_json(self.sweep.files(cell_id).submitted, info)
        self.echo(f"submitted {sum(map(len, batches))} cell(s) in {len(batches)} job(s)")

    def collect(self) -> None:
        """Forget finished jobs; a cell a crashed job left unfinished gets its error.json."""
        still = []
        for job, ids in self.inflight:
            if not job.done():
                still.append((job, ids))
                continue
            error = job_error(job)
            for cell_id in ids:
                state = self.sweep.state(cell_id)
                if error and state.status == "pending":
                    write_json(
                        self.sweep.files(cell_id).error,
                        marker(
                            error=f"job {job.job_id} ended before the cell finished: {error}",
                            traceback=error,
                            job_id=str(job.job_id),
                        ),
                    )
                self.echo(f"  {cell_id}: {self.sweep.state(cell_id).status}")
        self.inflight = still

    def log(self, summary: Summary, start: float) -> None:
        line = {
            "start": start,
            "wall_s": summary.wall_s,
            "executor": self.spec.kind,
            "counts": summary.counts,
            "started": summary.started,
            "rerun": summary.rerun,
        }
        with open(self.sweep.dir / "sweep.log", "a") as handle:
            handle.write(json.dumps(line) + "\n")


def job_error(job: Any) -> str | None:
    """The job's own failure (killed, out of memory, timeout), or None when it returned."""
    try:
        error = job.exception()
    except Exception as raised:  # noqa: BLE001 - submitit could not read the job's result
        return f"{type(raised).__name__}: {raised}"
    return None if error is None else f"{type(error).__name__}: {error}"


def blocked_rows(sweep: Sweep) -> list[str]:
    """Rows whose selection waits on failed validation cells."""
    if sweep.grid.select is None:
        return []
    out = []
    for row, choice in selections(sweep.plan, sweep.read).items():
        failed = [i for i in choice.missing if sweep.state(i).status == "failed"]
        if failed:
            name = ", ".join(f"{k}={v}" for k, v in row) or "(all)"
            out.append(f"{name}: validation cell(s) {', '.join(failed)} failed")
    return out


def drive(
    grid: Grid, *, retry: bool = False, wait: bool = True, echo: Echo = print
) -> tuple[Sweep, Summary]:
    """Run the sweep of `grid` until every needed cell is done or failed (see module doc)."""
    sweep = Sweep(grid)
    sweep.dir.mkdir(parents=True, exist_ok=True)
    if retry:
        retry_failed(sweep, echo)
    summary = Driver(sweep, echo, wait).run()
    return sweep, summary
