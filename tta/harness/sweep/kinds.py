"""Grid kinds: `run` (cells are `tta-run` configs; the default) and `finetune` (cells are
robust fine-tuning runs searched by Optuna). This module picks the parser, planner and
overrides of a grid's kind; the engine (driver, executors, state, status) is shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tta.harness.sweep.finetune_grid import FINETUNE_OPTIONS, FinetuneGrid, parse_finetune_grid
from tta.harness.sweep.finetune_plan import build_finetune_plan
from tta.harness.sweep.grid import Grid, GridError, load_grid, parse_grid, with_overrides
from tta.harness.sweep.plan import Plan, build_plan

KINDS = ("run", "finetune")


def parse_any_grid(data: Any, name: str, where: str = "<grid>") -> Grid:
    """A grid of the kind its `kind:` key names (default `run`)."""
    kind = data.get("kind", "run") if isinstance(data, dict) else "run"
    if kind == "finetune":
        return parse_finetune_grid(data, name, where)
    if kind != "run":
        raise GridError(f"{where}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    data = {k: v for k, v in data.items() if k != "kind"}
    return parse_grid(data, name, where)


def load_any_grid(path: str | Path) -> Grid:
    """Read and check a YAML grid file of any kind (needs PyYAML: pip install 'tta[sweep]')."""
    return load_grid(path, parse_any_grid)


def plan_of(grid: Grid) -> Plan:
    return build_finetune_plan(grid) if isinstance(grid, FinetuneGrid) else build_plan(grid)


def overrides(grid: Grid, fixed: dict[str, Any], executor: dict[str, Any]) -> Grid:
    """`--set` and executor flags, checked against the grid kind's options."""
    if isinstance(grid, FinetuneGrid):
        return with_overrides(grid, fixed, executor, FINETUNE_OPTIONS)
    return with_overrides(grid, fixed, executor)
