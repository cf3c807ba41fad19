"""The local executor (real processes through submitit): a 2x2x2 grid, and a driver killed
with SIGKILL mid-sweep (one cell finished, another running in a job the driver started),
then restarted: it must lose no finished cell, wait for the orphaned one, rerun none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_sweep_fixtures import attempts_of, results_of, tiny_grid, tiny_grid_data, write_grid

from tta.harness.sweep.driver import drive
from tta.harness.sweep.identity import cell_id, run_config

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"kind": "local", "parallel": 2, "threads": 1}


def test_a_2x2x2_grid_through_local_processes(fmnist_root, tmp_path):
    axes = {"method": ["tent", "pl"], "lr": [1e-4, 1e-3], "seed": [0, 1]}
    grid = tiny_grid(fmnist_root, tmp_path / "out", axes, {**LOCAL, "cells_per_job": 4})
    sweep, summary = drive(grid, echo=lambda _: None)
    assert summary.counts == {"done": 8} and summary.started == 8 and summary.rerun == 0
    results = results_of(sweep.dir)
    assert len(results) == 8
    for cell in sweep.plan.test:  # each directory is named by its own config's hash
        assert cell.id == cell_id(run_config(cell.options))
        card = results[cell.id]["protocol"]
        assert card["seed"] == cell.seed and card["lr"] == cell.options["lr"]
        assert card["loss"] == cell.options["method"]
    jobs = {p.name for p in (sweep.dir / "jobs").iterdir() if p.name != "%j"}
    assert len(jobs) == 2, "8 cells packed 4 per job"

    again, summary = drive(grid, echo=lambda _: None)
    assert summary.started == 0 and summary.counts == {"done": 8}


def mid_sweep(out: Path) -> list[str]:
    """The cells running (claimed, no results) once at least one other cell has finished."""
    if not results_of(out):
        return []
    cells = (out / "cells").iterdir()
    return [
        d.name for d in cells if (d / "running.json").exists() and not (d / "results.json").exists()
    ]


def test_kill_9_of_the_driver_loses_nothing_and_reruns_nothing(fmnist_root, tmp_path):
    out = tmp_path / "out"
    axes = {"method": ["tent"], "seed": [0, 1, 2]}
    data = tiny_grid_data(fmnist_root, out, axes, {**LOCAL, "cells_per_job": 2})
    grid_file = write_grid(tmp_path / "grid.yaml", data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tta.sweep_cli", str(grid_file), "--no-report"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    running: list[str] = []
    while time.time() < deadline and driver.poll() is None and not running:
        time.sleep(0.05)
        running = mid_sweep(out)
    driver.send_signal(signal.SIGKILL)  # one cell finished, another one running
    driver.wait()
    assert running, "killed while one cell was finished and another running"
    finished = {
        name: (out / "cells" / name / "results.json").stat().st_mtime_ns for name in results_of(out)
    }

    grid = tiny_grid(fmnist_root, out, axes, {**LOCAL, "cells_per_job": 2})
    sweep, summary = drive(grid, echo=lambda _: None)
    assert summary.counts == {"done": 3} and summary.rerun == 0
    assert attempts_of(out) == {cell.id: 1 for cell in sweep.plan.test}, "no cell ran twice"
    jobs = [p for p in (out / "jobs").iterdir() if p.name != "%j"]
    assert len(jobs) == 2, "the restarted driver waited for the old jobs, submitted none"
    for name, mtime in finished.items():
        assert (out / "cells" / name / "results.json").stat().st_mtime_ns == mtime
