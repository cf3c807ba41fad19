"""Leaderboard rows: the cells of a row aggregated over seeds (mean and std per domain and
overall), with cost columns, and the selected-vs-oracle comparison.

Means and standard deviations over seeds are `tta.harness.seeds.aggregate`'s (population
std, ddof=0, as `tta-run --seeds`): the overall std is that of the per-seed mean errors.
Counts and speeds are means over seeds; peak memory is the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tta.harness.seeds import aggregate
from tta.harness.stream import StreamResult
from tta.harness.sweep.plan import Cell, Pairs, Plan
from tta.harness.sweep.select import Reader, oracles, reported_cells, selections

# Axes that change the source model's errors (a source row per value of these).
STREAM_AXES = (
    "benchmark",
    "model",
    "corruptions",
    "severity",
    "setting",
    "n_per_domain",
    "dataset",
    "target",
    "dirichlet_delta",
    "order_seed",
)
COST_KEYS = ("images_per_s", "n_forward", "n_backward", "n_steps", "n_skipped")


@dataclass
class Row:
    name: str
    kind: str  # "grid" (no select:), "selected", "oracle" or "source"
    axes: dict[str, str] = field(default_factory=dict)
    candidate: dict[str, str] = field(default_factory=dict)  # the chosen values
    seeds: list[int] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    per_domain: list[dict] = field(default_factory=list)
    ece: float | None = None
    forgetting: float | None = None
    costs: dict[str, float | None] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    stream: list[float] | None = None  # error along the stream (mean over seeds)
    stream_x: list[float] = field(default_factory=list)  # batch index of each stream point
    stream_starts: list[float] = field(default_factory=list)  # batch where each domain starts
    missing: int = 0  # reported cells without finished results


def row_name(pairs: Pairs) -> str:
    return ", ".join(f"{k}={v}" for k, v in pairs) or "all cells"


def scalar(results: dict, key: str) -> float | None:
    """A number from results[key]: the value itself, a dict's mean/overall, or the mean of
    per_domain[i][key]; None when the runs do not have it."""
    value = results.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        for name in ("mean", "overall", key, "value"):
            if isinstance(value.get(name), int | float):
                return float(value[name])
    values = [d[key] for d in results.get("per_domain", []) if isinstance(d.get(key), int | float)]
    return float(np.mean(values)) if values else None


def stream_positions(results: dict) -> tuple[list[float] | None, list[float]]:
    """The batch index of each stream point and the batches where domains start, when the
    run's `stream` records them."""
    value = results.get("stream")
    if not isinstance(value, dict):
        return None, []
    x = value.get("batch")
    starts = value.get("domain_starts_batches") or []
    return (list(x) if isinstance(x, list) else None), list(starts)


def stream_errors(results: dict) -> list[float] | None:
    """Error along the stream from results['stream'] (a list of numbers, of {error: ...},
    or a dict holding such a list); None when the run has none."""
    value = results.get("stream")
    if isinstance(value, dict):
        for name in ("error", "errors", "batch_error", "batch_errors"):
            if isinstance(value.get(name), list):
                value = value[name]
                break
        else:
            return None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, int | float) for v in value):
        return [float(v) for v in value]
    if all(isinstance(v, dict) and isinstance(v.get("error"), int | float) for v in value):
        return [float(v["error"]) for v in value]
    return None


