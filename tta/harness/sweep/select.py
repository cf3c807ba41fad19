"""Model selection: per leaderboard row, the candidate with the lowest mean error over seeds.

`choose` sees the cells it is given and nothing else: the selected setting comes from the
validation cells alone (held-out domains), so it cannot depend on the test stream. The same
function over the test cells gives the oracle (best on the test stream), which the report
shows beside the selection, labelled, with the gap. A row whose candidates are not all
finished gets no choice: a failed candidate might have been the best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tta.harness.sweep.plan import Cell, Pairs, Plan

Reader = Callable[[str], dict | None]  # cell id -> finished results.json, or None


@dataclass
class Choice:
    row: Pairs
    role: str  # the cells chosen on: "validation" (selection) or "test" (oracle)
    errors: dict[Pairs, float | None] = field(default_factory=dict)  # mean over seeds
    chosen: Pairs | None = None
    missing: list[str] = field(default_factory=list)  # cells without finished results

    @property
    def error(self) -> float | None:
        return None if self.chosen is None else self.errors[self.chosen]


def choose(row: Pairs, cells: list[Cell], read: Reader, role: str) -> Choice:
    """The candidate of lowest mean error over its cells' seeds (ties: the first listed)."""
    choice = Choice(row, role)
    by_candidate: dict[Pairs, dict[str, float | None]] = {}
    for cell in cells:
        results = read(cell.id)
        error = None if results is None else results.get("mean_error")
        if error is None:
            choice.missing.append(cell.id)
        by_candidate.setdefault(cell.candidate, {})[cell.id] = error
    for candidate, errors in by_candidate.items():
        known = [e for e in errors.values() if e is not None]
        complete = len(known) == len(errors)
        choice.errors[candidate] = float(np.mean(known)) if complete else None
    if by_candidate and not choice.missing:
        choice.chosen = min(choice.errors, key=lambda c: choice.errors[c])
    return choice


def selections(plan: Plan, read: Reader) -> dict[Pairs, Choice]:
    """Per row, the choice made on its validation cells."""
    return {
        row: choose(row, _cells(plan.validation, row), read, "validation") for row in plan.rows()
    }


def oracles(plan: Plan, read: Reader) -> dict[Pairs, Choice]:
    """Per row, the choice the test stream would make (reported as the oracle, never used)."""
    return {row: choose(row, _cells(plan.test, row), read, "test") for row in plan.rows()}


def _cells(cells: list[Cell], row: Pairs) -> list[Cell]:
    return list({cell.id: cell for cell in cells if cell.row == row}.values())


def needed(plan: Plan, read: Reader) -> list[Cell]:
    """The cells to run now: validation first, then the test cells known to be needed.

    Without `select:` every test cell; with it, the validation cells, and either every
    candidate on the test stream (`oracle: true`) or the chosen one per row once chosen.
    """
    if plan.grid.select is None:
        return plan.unique(plan.test)
    cells = list(plan.validation)
    if plan.grid.select.oracle:
        cells += plan.test
    else:
        chosen = {row: c.chosen for row, c in selections(plan, read).items() if c.chosen}
        cells += [cell for cell in plan.test if chosen.get(cell.row) == cell.candidate]
    return plan.unique(cells)


def reported_cells(plan: Plan, read: Reader, use_oracle: bool = False) -> dict[Pairs, list[Cell]]:
    """Per row, the test cells the leaderboard reports: the selected candidate's (or the
    oracle's), or all of the row's test cells without `select:`."""
    rows = {}
    if plan.grid.select is None:
        for row in plan.rows():
            rows[row] = _cells(plan.test, row)
        return rows
    choices = oracles(plan, read) if use_oracle else selections(plan, read)
    for row, choice in choices.items():
        if choice.chosen is not None:
            rows[row] = [c for c in _cells(plan.test, row) if c.candidate == choice.chosen]
    return rows
