"""`--threads` and its default: OMP_NUM_THREADS when set, else the CPU affinity mask."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_net
from test_interrupts import MemoryBenchmark

import tta.harness.run
from tta.harness.config import RunConfig
from tta.harness.run import run
from tta.harness.threads import choose_threads, default_threads


def test_default_follows_the_affinity_mask(monkeypatch):
    """Machine of 64 cores, this process allowed on 3 of them: 3 threads, not 64."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {4, 5, 9}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert default_threads() == (3, "affinity mask")


def test_explicit_omp_num_threads_wins_over_the_mask(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_threads() == (1, "OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["", "zero", "0"])
def test_unusable_omp_num_threads_falls_back_to_the_mask(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_threads() == (2, "affinity mask")


def test_without_an_affinity_mask_the_cpu_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delattr("os.sched_getaffinity", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert default_threads() == (6, "cpu count")


def test_explicit_threads():
    assert choose_threads(2) == (2, "--threads")
    with pytest.raises(ValueError, match="--threads must be a positive integer"):
        choose_threads(0)


def test_run_applies_the_count_records_it_and_restores_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TTA_QUIET", "1")
    during = []
    build = tta.harness.run.build_adapted

    def spy(*args, **kwargs):
        during.append(torch.get_num_threads())
        return build(*args, **kwargs)

    monkeypatch.setattr(tta.harness.run, "build_adapted", spy)
    before = torch.get_num_threads()
    config = RunConfig(corruptions=("fog",), batch_size=10, n_per_domain=10, threads=3)
    result = run(config, benchmark=MemoryBenchmark(), model=(make_tiny_net(), {}), echo=str)
    assert during == [3] and result.card["threads"] == "3 (--threads)"
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    config = RunConfig(corruptions=("fog",), batch_size=10, n_per_domain=10)
    result = run(config, benchmark=MemoryBenchmark(), model=(make_tiny_net(), {}), echo=str)
    assert result.card["threads"] == "2 (OMP_NUM_THREADS)"
