"""The submitit executor of a grid: SLURM (an array job), local processes, or inline.

No scheduling of our own: SLURM queues the array (at most `parallel` tasks at a time);
the local executor starts one process per job and the driver keeps `parallel` of them
alive; `debug` runs each job inline in the driver (submitit's DebugExecutor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tta.harness.sweep.grid import ExecutorSpec


def submitit_module() -> Any:
    try:
        import submitit
    except ImportError as error:  # pragma: no cover - the sweep extra installs it
        raise RuntimeError(
            "tta-sweep runs cells with submitit: pip install 'tta[sweep]'"
        ) from error
    return submitit


def slurm_parameters(spec: ExecutorSpec, name: str) -> dict[str, Any]:
    """SlurmExecutor.update_parameters arguments of the grid's executor section."""
    params: dict[str, Any] = {
        "job_name": f"tta-sweep-{name}",
        "time": spec.time_min,
        "array_parallelism": spec.parallel,
        "ntasks_per_node": 1,
        "cpus_per_task": spec.cpus,
        "gpus_per_node": spec.gpus,
        "mem": spec.mem,
        "partition": spec.partition,
        "account": spec.account,
        "qos": spec.qos,
        "constraint": spec.constraint,
        "setup": list(spec.setup) or None,
        "additional_parameters": dict(spec.slurm_extra) or None,
    }
    return {key: value for key, value in params.items() if value is not None}


def make_executor(spec: ExecutorSpec, folder: Path, name: str) -> Any:
    """A submitit executor writing its job files and logs under `folder`."""
    submitit = submitit_module()
    folder = Path(folder) / "%j"
    if spec.kind == "debug":
        return submitit.DebugExecutor(folder)
    if spec.kind == "local":
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=spec.time_min, setup=thread_setup(spec))
        return executor
    if spec.kind == "slurm":
        executor = submitit.SlurmExecutor(folder)
        params = slurm_parameters(spec, name)
        params["setup"] = thread_setup(spec) + params.get("setup", [])
        executor.update_parameters(**params)
        return executor
    raise ValueError(f"unknown executor {spec.kind!r}; use local, slurm or debug")


def thread_setup(spec: ExecutorSpec) -> list[str]:
    """Shell lines fixing a job's thread pools before Python starts.

    torch.set_num_threads alone is not enough: measured here, a 1-thread cell ran its
    stream 6x slower without OMP_NUM_THREADS (OpenMP and BLAS pools oversubscribe the cores).
    """
    threads = threads_per_job(spec)
    if not threads:
        return []
    return [
        f"export {name}={threads}"
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    ]


def threads_per_job(spec: ExecutorSpec) -> int | None:
    """Torch threads of a job: the grid's, or the local cores shared by `parallel` jobs."""
    if spec.threads:
        return spec.threads
    if spec.kind == "local":
        return max(1, (os.cpu_count() or 1) // spec.parallel)
    if spec.kind == "slurm" and spec.cpus:
        return spec.cpus
    return None


def slurm_state(folder: Path) -> Any:
    """A function job_id -> SLURM state (None when sacct cannot be asked)."""

    def state(job_id: str) -> str | None:
        try:
            submitit = submitit_module()
            value = submitit.SlurmJob(Path(folder) / "%j", job_id).state
        except Exception:  # noqa: BLE001 - no sacct here, or it failed: unknown
            return None
        return None if value in ("UNKNOWN", None) else str(value).split()[0]

    return state
