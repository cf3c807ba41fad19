"""The SLURM path through submitit's own mocked sbatch/sacct (no cluster): the sbatch file
carries the grid's partition, time, cpus, GPUs, memory, account and array parallelism."""

from __future__ import annotations

import pytest
from test_sweep_fixtures import tiny_grid, tiny_grid_data, write_grid

from tta.harness.sweep.driver import drive
from tta.harness.sweep.executors import slurm_parameters
from tta.harness.sweep.status import status_lines
from tta.harness.sweep.study import Sweep

mocked_slurm = pytest.importorskip("submitit.slurm.test_slurm").mocked_slurm

SLURM = {
    "kind": "slurm",
    "partition": "long",
    "time": "2:30:00",
    "cpus": 4,
    "gpus": 1,
    "mem": 32,
    "array_parallelism": 3,
    "account": "rrg-lab",
    "qos": "normal",
    "cells_per_job": 2,
    "setup": ["module load cuda/12"],
}


def test_the_sbatch_file_carries_the_grid_resources(tmp_path):
    axes = {"method": ["tent", "pl"], "lr": [1e-4, 1e-3, 1e-2]}
    grid = tiny_grid(tmp_path, tmp_path / "out", axes, SLURM)
    with mocked_slurm():
        sweep, summary = drive(grid, wait=False, echo=lambda _: None)
        sbatch = list((sweep.dir / "jobs").rglob("*_submission.sh"))
        assert len(sbatch) == 1, "one array job"
        text = sbatch[0].read_text()
        for line in (
            "#SBATCH --partition=long",
            "#SBATCH --time=150",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --gpus-per-node=1",
            "#SBATCH --mem=32GB",
            "#SBATCH --account=rrg-lab",
            "#SBATCH --qos=normal",
            "#SBATCH --array=0-2%3",  # 6 cells, 2 per job: 3 array tasks, 3 at a time
            "#SBATCH --job-name=tta-sweep-tiny",
            "export OMP_NUM_THREADS=4",
            "module load cuda/12",
        ):
            assert line in text, line
        status = "\n".join(status_lines(Sweep(grid)))
        assert "6 queued" in status and "slurm job 12_0 RUNNING" in status
    assert summary.counts == {"queued": 6}


def test_flags_override_the_grid(tmp_path, monkeypatch):
    from tta.sweep_cli import main

    submitted = {}

    def fake_drive(grid, retry, wait):
        submitted.update(slurm_parameters(grid.executor, grid.name), kind=grid.executor.kind)
        raise KeyboardInterrupt

    monkeypatch.setattr("tta.harness.sweep.driver.drive", fake_drive)
    grid_file = write_grid(
        tmp_path / "g.yaml", tiny_grid_data(tmp_path, tmp_path / "o", {"lr": [0.1]}, SLURM)
    )
    args = ["--partition", "short", "--gpus", "2", "--time", "1-0", "--account", "x", "--mem", "8G"]
    assert main([str(grid_file), *args, "--array-parallelism", "7"]) == 130
    assert submitted["partition"] == "short" and submitted["gpus_per_node"] == 2
    assert submitted["time"] == 1440 and submitted["account"] == "x" and submitted["mem"] == "8G"
    assert submitted["array_parallelism"] == 7 and submitted["cpus_per_task"] == 4
