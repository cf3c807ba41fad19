"""leaderboard.md and leaderboard.csv: one line per row, mean +- std over seeds."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from tta.harness.sweep.aggregate import Gap, Row

STD_NOTE = "mean +- std over seeds (population std, ddof=0, as `tta-run --seeds`)"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} +- {std:.2f}" if std is not None else f"{mean:.2f}"


def domain_columns(rows: Sequence[Row]) -> list[tuple[str, object]]:
    """(column name, (domain, severity, occurrence)) in stream order, over all rows."""
    keys: dict[tuple, None] = {}
    for row in rows:
        seen: dict[tuple, int] = {}
        for d in row.per_domain:
            base = (d["domain"], d["severity"])
            seen[base] = seen.get(base, 0) + 1
            keys[(*base, seen[base])] = None
    names = [k[0] for k in keys]
    repeated = len(set(names)) != len(names)
    return [(f"{d}@{s}#{o}" if repeated else d, (d, s, o)) for d, s, o in keys]


def domain_values(row: Row) -> dict[tuple, dict]:
    values, seen = {}, {}
    for d in row.per_domain:
        base = (d["domain"], d["severity"])
        seen[base] = seen.get(base, 0) + 1
        values[(*base, seen[base])] = d
    return values


def chosen(row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.candidate.items())


def summary_table(rows: Sequence[Row]) -> list[str]:
    head = "| # | row | chosen | seeds | error % | ECE | forgetting | img/s | peak MB | fwd | bwd | skipped |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rank, row in enumerate(rows, 1):
        c = row.costs
        lines.append(
            f"| {rank} | {row.name} | {chosen(row) or '-'} | {len(row.seeds)} | "
            f"{pm(row.mean, row.std)} | {fmt(row.ece, 3)} | {fmt(row.forgetting)} | "
            f"{fmt(c.get('images_per_s'), 0)} | "
            f"{fmt(row.peak_memory_mb, 0)} | {fmt(c.get('n_forward'), 0)} | "
            f"{fmt(c.get('n_backward'), 0)} | {fmt(c.get('n_skipped'), 0)} |"
        )
    return lines


def domain_table(rows: Sequence[Row]) -> list[str]:
    columns = domain_columns(rows)
    lines = ["| row | " + " | ".join(name for name, _ in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for row in rows:
        values = domain_values(row)
        cells = [
            pm(values[k]["error"], values[k]["std"]) if k in values else "-" for _, k in columns
        ]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return lines


def gap_table(gaps: Sequence[Gap]) -> list[str]:
    lines = [
        "| row | selected (on validation) | validation error % | its test error % | "
        "oracle (best on test) | oracle test error % | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in gaps:
        lines.append(
            f"| {g.row} | {_values(g.selected)} | {fmt(g.validation_error)} | "
            f"{fmt(g.selected_test_error)} | {_values(g.oracle)} (oracle) | "
            f"{fmt(g.oracle_test_error)} | {fmt(g.gap)} |"
        )
    return lines


def _values(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"


def write_markdown(
    path: Path,
    title: str,
    rows: Sequence[Row],
    oracle_rows: Sequence[Row],
    gaps: Sequence[Gap],
    notes: Sequence[str] = (),
) -> None:
    lines = [f"# {title}", "", f"Test-stream error (%), {STD_NOTE}; lower is better.", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += summary_table(rows) + ["", "## Per domain", ""] + domain_table(rows)
    if gaps:
        lines += ["", "## Selected vs oracle", ""]
        lines += [
            "The selected setting is chosen on the validation stream only; the oracle is the "
            "best setting on the test stream itself (not a valid choice: shown for the gap).",
            "",
        ]
        lines += gap_table(gaps)
    if oracle_rows:
        lines += ["", "## Oracle rows (chosen on the test stream: optimistic)", ""]
        lines += summary_table(oracle_rows)
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """Every row (selected, oracle, source) with its axes, costs and per-domain columns."""
    columns = domain_columns(rows)
    axes = list(dict.fromkeys(k for row in rows for k in [*row.axes, *row.candidate]))
    head = ["rank", "kind", "row", *axes, "n_seeds", "mean_error", "std_error", "ece", "forgetting"]
    head += ["images_per_s", "peak_memory_mb", "n_forward", "n_backward", "n_steps", "n_skipped"]
    head += [f"{name}{suffix}" for name, _ in columns for suffix in ("", " std")]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        for rank, row in enumerate(rows, 1):
            values = domain_values(row)
            line = [rank, row.kind, row.name]
            line += [{**row.axes, **row.candidate}.get(a, "") for a in axes]
            line += [
                len(row.seeds),
                _num(row.mean),
                _num(row.std),
                _num(row.ece),
                _num(row.forgetting),
            ]
            line += [_num(row.costs.get("images_per_s")), _num(row.peak_memory_mb)]
            line += [
                _num(row.costs.get(k)) for k in ("n_forward", "n_backward", "n_steps", "n_skipped")
            ]
            for _, key in columns:
                d = values.get(key)
                line += [_num(d["error"]), _num(d["std"])] if d else ["", ""]
            writer.writerow(line)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
