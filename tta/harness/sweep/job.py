"""What a submitit job runs: its cells one after another, each isolated from the others.

A cell claims itself with running.json (created exclusively; a live claim by another
process means skip it), keeps a heartbeat in it, and ends in exactly one of: results.json
(renamed into place after everything else is written), or error.json with the exception
and its traceback. An exception never leaves the cell, so the next cell of the job runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from tta.harness.config import RunConfig, resolve
from tta.harness.run import Echo, RunResult, run, save
from tta.harness.setup import build_benchmark, build_model, build_spec, pick_device
from tta.harness.source_cache import source_errors
from tta.harness.sweep.finetune_cell import run_finetune_cell
from tta.harness.sweep.identity import run_config
from tta.harness.sweep.state import (
    CellFiles,
    finished_results,
    marker,
    read_json,
    running_alive,
    write_json,
)
from tta.paths import cache_dir, data_roots


def run_cells(
    sweep_dir: str,
    cell_ids: list[str],
    threads: int | None = None,
    heartbeat_s: float = 30.0,
    quiet: bool = True,
) -> list[dict[str, str]]:
    """Run the cells of one job in order; returns one {cell, outcome} per cell."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if quiet:
        os.environ.setdefault("TTA_QUIET", "1")
    cells = Path(sweep_dir) / "cells"
    return [run_cell(CellFiles(cells / cell), heartbeat_s) for cell in cell_ids]


def run_cell(files: CellFiles, heartbeat_s: float = 30.0) -> dict[str, str]:
    """Run one cell unless it is done or running elsewhere; never raises an Exception."""
    if finished_results(files) is not None:
        return {"cell": files.id, "outcome": "done before"}
    if not claim(files, heartbeat_s):
        return {"cell": files.id, "outcome": "running elsewhere"}
    try:
        with heartbeat(files, heartbeat_s):
            with open(files.attempts, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {marker(job_id=job_id())}\n")
            outcome = execute(files)
    finally:
        files.running.unlink(missing_ok=True)
    return {"cell": files.id, "outcome": outcome}


def job_id() -> str | None:
    """The submitit job id when running inside one."""
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - not in a submitit job (debug executor, tests)
        return None


def claim(files: CellFiles, heartbeat_s: float) -> bool:
    """Create running.json for this process; False when a live process holds it."""
    info = marker(job_id=job_id(), heartbeat_s=heartbeat_s, beat=time.time())
    try:
        with open(files.running, "x") as handle:
            handle.write("{}")
    except FileExistsError:
        if running_alive(read_json(files.running)):
            return False
    write_json(files.running, info)  # a stale claim (its process died) is taken over
    held = read_json(files.running) or {}
    return (held.get("host"), held.get("pid")) == (info["host"], info["pid"])


@contextlib.contextmanager
def heartbeat(files: CellFiles, every_s: float) -> Iterator[None]:
    """Refresh running.json's `beat` every `every_s` seconds while the cell runs."""
    stop = threading.Event()
    info = read_json(files.running) or marker(heartbeat_s=every_s)

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(OSError):
                write_json(files.running, {**info, "beat": time.time()})

    thread = threading.Thread(target=beat, name="tta-sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def execute(files: CellFiles) -> str:
    """Run the cell's config and commit its results; on any exception write error.json."""
    staging = files.root / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with open(files.log, "a") as log:

        def echo(text: str) -> None:
            log.write(text + "\n")
            log.flush()

        try:
            payload = read_json(files.config)
            if payload.get("kind") == "finetune":  # searched by Optuna; Ctrl-C leaves it pending
                staging.mkdir(parents=True)
                write_json(staging / "results.json", run_finetune_cell(files.root, payload, echo))
                commit(staging, files.root)
                files.error.unlink(missing_ok=True)
                return "done"
            config = run_config(payload["options"])
            result = run_config_with_shared_data(config, echo)
            if result.interrupted:  # Ctrl-C: not the cell's failure; it stays pending
                save(result, files.root / "partial")
                echo(f"interrupted during {result.stage}; partial results in partial/")
                raise KeyboardInterrupt
            save(result, staging)
            commit(staging, files.root)
            files.error.unlink(missing_ok=True)
            return "done"
        except Exception as error:  # noqa: BLE001 - isolate every failure to its cell
            echo(traceback.format_exc())
            write_json(
                files.error,
                marker(
                    error=f"{type(error).__name__}: {error}",
                    traceback=traceback.format_exc(),
                    job_id=job_id(),
                ),
            )
            return "failed"
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def commit(staging: Path, cell_dir: Path) -> None:
    """Move the staged outputs into the cell directory, results.json last (by rename)."""
    for item in sorted(staging.iterdir()):
        if item.name != "results.json":
            target = cell_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    os.replace(staging / "results.json", cell_dir / "results.json")


@contextlib.contextmanager
def data_lock() -> Iterator[None]:
    """One process at a time generates data and the source baseline (they share a cache)."""
    path = cache_dir() / "locks" / "sweep-data.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some Lustre mounts): go on without
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_config_with_shared_data(config: RunConfig, echo: Echo) -> RunResult:
    """`tta.harness.run.run`, after the data and the source baseline exist (under a lock).

    Cells running side by side would otherwise generate the same corrupted data or write
    the same cached baseline at once. The model and benchmark built here are handed to
    `run`, which copies the model.
    """
    config = resolve(config)
    data_roots(config.data_root)
    device = pick_device(config.device)
    with data_lock():
        benchmark = build_benchmark(config)
        spec = build_spec(config, benchmark)
        benchmark.prepare(spec.domains(), spec.n_per_domain, spec.seed)
        net, info = build_model(config, benchmark)
        if not config.no_source:
            source_errors(copy.deepcopy(net).to(device), spec, benchmark, info, device)
    return run(config, benchmark=benchmark, model=(net, info), echo=echo)
