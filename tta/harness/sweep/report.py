"""`tta-sweep --report DIR`: leaderboard.md, leaderboard.csv and one self-contained
report.html (figures embedded as base64 PNG, no script, no server) in the sweep directory."""

from __future__ import annotations

import base64
import html
import time
from collections import Counter
from pathlib import Path

from tta.harness.sweep import plots
from tta.harness.sweep.aggregate import Gap, Row, gaps, method_rows, source_rows
from tta.harness.sweep.finetune_report import write_finetune_report
from tta.harness.sweep.grid import label
from tta.harness.sweep.leaderboard import (
    STD_NOTE,
    domain_columns,
    domain_values,
    fmt,
    pm,
    write_csv,
    write_markdown,
)
from tta.harness.sweep.study import Sweep, open_sweep

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1300px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.name, th.name { text-align: left; white-space: normal; min-width: 230px; max-width: 360px; }
tr.source td { color: #666; font-style: italic; }
.scroll { overflow-x: auto; max-width: 100%; }
.note { color: #555; font-size: 13px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 6px 0; }
.oracle { color: #8a5a00; }
"""


def notes(sweep: Sweep) -> list[str]:
    counts = Counter(sweep.state(c.id).status for c in sweep.needed())
    lines = [
        "cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"grid: {sweep.grid.source}; executor {sweep.grid.executor.kind}",
    ]
    if sweep.grid.select:
        select = sweep.grid.select
        lines.append(
            f"{', '.join(select.axes)} chosen per row on the validation stream "
            f"({', '.join(f'{k}={label(v)}' for k, v in select.validation.items())}), never the test stream"
        )
    return lines


def write_report(directory: str | Path) -> dict[str, Path]:
    """Write the leaderboard and the HTML report of the sweep in `directory`."""
    sweep = open_sweep(directory)
    if sweep.grid.kind == "finetune":  # its own leaderboard: accuracy under five threats
        return write_finetune_report(sweep)
    plan, read = sweep.plan, sweep.read
    rows = method_rows(plan, read)
    sources = source_rows(plan, read)
    oracle_rows = method_rows(plan, read, oracle=True) if plan.grid.select else []
    gap_list = gaps(plan, read)
    lines = notes(sweep)
    out = Path(directory)
    paths = {
        "markdown": out / "leaderboard.md",
        "csv": out / "leaderboard.csv",
        "html": out / "report.html",
    }
    title = f"Sweep {sweep.grid.name}"
    write_markdown(paths["markdown"], title, [*rows, *sources], oracle_rows, gap_list, lines)
    write_csv(paths["csv"], [*rows, *sources, *oracle_rows])
    paths["html"].write_text(page(title, rows, sources, oracle_rows, gap_list, lines))
    return paths


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _e(text: object) -> str:
    return html.escape(str(text))


def summary_html(rows: list[Row], sources: list[Row]) -> str:
    head = [
        "#",
        "row",
        "chosen",
        "seeds",
        "error %",
        "ECE",
        "forgetting",
        "img/s",
        "peak MB",
        "fwd",
        "bwd",
        "skipped",
    ]
    out = ["<div class=scroll><table><tr>"]
    out += [f'<th class="{"name" if h == "row" else ""}">{_e(h)}</th>' for h in head]
    out.append("</tr>")
    for rank, row in enumerate([*rows, *sources], 1):
        c = row.costs
        cls = ' class="source"' if row.kind == "source" else ""
        chosen = ", ".join(f"{k}={v}" for k, v in row.candidate.items()) or "-"
        cells = [
            rank if row.kind != "source" else "",
            row.name,
            chosen,
            len(row.seeds),
            pm(row.mean, row.std),
            fmt(row.ece, 3),
            fmt(row.forgetting),
            fmt(c.get("images_per_s"), 0),
            fmt(row.peak_memory_mb, 0),
            fmt(c.get("n_forward"), 0),
            fmt(c.get("n_backward"), 0),
            fmt(c.get("n_skipped"), 0),
        ]
        out.append(f"<tr{cls}>")
        out += [f'<td class="{"name" if i == 1 else ""}">{_e(v)}</td>' for i, v in enumerate(cells)]
        out.append("</tr>")
    return "".join(out) + "</table></div>"


def domains_html(rows: list[Row]) -> str:
    columns = domain_columns(rows)
    out = ['<div class=scroll><table><tr><th class="name">row</th>']
    out += [f"<th>{_e(name)}</th>" for name, _ in columns]
    out.append("</tr>")
    for row in rows:
        values = domain_values(row)
        cls = ' class="source"' if row.kind == "source" else ""
        out.append(f'<tr{cls}><td class="name">{_e(row.name)}</td>')
        for _, key in columns:
            d = values.get(key)
            out.append(f"<td>{_e(pm(d['error'], d['std']) if d else '-')}</td>")
        out.append("</tr>")
    return "".join(out) + "</table></div>"


def gaps_html(gap_list: list[Gap]) -> str:
    head = ["row", "selected (validation)", "validation error %", "its test error %"]
    head += [
        "oracle (best on test)",
        "oracle test error %",
        "gap",
        "all candidates: validation / test %",
    ]
    out = ["<div class=scroll><table><tr>"]
    out += [f'<th class="{"name" if i in (0, 7) else ""}">{_e(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr>")
    for g in gap_list:
        candidates = "; ".join(
            f"{name}: {fmt(v['validation'])} / {fmt(v['test'])}" for name, v in g.candidates.items()
        )
        cells = [
            g.row,
            ", ".join(f"{k}={v}" for k, v in g.selected.items()) or "-",
            fmt(g.validation_error),
            fmt(g.selected_test_error),
            (", ".join(f"{k}={v}" for k, v in g.oracle.items()) or "-") + " (oracle)",
            fmt(g.oracle_test_error),
            fmt(g.gap),
            candidates,
        ]
        out.append("<tr>")
        for i, v in enumerate(cells):
            cls = "name" if i in (0, 7) else ("oracle" if i == 4 else "")
            out.append(f'<td class="{cls}">{_e(v)}</td>')
        out.append("</tr>")
    return "".join(out) + "</table></div>"


def page(
    title: str,
    rows: list[Row],
    sources: list[Row],
    oracle_rows: list[Row],
    gap_list: list[Gap],
    lines: list[str],
) -> str:
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=note>written {time.strftime('%Y-%m-%d %H:%M')}; test-stream error (%), "
        f"{_e(STD_NOTE)}; lower is better.</p>",
        "<ul class=note>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>",
        "<h2>Leaderboard</h2>",
        summary_html(rows, sources),
    ]
    finished = [r for r in rows if r.mean is not None]
    if finished:
        parts += [
            "<h2>Error per domain</h2>",
            _img(plots.heatmap(finished + [s for s in sources if s.mean is not None]), "heatmap"),
            domains_html(rows + sources),
            "<h2>Error vs throughput</h2>",
            _img(plots.error_vs_speed(finished), "error vs images/s"),
            "<h2>Error along the stream</h2>",
            _img(plots.along_stream(finished), "error along the stream"),
        ]
    if gap_list:
        parts += [
            "<h2>Selected vs oracle</h2>",
            "<p class=note>The selected setting is chosen on the validation stream alone. The "
            "oracle is the best setting on the test stream itself: not a valid choice, shown "
            "only to measure what selection on held-out data costs.</p>",
            _img(plots.selection_gap(gap_list), "selected vs oracle"),
            gaps_html(gap_list),
        ]
    if oracle_rows:
        parts += ["<h2 class=oracle>Oracle rows (chosen on the test stream: optimistic)</h2>"]
        parts.append(summary_html(oracle_rows, []))
    parts.append("</body></html>")
    return "\n".join(parts)
