"""The report's figures as PNG bytes, readable at any number of cells.

Sizes grow with the rows and columns shown and stop at a cap; past the cap a figure shows
the best rows (the rest are in leaderboard.csv) or averages severities, and says so in its
title. Numbers are printed in the heatmap only while they fit.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from tta.harness.sweep.aggregate import Gap, Row
from tta.harness.sweep.leaderboard import domain_columns, domain_values

MAX_HEATMAP_ROWS = 40
MAX_HEATMAP_COLUMNS = 40
MAX_LABELLED_POINTS = 10
MAX_STREAM_LINES = 6
MAX_GAP_ROWS = 30


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend: reports are drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (for embedding in a report), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def heatmap(rows: Sequence[Row]) -> bytes:
    """Row x domain error (%), best rows first."""
    plt = pyplot()
    shown = [r for r in rows if r.per_domain][:MAX_HEATMAP_ROWS]
    columns = domain_columns(shown)
    names = [name for name, _ in columns]
    matrix = np.array(
        [[domain_values(r).get(key, {}).get("error", np.nan) for _, key in columns] for r in shown],
        dtype=float,
    ).reshape(len(shown), len(columns))
    note = ""
    if len(columns) > MAX_HEATMAP_COLUMNS:  # e.g. gradual: average each domain's segments
        domains = list(dict.fromkeys(key[0] for _, key in columns))
        matrix = np.array(
            [
                [
                    np.nanmean([v for (_, k), v in zip(columns, line, strict=True) if k[0] == d])
                    for d in domains
                ]
                for line in matrix
            ]
        ).reshape(len(shown), len(domains))
        names, note = domains, " (severities averaged)"
    hidden = len([r for r in rows if r.per_domain]) - len(shown)
    if hidden > 0:
        note += f" (best {len(shown)} rows; {hidden} more in leaderboard.csv)"
    width = min(
        24.0, 3.0 + 0.55 * len(names) + 0.06 * max(map(len, [r.name for r in shown] or [""]))
    )
    height = min(18.0, 1.6 + 0.34 * len(shown))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(
        matrix,
        aspect="auto",
        cmap="viridis_r",
        vmin=0,
        vmax=max(1.0, np.nanmax(matrix) if matrix.size else 1.0),
    )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(shown)), [_short(r.name) for r in shown], fontsize=8)
    if matrix.size and matrix.size <= 600:
        top = np.nanmax(matrix)
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                colour = "white" if value > 0.55 * top else "black"
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="error (%)", fraction=0.03, pad=0.01)
    ax.set_title("test error (%) per domain, mean over seeds" + note, fontsize=10)
    return png_bytes(fig)


def error_vs_speed(rows: Sequence[Row]) -> bytes:
    """Mean error against images/s: colour by the first axis (e.g. method), marker by the
    second (e.g. selector); the best few rows are labelled."""
    plt = pyplot()
    points = [r for r in rows if r.mean is not None and r.costs.get("images_per_s")]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if not points:
        ax.text(0.5, 0.5, "no finished run reports images/s", ha="center", transform=ax.transAxes)
        return png_bytes(fig)
    names = list(points[0].axes)
    first = list(dict.fromkeys(r.axes.get(names[0], "") for r in points)) if names else [""]
    second = (
        list(dict.fromkeys(r.axes.get(names[1], "") for r in points)) if len(names) > 1 else [""]
    )
    colours = plt.get_cmap("tab10").colors
    markers = "osD^vP*Xh<>"
    for r in points:
        a = r.axes.get(names[0], "") if names else ""
        b = r.axes.get(names[1], "") if len(names) > 1 else ""
        i, j = first.index(a), second.index(b)
        colour = colours[i] if i < len(colours) else "#999999"
        ax.errorbar(
            r.costs["images_per_s"],
            r.mean,
            yerr=r.std or 0.0,
            fmt=markers[j % len(markers)],
            ms=6,
            color=colour,
            ecolor="#bbbbbb",
            capsize=2,
            alpha=0.85,
        )
    for rank, r in enumerate(sorted(points, key=lambda r: r.mean)[:MAX_LABELLED_POINTS]):
        ax.annotate(
            f"#{rank + 1}",
            (r.costs["images_per_s"], r.mean),
            textcoords="offset points",
            xytext=(5, 3 + 7 * (rank % 2)),
            fontsize=7,
        )
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=colours[i], label=f"{names[0]}={v}")
        for i, v in enumerate(first[: len(colours)])
        if names
    ]
    if len(first) > len(colours):
        handles.append(plt.Line2D([], [], ls="", marker="o", color="#999999", label="other"))
    if len(names) > 1 and len(second) > 1:
        handles += [
            plt.Line2D(
                [],
                [],
                ls="",
                marker=markers[j % len(markers)],
                color="#444444",
                label=f"{names[1]}={v}",
            )
            for j, v in enumerate(second)
        ][:12]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    speeds = [r.costs["images_per_s"] for r in points]
    wide = max(speeds) > 8 * min(speeds)
    if wide:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain())
        ax.xaxis.set_minor_formatter(_plain(minor=True))
    ax.set_xlabel("images / s (adaptation" + (", log scale)" if wide else ")"))
    ax.set_ylabel("mean test error (%), +- std over seeds")
    shown = min(len(points), MAX_LABELLED_POINTS)
    ax.set_title(f"error vs throughput (#k: leaderboard rank, best {shown} marked)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return png_bytes(fig)


def _plain(minor: bool = False):
    """Tick labels as plain numbers (150, 300), not 1.5 x 10^2; minor ticks at 2 and 5 only."""
    from matplotlib.ticker import FuncFormatter

    def text(value: float, _: object) -> str:
        if minor and f"{value:.0e}"[0] not in "25":
            return ""
        return f"{value:g}"

    return FuncFormatter(text)


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def along_stream(rows: Sequence[Row]) -> bytes:
    """Error along the stream of the best rows: per batch when runs have `stream`, else
    per domain in stream order."""
    plt = pyplot()
    best = [r for r in rows if r.mean is not None][:MAX_STREAM_LINES]
    per_batch = [r for r in best if r.stream]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    if per_batch:
        for r in per_batch:
            window = max(1, len(r.stream) // 60)
            smooth = _smooth(r.stream, window)
            x = np.asarray(r.stream_x or range(len(r.stream)), dtype=float)[window - 1 :]
            ax.plot(x[: len(smooth)], smooth, label=_short(r.name, 40), lw=1.4)
        for start in per_batch[0].stream_starts[1:]:
            ax.axvline(start, color="#777777", lw=1.0, ls=":")
        ax.set_xlabel("batch along the stream (dotted: a new domain starts)")
        title = "error along the stream (per batch, moving average), best rows"
    else:
        for r in best:
            errors = [d["error"] for d in r.per_domain]
            ax.plot(range(len(errors)), errors, marker="o", ms=3, label=_short(r.name, 40), lw=1.2)
        if best and best[0].per_domain:
            labels = [d["domain"] for d in best[0].per_domain]
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        title = "error per domain in stream order, best rows (runs have no per-batch stream)"
    ax.set_ylabel("error (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if best:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png_bytes(fig)


def selection_gap(gaps: Sequence[Gap]) -> bytes:
    """Per row: test error of the setting chosen on validation beside the oracle's."""
    plt = pyplot()
    known = [g for g in gaps if g.selected_test_error is not None]
    known.sort(key=lambda g: -(g.gap or 0.0))
    shown = known[:MAX_GAP_ROWS]
    fig, ax = plt.subplots(figsize=(9, min(16.0, 1.4 + 0.42 * max(1, len(shown)))))
    y = np.arange(len(shown))
    selected = [g.selected_test_error for g in shown]
    oracle = [g.oracle_test_error if g.oracle_test_error is not None else np.nan for g in shown]
    ax.barh(y - 0.2, selected, 0.4, label="selected on validation", color="#4477aa")
    ax.barh(y + 0.2, oracle, 0.4, label="oracle (best on test, optimistic)", color="#cccccc")
    for i, g in enumerate(shown):
        if g.gap is not None:
            ax.text(
                max(selected[i], oracle[i]) + 0.5, i, f"gap {g.gap:+.2f}", va="center", fontsize=7
            )
    ax.set_yticks(y, [_short(g.row, 40) for g in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean test error (%)")
    hidden = len(known) - len(shown)
    ax.set_title(
        "blue: selected on validation; grey: oracle (best on test, optimistic)"
        + (f"\nlargest {len(shown)} gaps shown; {hidden} more in the table" if hidden > 0 else ""),
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    right = np.nanmax([*selected, *oracle]) if shown else 1.0
    ax.set_xlim(0, right * 1.18 + 1)
    return png_bytes(fig)
