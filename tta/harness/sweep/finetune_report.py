"""The leaderboard of a `finetune` study: clean, L-inf, L2, L1 and corruption accuracy per
configuration (mean +- std over seeds), the chosen hyperparameters, the search's cost, and
checks of Heuillet et al. (2025)'s findings where the grid allows them.

Rows are ranked within each task by L-inf accuracy (the threat the models are trained
against), ties by clean accuracy. Findings are computed from the cells' resolved configs,
so they hold however the grid spells its axes (plain values or bundles):
- TRADES vs AT: configurations identical but for the objective, compared on each accuracy;
- linear probing vs full fine-tuning: L-inf accuracy of `protocol: linear` rows against
  `protocol: full` rows of the same task and backbone.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tta.harness.sweep.plots import png_bytes, pyplot
from tta.harness.sweep.study import Sweep

METRICS = ("clean", "linf", "l2", "l1", "corruption")
TITLES = {"clean": "clean", "linf": "L-inf", "l2": "L2", "l1": "L1", "corruption": "corruption"}
MAX_HEATMAP_ROWS = 60
MAX_LABELLED = 12


@dataclass
class FtRow:
    name: str
    axes: dict[str, str]
    task: str
    config: dict[str, Any]  # the first seed's resolved config
    seeds: list[int] = field(default_factory=list)
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    params: list[dict[str, Any]] = field(default_factory=list)  # chosen per seed
    trials: dict[str, int] = field(default_factory=dict)  # complete / pruned / failed, summed
    epochs_run: int = 0
    time_s: float = 0.0
    missing: int = 0


def rows_of(sweep: Sweep) -> list[FtRow]:
    """One row per configuration (all axes but the seed), its seeds aggregated."""
    groups: dict[tuple, list] = {}
    for cell in sweep.plan.test:
        groups.setdefault(cell.row, []).append(cell)
    rows = []
    for pairs, cells in groups.items():
        config = dict(cells[0].identity["config"])
        row = FtRow(
            name=", ".join(f"{k}={v}" for k, v in pairs) or "all cells",
            axes=dict(pairs),
            task=str(config.get("task", "")),
            config=config,
        )
        found = []
        for cell in cells:
            results = sweep.read(cell.id)
            if results is None:
                row.missing += 1
                continue
            found.append(results)
            row.seeds.append(cell.seed)
            row.params.append(results["best"]["params"])
            for key in ("complete", "pruned", "failed"):
                row.trials[key] = row.trials.get(key, 0) + int(results["search"][key])
            row.epochs_run += int(results["search"]["epochs_run"])
            row.time_s += float(sum(results["time_s"].values()))
        for metric in METRICS:
            values = [r["test"][metric] for r in found if r["test"].get(metric) is not None]
            complete = found and len(values) == len(found)
            row.mean[metric] = float(np.mean(values)) if complete else None
            row.std[metric] = float(np.std(values)) if complete else None
        rows.append(row)
    tasks = list(dict.fromkeys(r.task for r in rows))
    return sorted(
        rows,
        key=lambda r: (
            tasks.index(r.task),
            r.mean.get("linf") is None,
            -(r.mean.get("linf") or 0.0),
            -(r.mean.get("clean") or 0.0),
        ),
    )


def pm(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f} +- {std:.1f}" if seeds > 1 else f"{mean:.1f}"


def chosen(row: FtRow) -> str:
    if not row.params:
        return "-"
    if len(row.params) > 1:
        return f"per seed ({len(row.params)})"
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.params[0].items()
    )


def table(rows: list[FtRow]) -> list[list[str]]:
    """Leaderboard lines: rank within task, row, seeds, five accuracies, choice, search cost."""
    out, rank, task = [], 0, None
    for row in rows:
        rank = rank + 1 if row.task == task else 1
        task = row.task
        trials = "/".join(str(row.trials.get(k, 0)) for k in ("complete", "pruned", "failed"))
        out.append(
            [
                str(rank),
                row.name,
                str(len(row.seeds)) + (f" (+{row.missing} missing)" if row.missing else ""),
                *[pm(row.mean.get(m), row.std.get(m), len(row.seeds)) for m in METRICS],
                chosen(row),
                trials,
                str(row.epochs_run),
                f"{row.time_s:.0f}",
            ]
        )
    return out


HEAD = ["#", "configuration", "seeds", *[f"{TITLES[m]} %" for m in METRICS]]
HEAD += ["chosen (validation)", "trials done/pruned/failed", "epochs run", "time s"]


# ---------------------------------------------------------------- paper findings


def _key(config: dict[str, Any], drop: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True)


def trades_vs_at(rows: list[FtRow]) -> dict[str, Any]:
    """Pairs of rows equal but for the objective: how often TRADES beats AT per metric."""
    drop = ("objective", "trades_beta", "seed")
    by_key: dict[str, dict[str, FtRow]] = {}
    for row in rows:
        by_key.setdefault(_key(row.config, drop), {})[row.config.get("objective")] = row
    pairs = [(v["trades"], v["at"]) for v in by_key.values() if "trades" in v and "at" in v]
    out: dict[str, Any] = {"pairs": len(pairs), "wins": {}, "mean_gap": {}}
    for metric in METRICS:
        gaps = [
            t.mean[metric] - a.mean[metric]
            for t, a in pairs
            if t.mean.get(metric) is not None and a.mean.get(metric) is not None
        ]
        out["wins"][metric] = [sum(g > 0 for g in gaps), len(gaps)]
        out["mean_gap"][metric] = float(np.mean(gaps)) if gaps else None
    return out


def linear_probing(rows: list[FtRow]) -> dict[str, Any]:
    """L-inf (and clean) accuracy of linear probing against full fine-tuning."""
    out: dict[str, Any] = {}
    for protocol in ("linear", "full"):
        chosen_rows = [
            r
            for r in rows
            if r.config.get("protocol") == protocol and r.mean.get("linf") is not None
        ]
        out[protocol] = {
            "rows": len(chosen_rows),
            "linf": float(np.mean([r.mean["linf"] for r in chosen_rows])) if chosen_rows else None,
            "clean": float(np.mean([r.mean["clean"] for r in chosen_rows]))
            if chosen_rows
            else None,
        }
    return out


def findings(rows: list[FtRow]) -> list[str]:
    lines = []
    tv = trades_vs_at(rows)
    if tv["pairs"]:
        parts = [
            f"{TITLES[m]} {w}/{n} (mean gap {tv['mean_gap'][m]:+.1f})"
            for m in METRICS
            for w, n in [tv["wins"][m]]
            if n
        ]
        lines.append(
            f"TRADES vs AT over {tv['pairs']} pairs (same configuration but the loss), "
            "TRADES higher in: " + "; ".join(parts)
        )
    lp = linear_probing(rows)
    if lp["linear"]["rows"] and lp["full"]["rows"]:
        lin, full = lp["linear"], lp["full"]
        lines.append(
            f"linear probing: mean L-inf accuracy {lin['linf']:.1f}% (clean {lin['clean']:.1f}%, "
            f"{lin['rows']} rows) vs full fine-tuning {full['linf']:.1f}% (clean "
            f"{full['clean']:.1f}%, {full['rows']} rows)"
        )
    return lines


# ---------------------------------------------------------------- figures


def heatmap(rows: list[FtRow]) -> bytes:
    """Configuration x threat accuracy; past MAX_HEATMAP_ROWS the best by L-inf are shown."""
    plt = pyplot()
    done = [r for r in rows if r.mean.get("clean") is not None]
    shown = sorted(done, key=lambda r: -(r.mean.get("linf") or 0.0))[:MAX_HEATMAP_ROWS]
    shown = [r for r in done if r in shown]  # keep leaderboard order
    matrix = np.array(
        [[np.nan if r.mean.get(m) is None else r.mean[m] for m in METRICS] for r in shown],
        dtype=float,
    ).reshape(len(shown), len(METRICS))
    names, varying = short_names(shown)
    width = min(16.0, 4.0 + 0.065 * max(map(len, names or [""])))
    height = min(22.0, 1.5 + 0.3 * len(shown))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(METRICS)), [TITLES[m] for m in METRICS], fontsize=9)
    ax.set_yticks(range(len(shown)), names, fontsize=7 if len(shown) > 30 else 8)
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            colour = "black" if value > 60 else "white"
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="test accuracy (%)", fraction=0.04, pad=0.01)
    hidden = len(done) - len(shown)
    note = f" (best {len(shown)} by L-inf; {hidden} more in leaderboard.csv)" if hidden > 0 else ""
    ax.set_title("test accuracy (%) per threat, mean over seeds" + note, fontsize=10)
    ax.set_ylabel(" | ".join(varying) or "configuration", fontsize=9)
    return png_bytes(fig)


def short_names(rows: list[FtRow], width: int = 80) -> tuple[list[str], list[str]]:
    """Row labels from the values of the axes that differ between `rows` (names once, on
    the axis), so the distinguishing part is never cut off; and those axes' names."""
    axes = list(dict.fromkeys(k for r in rows for k in r.axes))
    varying = [a for a in axes if len({r.axes.get(a) for r in rows}) > 1]
    names = []
    for r in rows:
        text = " | ".join(r.axes.get(a, "-") for a in varying) or r.name
        names.append(text if len(text) <= width else "…" + text[-(width - 1) :])
    return names, varying


