"""A `finetune` grid expanded into cells: one fine-tuning configuration each.

A cell's leaderboard row is its values of every axis but the seed; there is no `select:`
stage (each cell searches its own hyperparameters with Optuna on the validation split), so
every cell is a test cell. A cell is named by the hash of what decides its results: the
full `FinetuneConfig` (defaults filled in, `device` left out), the search and the
evaluation settings. Each config is built (and so checked) here, before any cell runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from tta.harness.sweep.finetune_grid import FinetuneGrid, threat_spec
from tta.harness.sweep.grid import GridError, label
from tta.harness.sweep.identity import ID_LENGTH
from tta.harness.sweep.plan import Cell, Plan, apply, assignments
from tta.robust.finetune.config import FinetuneConfig

NOT_IDENTITY = ("device",)


def finetune_config(options: dict[str, Any]) -> FinetuneConfig:
    """The FinetuneConfig of a cell's options (raises ValueError naming a bad value)."""
    return FinetuneConfig.from_dict(options)


def finetune_identity(grid: FinetuneGrid, options: dict[str, Any]) -> dict[str, Any]:
    config = finetune_config(options).to_dict()
    for name in NOT_IDENTITY:
        config.pop(name, None)
    data = {
        "kind": grid.kind,
        "config": config,
        "search": dataclasses.asdict(grid.search),
        "evaluate": threat_spec(grid.evaluate, config["eps"], config["seed"]).to_dict(),
    }
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def finetune_cell_id(identity: dict[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def build_finetune_plan(grid: FinetuneGrid) -> Plan:
    """One test cell per assignment of the axes (minus `exclude`)."""
    combos = assignments(grid)
    if not combos:
        raise GridError(f"{grid.source}: the grid has no cell (exclude removed them all?)")
    cells = []
    for combo in combos:
        labels = {name: label(value) for name, value in combo.items()}
        where = f"{grid.source}: cell " + (
            ", ".join(f"{k}={v}" for k, v in labels.items()) or "(no axes)"
        )
        options = apply(grid.fixed, combo)
        try:
            identity = finetune_identity(grid, options)
        except (ValueError, TypeError) as error:
            raise GridError(f"{where}: {error}") from error
        cells.append(
            Cell(
                id=finetune_cell_id(identity),
                role="test",
                row=tuple((k, v) for k, v in labels.items() if k != "seed"),
                candidate=(),
                seed=int(identity["config"]["seed"]),
                options=options,
                identity=identity,
            )
        )
    return Plan(grid, cells, [])
