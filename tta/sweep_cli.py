"""Command line: `tta-sweep GRID.yaml` runs a study; `--status`, `--retry-failed`,
`--report DIR`. The grid file format is described in `tta.harness.sweep.grid`."""

from __future__ import annotations

import argparse
import sys

from tta.cli import USER_ERRORS, parse_options
from tta.harness.sweep.kinds import load_any_grid, overrides

EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 1, 2, 3, 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tta-sweep",
        description="Run a grid of tta-run cells on submitit (SLURM, local processes or inline), "
        "resumably; choose hyperparameters on held-out data; write a leaderboard and report.",
    )
    p.add_argument("grid", nargs="?", help="the grid file (YAML)")
    p.add_argument("--status", action="store_true", help="show each cell's state and exit")
    p.add_argument("--retry-failed", action="store_true", help="run the failed cells again")
    p.add_argument("--dry-run", action="store_true", help="list the cells; run nothing")
    p.add_argument("--report", metavar="DIR", help="write the leaderboard and report of DIR")
    p.add_argument(
        "--no-wait", action="store_true", help="submit what can start, then exit (SLURM)"
    )
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--out", help="the sweep directory (default: the grid's out:)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fixed tta-run option (e.g. n_per_domain=50: new cells; "
        "data_root, model_dir, device, threads: the same cells)",
    )
    group = p.add_argument_group("executor (override the grid's executor: section)")
    group.add_argument("--executor", choices=("local", "slurm", "debug"))
    group.add_argument("--parallel", type=int, help="local: jobs at a time")
    group.add_argument("--array-parallelism", type=int, help="slurm: array tasks at a time")
    group.add_argument("--threads", type=int, help="torch threads per job")
    group.add_argument("--cells-per-job", type=int, help="cells run one after another per job")
    group.add_argument("--time", help="per job: minutes or [D-]H:M:S")
    group.add_argument("--partition")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--cpus", type=int, help="slurm: cpus per task")
    group.add_argument("--gpus", type=int, help="slurm: gpus per node")
    group.add_argument("--mem", help="slurm: memory per node, e.g. 32G")
    return p


EXECUTOR_FLAGS = {
    "executor": "kind",
    "parallel": "parallel",
    "array_parallelism": "parallel",
    "threads": "threads",
    "cells_per_job": "cells_per_job",
    "time": "time",
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "cpus": "cpus",
    "gpus": "gpus",
    "mem": "mem",
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return dispatch(args)
    except USER_ERRORS + (KeyError,) as error:
        print(f"tta-sweep: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tta-sweep GRID --status | head`
        return 0


def dispatch(args: argparse.Namespace) -> int:
    from tta.harness.sweep.report import write_report

    if args.report:
        paths = write_report(args.report)
        print("\n".join(f"wrote {path}" for path in paths.values()))
        return 0
    if not args.grid:
        raise ValueError("name a grid file (tta-sweep GRID.yaml), or --report DIR")
    grid = load_any_grid(args.grid)
    executor = {
        key: getattr(args, flag) for flag, key in EXECUTOR_FLAGS.items() if getattr(args, flag)
    }
    grid = overrides(grid, parse_options(args.set, "--set"), executor)
    if args.out:
        from dataclasses import replace
        from pathlib import Path

        grid = replace(grid, out=Path(args.out))
    from tta.harness.sweep.study import Sweep

    if args.status or args.dry_run:
        from tta.harness.sweep.status import status_lines

        print("\n".join(status_lines(Sweep(grid))))
        return 0
    from tta.harness.sweep.driver import drive

    sweep, summary = drive(grid, retry=args.retry_failed, wait=not args.no_wait)
    print(
        f"sweep {grid.name}: {summary.wall_s:.0f} s; "
        + ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items()))
        + f"; cells started {summary.started}, finished cells rerun {summary.rerun}"
    )
    for line in summary.blocked:
        print(f"selection blocked: {line}")
    failed = [c for c in sweep.needed() if sweep.state(c.id).status == "failed"]
    for cell in failed:
        print(f"failed {cell.id}: {sweep.state(cell.id).detail}  (see {sweep.files(cell.id).root})")
    if failed:
        print("fix the cause, then: tta-sweep GRID --retry-failed")
    if not args.no_report and any(s == "done" for s in summary.counts):
        paths = write_report(sweep.dir)
        print(f"report: {paths['html']}  leaderboard: {paths['markdown']}")
    if failed or summary.blocked:
        return EXIT_FAILED
    return 0 if summary.complete else EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