def scatter(rows: list[FtRow]) -> bytes:
    """Clean vs L-inf accuracy, one point per configuration: colour = loss, marker =
    protocol, one panel per task; the best few by L-inf are numbered as in the leaderboard."""
    plt = pyplot()
    done = [r for r in rows if r.mean.get("clean") is not None and r.mean.get("linf") is not None]
    tasks = list(dict.fromkeys(r.task for r in done)) or [""]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.4), squeeze=False)
    colours = {"at": "#1f77b4", "trades": "#d62728", "clean": "#7f7f7f"}
    markers = {"full": "o", "linear": "s", "partial": "^"}
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in done if r.task == task]
        for r in mine:
            objective, protocol = r.config.get("objective"), r.config.get("protocol")
            ax.errorbar(
                r.mean["clean"],
                r.mean["linf"],
                xerr=r.std["clean"] if len(r.seeds) > 1 else None,
                yerr=r.std["linf"] if len(r.seeds) > 1 else None,
                fmt=markers.get(protocol, "D"),
                color=colours.get(objective, "#2ca02c"),
                ms=6,
                alpha=0.8,
                ecolor="#bbbbbb",
            )
        for rank, r in enumerate(mine[:MAX_LABELLED], 1):
            ax.annotate(
                f"#{rank}",
                (r.mean["clean"], r.mean["linf"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
        ax.set_title(f"task {task}: #k = leaderboard rank", fontsize=10)
        ax.set_xlabel("clean test accuracy (%)")
        ax.set_ylabel("L-inf test accuracy (%)")
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=c, label=f"loss {k}")
        for k, c in colours.items()
        if k != "clean"
    ] + [
        plt.Line2D([], [], ls="", marker=m, color="#444444", label=f"protocol {k}")
        for k, m in markers.items()
    ]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png_bytes(fig)


# ---------------------------------------------------------------- files


def write_finetune_report(sweep: Sweep) -> dict[str, Path]:
    """leaderboard.md, leaderboard.csv and report.html in the sweep directory."""
    rows = rows_of(sweep)
    out = sweep.dir
    paths = {
        "markdown": out / "leaderboard.md",
        "csv": out / "leaderboard.csv",
        "html": out / "report.html",
    }
    counts: dict[str, int] = {}
    for cell in sweep.plan.test:
        status = sweep.state(cell.id).status
        counts[status] = counts.get(status, 0) + 1
    notes = [
        "cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"grid: {sweep.grid.source}; executor {sweep.grid.executor.kind}",
        "hyperparameters chosen per cell by Optuna (successive halving on validation loss); "
        "accuracies on the test split",
        *findings(rows),
    ]
    lines = table(rows)
    title = f"Robust fine-tuning study {sweep.grid.name}"
    md = [
        f"# {title}",
        "",
        "Test accuracy (%), mean +- std over seeds (ddof=0); ranked by L-inf within each task.",
        "",
    ]
    md += [f"- {n}" for n in notes] + ["", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    md += ["| " + " | ".join(line) + " |" for line in lines]
    paths["markdown"].write_text("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        axes = list(dict.fromkeys(k for r in rows for k in r.axes))
        writer.writerow(
            [
                "task",
                *axes,
                "n_seeds",
                *[f"{m}{s}" for m in METRICS for s in ("", "_std")],
                "params",
                "complete",
                "pruned",
                "failed",
                "epochs_run",
                "time_s",
            ]
        )
        for r in rows:
            values = [r.task, *[r.axes.get(a, "") for a in axes], len(r.seeds)]
            for m in METRICS:
                values += [
                    "" if r.mean.get(m) is None else f"{r.mean[m]:.4f}",
                    "" if r.std.get(m) is None else f"{r.std[m]:.4f}",
                ]
            values += [
                json.dumps(r.params),
                *[r.trials.get(k, 0) for k in ("complete", "pruned", "failed")],
                r.epochs_run,
                f"{r.time_s:.1f}",
            ]
            writer.writerow(values)
    figures = []
    if any(r.mean.get("clean") is not None for r in rows):
        figures = [("accuracy per threat", heatmap(rows)), ("clean vs L-inf", scatter(rows))]
    paths["html"].write_text(page(title, notes, lines, figures))
    return paths


def page(
    title: str, notes: list[str], lines: list[list[str]], figures: list[tuple[str, bytes]]
) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>{e(title)}</title><style>body{{font:14px system-ui,sans-serif;margin:24px auto;"
        "max-width:1300px;padding:0 16px}table{border-collapse:collapse;font-size:12.5px}"
        "th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}td:nth-child(2){text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>{e(title)}</h1><p>written {time.strftime('%Y-%m-%d %H:%M')}; test accuracy (%), "
        "higher is better.</p><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>",
        "<div style='overflow-x:auto'><table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in HEAD)
        + "</tr>",
    ]
    parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in line) + "</tr>" for line in lines]
    parts.append("</table></div>")
    for name, png in figures:
        data = base64.b64encode(png).decode()
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
