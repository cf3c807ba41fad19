"""A grid expanded into cells: one per assignment of the axes, plus validation cells.

Every cell belongs to a leaderboard `row` (its values of the axes that are neither the seed
nor selected), a `candidate` (its values of the selected axes) and a seed. With a
`select:` stage, each test cell has a validation twin: the same options with the
`validation` overrides, checked to share no domain with the test stream. Every config is
resolved and its names checked here, before any cell runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.harness.config import check_names, resolve
from tta.harness.sweep.grid import Grid, GridError, label
from tta.harness.sweep.identity import cell_id, domains_of, identity, run_config

Pairs = tuple[tuple[str, str], ...]  # ((axis, value label), ...)


@dataclass(frozen=True)
class Cell:
    id: str
    role: str  # "test" or "validation"
    row: Pairs
    candidate: Pairs
    seed: int
    options: dict[str, Any] = field(compare=False, hash=False)
    identity: dict[str, Any] = field(compare=False, hash=False)


@dataclass
class Plan:
    grid: Grid
    test: list[Cell]
    validation: list[Cell]

    @property
    def cells(self) -> list[Cell]:
        return self.validation + self.test

    def rows(self) -> list[Pairs]:
        return list(dict.fromkeys(cell.row for cell in self.test))

    def candidates(self) -> list[Pairs]:
        return list(dict.fromkeys(cell.candidate for cell in self.test))

    def unique(self, cells: list[Cell]) -> list[Cell]:
        """One cell per id (cells of the same identity run once), in plan order."""
        return list({cell.id: cell for cell in reversed(cells)}.values())[::-1]


def assignments(grid: Grid) -> list[dict[str, Any]]:
    """Every combination of the axes (file order), minus the `exclude` matches."""
    names = list(grid.axes)
    combos = [
        dict(zip(names, values, strict=True)) for values in itertools.product(*grid.axes.values())
    ]

    def excluded(combo: dict[str, Any]) -> bool:
        return any(
            all(label(combo[k]) == label(v) for k, v in rule.items()) for rule in grid.exclude
        )

    return [combo for combo in combos if not excluded(combo)]


def apply(fixed: dict[str, Any], combo: dict[str, Any]) -> dict[str, Any]:
    """fixed options, then each axis value (a bundle sets several options)."""
    options = dict(fixed)
    for name, value in combo.items():
        if isinstance(value, dict):
            options.update(value)
        else:
            options[name] = value
    return options


def checked_cell(options: dict[str, Any], where: str, **fields: Any) -> Cell:
    """A cell from its options; a bad option fails here, naming the cell."""
    try:
        config = run_config(options)
        resolved = resolve(config)
        check_names(resolved)
        return Cell(id=cell_id(config), options=options, identity=identity(config), **fields)
    except (ValueError, TypeError, KeyError) as error:
        raise GridError(f"{where}: {error}") from error


def stream_domains(options: dict[str, Any]) -> tuple[str, ...]:
    return domains_of(run_config(options)) or STANDARD_CORRUPTIONS


def build_plan(grid: Grid) -> Plan:
    """All test cells and, with `select:`, their validation cells."""
    selected = grid.select.axes if grid.select else ()
    test, validation = [], []
    combos = assignments(grid)
    if not combos:
        raise GridError(f"{grid.source}: the grid has no cell (exclude removed them all?)")
    for combo in combos:
        labels = {name: label(value) for name, value in combo.items()}
        row = tuple((k, v) for k, v in labels.items() if k != "seed" and k not in selected)
        candidate = tuple((k, labels[k]) for k in selected)
        where = f"{grid.source}: cell " + (
            ", ".join(f"{k}={v}" for k, v in labels.items()) or "(no axes)"
        )
        options = apply(grid.fixed, combo)
        seed = int(options.get("seed", 0))
        fields = {"row": row, "candidate": candidate, "seed": seed}
        test.append(checked_cell(options, where, role="test", **fields))
        if grid.select:
            val_options = {**options, **grid.select.validation}
            shared = set(stream_domains(val_options)) & set(stream_domains(options))
            if shared:
                raise GridError(
                    f"{where}: the validation stream shares {sorted(shared)} with the test "
                    "stream, so selection would see test data; use held-out domains, e.g. "
                    "select: {validation: {corruptions: heldout}}"
                )
            val_seed = int(val_options.get("seed", seed))
            validation.append(
                checked_cell(
                    val_options,
                    where + " (validation)",
                    role="validation",
                    **{**fields, "seed": val_seed},
                )
            )
    return Plan(grid, test, validation)
