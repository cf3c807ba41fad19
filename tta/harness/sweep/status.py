"""`tta-sweep GRID --status`: every cell's state, read from disk (no job is touched)."""

from __future__ import annotations

from collections import Counter

from tta.harness.sweep.select import selections
from tta.harness.sweep.state import STATES, attempts
from tta.harness.sweep.study import Sweep


def status_lines(sweep: Sweep) -> list[str]:
    """A count per state, then one line per cell: id, state, role, values, attempts, detail."""
    cells = sweep.needed()
    states = {cell.id: sweep.state(cell.id) for cell in cells}
    counts = Counter(s.status for s in states.values())
    lines = [
        f"sweep {sweep.grid.name} in {sweep.dir}: {len(cells)} cells: "
        + ", ".join(f"{counts[s]} {s}" for s in STATES)
    ]
    select = sweep.grid.select
    if select and not select.oracle:
        choices = selections(sweep.plan, sweep.read)
        waiting = [row for row, c in choices.items() if c.chosen is None]
        if waiting:
            lines.append(f"{len(waiting)} row(s) wait for selection before their test cells run")
    width = max((len(_values(c)) for c in cells), default=10)
    lines.append(f"{'cell':<13}{'state':<9}{'role':<11}{'values':<{width + 2}}{'tries':>5}  detail")
    for cell in cells:
        state = states[cell.id]
        lines.append(
            f"{cell.id:<13}{state.status:<9}{cell.role:<11}{_values(cell):<{width + 2}}"
            f"{attempts(sweep.files(cell.id)):>5}  {state.detail}"
        )
    return lines


def _values(cell) -> str:
    pairs = [*cell.row, *cell.candidate, ("seed", str(cell.seed))]
    return ", ".join(f"{k}={v}" for k, v in pairs)
