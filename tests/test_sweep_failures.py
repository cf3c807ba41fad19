"""A failing cell records its error and traceback and the others go on; --retry-failed
reruns only the failed ones; a cell killed while saving never looks complete."""

from __future__ import annotations

import json

import pytest
from test_sweep_fixtures import attempts_of, results_of, tiny_grid_data, write_grid

import tta.harness.sweep.job as job
from tta.sweep_cli import main


@pytest.fixture
def grid_file(fmnist_root, tmp_path):
    data = tiny_grid_data(fmnist_root, tmp_path / "out", {"lr": [1e-4, 1e-3, 1e-2]}, "debug")
    return write_grid(tmp_path / "grid.yaml", data)


def failing_at(lr_value):
    real = job.run_config_with_shared_data

    def run(config, echo):
        if config.lr == lr_value:
            raise RuntimeError(f"CUDA out of memory (simulated) at lr={config.lr}")
        return real(config, echo)

    return run


def test_a_failure_stays_in_its_cell_and_retry_reruns_only_it(
    grid_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    monkeypatch.setattr(job, "run_config_with_shared_data", failing_at(1e-3))
    assert main([str(grid_file)]) == 1
    printed = capsys.readouterr().out
    assert "1 failed" in printed and "2 done" in printed and "--retry-failed" in printed
    done = results_of(out)
    assert len(done) == 2
    (failed,) = [d for d in (out / "cells").iterdir() if d.name not in done]
    error = json.loads((failed / "error.json").read_text())
    assert error["error"] == "RuntimeError: CUDA out of memory (simulated) at lr=0.001"
    assert "Traceback" in error["traceback"] and "failing_at" not in error["error"]
    assert "run_config_with_shared_data" in error["traceback"] or "in run" in error["traceback"]
    assert not (failed / "results.json").exists()

    assert main([str(grid_file), "--status"]) == 0
    status = capsys.readouterr().out
    assert f"{failed.name} failed" in status and "CUDA out of memory" in status

    assert main([str(grid_file)]) == 1  # without --retry-failed nothing runs again
    assert attempts_of(out) == {name: 1 for name in attempts_of(out)}

    monkeypatch.undo()
    assert main([str(grid_file), "--retry-failed"]) == 0
    after = attempts_of(out)
    assert after.pop(failed.name) == 2 and set(after.values()) == {1}
    assert len(results_of(out)) == 3 and (failed / "error.prev.json").exists()
    assert not (failed / "error.json").exists()


def test_a_cell_killed_while_saving_leaves_no_results_file(grid_file, tmp_path, monkeypatch):
    """results.json is renamed into place last: a crash before that leaves none."""
    real_commit = job.commit

    def crash(staging, cell_dir):
        assert (staging / "results.json").exists()  # written, but only in the staging folder
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(job, "commit", crash)
    main([str(grid_file), "--no-report"])
    out = tmp_path / "out"
    assert results_of(out) == {}
    assert all((d / "error.json").exists() for d in (out / "cells").iterdir())
    assert not list(out.rglob(".staging-*"))
    monkeypatch.setattr(job, "commit", real_commit)
    assert main([str(grid_file), "--retry-failed"]) == 0
    assert len(results_of(out)) == 3
