"""A sweep on disk: its plan, and each cell's files, state and finished results."""

from __future__ import annotations

import json
from pathlib import Path

from tta.harness.sweep.executors import slurm_state
from tta.harness.sweep.grid import Grid
from tta.harness.sweep.kinds import parse_any_grid, plan_of
from tta.harness.sweep.plan import Cell, Plan
from tta.harness.sweep.select import needed
from tta.harness.sweep.state import (
    CellFiles,
    CellState,
    cell_state,
    finished_results,
    read_json,
    write_json,
)


class Sweep:
    """A plan and its directory: the cells' files, states and finished results."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.dir = Path(grid.out)
        self.plan: Plan = plan_of(grid)
        self._results: dict[str, dict] = {}
        self._slurm_state = slurm_state(self.jobs_dir) if grid.executor.kind == "slurm" else None

    @property
    def jobs_dir(self) -> Path:
        return self.dir / "jobs"

    def files(self, cell_id: str) -> CellFiles:
        return CellFiles(self.dir / "cells" / cell_id)

    def read(self, cell_id: str) -> dict | None:
        """The cell's finished results (cached: finished results never change)."""
        if cell_id not in self._results:
            results = finished_results(self.files(cell_id))
            if results is None:
                return None
            self._results[cell_id] = results
        return self._results[cell_id]

    def state(self, cell_id: str) -> CellState:
        if self.read(cell_id) is not None:
            return CellState("done")
        return cell_state(self.files(cell_id), self._slurm_state)

    def needed(self) -> list[Cell]:
        return needed(self.plan, self.read)

    def write_plan(self) -> None:
        """grid.json (what `--report` reads) and every known cell's config.json."""
        write_json(self.dir / "grid.json", {**self.grid.to_dict(), "source": self.grid.source})
        for cell in self.plan.unique(self.plan.cells):
            self.write_config(cell)

    def write_config(self, cell: Cell) -> None:
        files = self.files(cell.id)
        payload = {"id": cell.id, "options": cell.options, "identity": cell.identity}
        if self.grid.kind != "run":  # what job.execute runs
            payload["kind"] = self.grid.kind
        if read_json(files.config) != json.loads(json.dumps(payload, default=str)):
            write_json(files.config, payload)


def open_sweep(directory: str | Path) -> Sweep:
    """The sweep kept in `directory` (its grid.json, written by the driver)."""
    directory = Path(directory)
    data = read_json(directory / "grid.json")
    if data is None:
        raise FileNotFoundError(
            f"{directory} holds no sweep (no grid.json): pass the directory a tta-sweep run "
            "wrote (the grid's out:, default runs/sweeps/<name>)"
        )
    data["out"] = str(directory)
    source = data.pop("source", None) or str(directory / "grid.json")
    return Sweep(parse_any_grid(data, directory.name, source))