def summarize(name: str, kind: str, by_seed: dict[int, dict], **fields: Any) -> Row:
    """One row from the finished results of its seeds."""
    row = Row(name, kind, seeds=sorted(by_seed), **fields)
    if not by_seed:
        return row
    runs = {seed: StreamResult(per_domain=r["per_domain"]) for seed, r in by_seed.items()}
    summary = aggregate(runs)
    row.mean, row.std, row.per_domain = (
        summary["mean_error"],
        summary["std_error"],
        summary["per_domain"],
    )
    results = list(by_seed.values())
    eces = [scalar(r, "ece") for r in results]
    row.ece = float(np.mean(eces)) if eces and all(e is not None for e in eces) else None
    forgetting = [scalar(r, "forgetting") for r in results]
    if forgetting and all(f is not None for f in forgetting):
        row.forgetting = float(np.mean(forgetting))
    for key in COST_KEYS:
        values = [r.get(key) for r in results if isinstance(r.get(key), int | float)]
        row.costs[key] = float(np.mean(values)) if values else None
    memory = [
        r.get("peak_memory_mb") for r in results if isinstance(r.get("peak_memory_mb"), int | float)
    ]
    row.peak_memory_mb = max(memory) if memory else None
    streams = [s for s in (stream_errors(r) for r in results) if s]
    if streams and len(streams) == len(results):
        length = min(map(len, streams))
        row.stream = list(np.mean([s[:length] for s in streams], axis=0))
        x, row.stream_starts = stream_positions(results[0])
        row.stream_x = x[:length] if x and len(x) >= length else list(range(length))
    return row


def by_seed(cells: list[Cell], read: Reader) -> tuple[dict[int, dict], int]:
    found, missing = {}, 0
    for cell in cells:
        results = read(cell.id)
        if results is None:
            missing += 1
        else:
            found[cell.seed] = results
    return found, missing


def method_rows(plan: Plan, read: Reader, oracle: bool = False) -> list[Row]:
    """Per leaderboard row, its reported test cells over seeds (sorted by mean error)."""
    kind = "grid" if plan.grid.select is None else ("oracle" if oracle else "selected")
    rows = []
    for pairs, cells in reported_cells(plan, read, use_oracle=oracle).items():
        found, missing = by_seed(cells, read)
        candidate = dict(cells[0].candidate) if cells else {}
        row = summarize(row_name(pairs), kind, found, axes=dict(pairs), candidate=candidate)
        row.missing = missing
        rows.append(row)
    return sorted(rows, key=lambda r: (r.mean is None, r.mean if r.mean is not None else 0.0))


def source_rows(plan: Plan, read: Reader) -> list[Row]:
    """The unadapted model's errors, one row per value of the stream/model axes."""
    groups: dict[Pairs, dict[int, dict]] = {}
    for cell in plan.test:
        results = read(cell.id)
        if not results or not results.get("source_per_domain"):
            continue
        key = tuple((k, v) for k, v in cell.row + cell.candidate if k in STREAM_AXES)
        groups.setdefault(key, {}).setdefault(
            cell.seed, {"per_domain": results["source_per_domain"]}
        )
    rows = []
    for key, found in groups.items():
        name = "source (unadapted)" + (f" [{row_name(key)}]" if key else "")
        rows.append(summarize(name, "source", found, axes=dict(key)))
    return rows


@dataclass
class Gap:
    """One row's selection on validation beside the oracle's choice on the test stream."""

    row: str
    selected: dict[str, str]
    validation_error: float | None
    selected_test_error: float | None
    oracle: dict[str, str]
    oracle_test_error: float | None
    candidates: dict[str, dict[str, float | None]]  # candidate -> {validation, test}

    @property
    def gap(self) -> float | None:
        if self.selected_test_error is None or self.oracle_test_error is None:
            return None
        return self.selected_test_error - self.oracle_test_error


def gaps(plan: Plan, read: Reader) -> list[Gap]:
    """Selected vs oracle per row (empty without `select:`)."""
    if plan.grid.select is None:
        return []
    chosen, best = selections(plan, read), oracles(plan, read)
    out = []
    for row in plan.rows():
        sel, orc = chosen[row], best[row]
        names = list(dict.fromkeys([*sel.errors, *orc.errors]))
        out.append(
            Gap(
                row=row_name(row),
                selected=dict(sel.chosen or ()),
                validation_error=sel.error,
                selected_test_error=orc.errors.get(sel.chosen) if sel.chosen else None,
                oracle=dict(orc.chosen or ()),
                oracle_test_error=orc.error,
                candidates={
                    row_name(c): {"validation": sel.errors.get(c), "test": orc.errors.get(c)}
                    for c in names
                },
            )
        )
    return out
