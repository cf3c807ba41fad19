"""A run's figures: per-domain errors (errors.png), error along the stream (stream.png) and
the brittleness monitor's curve (brittleness.png).

Every figure stays readable at any stream length: at most `MAX_PIXELS` wide and high, long
inputs aggregated (per corruption, per window) rather than drawn as thousands of slivers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta.harness.results import Baseline

MAX_PIXELS = 1600  # the largest width or height of any figure, in pixels
MAX_BARS = 30  # more domains than this: one bar per corruption (mean over its segments)
MAX_DOMAIN_LABELS = 20  # more boundaries than this: names only where the corruption changes
DPI = 110


def capped_size(width: float, height: float, dpi: float) -> tuple[float, float]:
    """(width, height) in inches, each at most `MAX_PIXELS` at `dpi`."""
    limit = MAX_PIXELS / dpi
    return min(width, limit), min(height, limit)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_by_domain(per_domain: list[dict]) -> tuple[list[str], list[list[int]]]:
    """Bar labels and the per-domain rows of each bar: one bar per row when there are at
    most `MAX_BARS`, else one per domain name (its severities or segments averaged)."""
    if len(per_domain) <= MAX_BARS:
        return [d["domain"] for d in per_domain], [[k] for k in range(len(per_domain))]
    groups: dict[str, list[int]] = {}
    for k, d in enumerate(per_domain):
        groups.setdefault(d["domain"], []).append(k)
    return list(groups), list(groups.values())


def plot_errors(per_domain: list[dict], baselines: list[Baseline], label: str, path: Path) -> None:
    """Bar chart of per-domain error, each baseline (e.g. source, the same loss on all
    layers) beside the run; one bar per corruption when there are many domains."""
    plt = pyplot()
    names, groups = group_by_domain(per_domain)
    series = {b.label: b.rows for b in baselines if b.rows}
    series[label] = per_domain
    x = np.arange(len(names))
    width = 0.8 / len(series)
    size = capped_size(max(6.0, 0.25 * len(names) * len(series) + 2.5), 4.5, DPI)
    fig, ax = plt.subplots(figsize=size)
    colors = {b.label: "#bbbbbb" for b in baselines if b.key == "source"}
    for k, (name, rows) in enumerate(series.items()):
        heights = [
            np.mean([rows[i]["error"] for i in group]) if group[-1] < len(rows) else np.nan
            for group in groups
        ]
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(x + offset, heights, width, label=name, color=colors.get(name))
    fontsize = 8 if len(names) <= 20 else 6
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=fontsize)
    averaged = len(names) < len(per_domain)
    ax.set_ylabel("error (%)" + (", mean over each domain's segments" if averaged else ""))
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def thin_labels(positions: list[float], names: list[str]) -> list[tuple[float, str]]:
    """(position, name) of the domain names worth drawing: all of them when there are at
    most `MAX_DOMAIN_LABELS`, else only where the name changes, thinned to that many."""
    marks = list(zip(positions, names, strict=False))
    if len(marks) <= MAX_DOMAIN_LABELS:
        return marks
    changes = [m for k, m in enumerate(marks) if k == 0 or m[1] != marks[k - 1][1]]
    step = max(1, -(-len(changes) // MAX_DOMAIN_LABELS))
    return changes[::step]


def boundary_labels(curve: dict) -> list[tuple[float, str]]:
    """(x, name) of the domain names drawn above the stream plot (`thin_labels`); a name
    repeated with other severities (gradual) carries its severity when all are shown."""
    starts, names = curve["domain_starts_images"], curve["domains"]
    severities = curve.get("severities") or [None] * len(names)
    if len(starts) <= MAX_DOMAIN_LABELS and len(set(names)) < len(names):
        names = [
            name if severity is None else f"{name}-{severity}"
            for name, severity in zip(names, severities, strict=True)
        ]
    return thin_labels(starts, names)


def _domain_steps(ax, curve: dict, rows: list[dict], end: int, label: str, **style) -> None:
    """A baseline's per-domain error as a horizontal segment over each domain's span."""
    starts = curve["domain_starts_images"]
    if len(rows) > len(starts):
        return  # a mixed stream: the domains share one span
    ends = [*starts[1:], end]
    for k, (a, b, row) in enumerate(zip(starts, ends, rows, strict=False)):
        ax.hlines(row["error"], a, b, label=label if k == 0 else None, **style)


def plot_stream(curve: dict, baselines: list[Baseline], label: str, path: Path) -> None:
    """Error per window of batches along the stream, domain boundaries marked; each
    baseline's per-domain error drawn as flat segments."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=capped_size(12.0, 4.0, DPI))
    end = curve["images"][-1] if curve["images"] else 0
    styles = {"source": {"colors": "#999999", "linestyles": "dashed"}}
    for baseline in baselines:
        style = styles.get(baseline.key, {"colors": "tab:orange", "linestyles": "dotted"})
        _domain_steps(ax, curve, baseline.rows, end, baseline.label, linewidth=1.2, **style)
    _stairs(ax, curve, label, "tab:blue")
    _finish_stream_axes(ax, curve, end, "error (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_brittleness(source: dict, adapted: dict, label: str, threshold: float, path: Path) -> None:
    """Share of brittle decisions (logit margin at or below `threshold`) per window of
    batches along the stream: the source model's and the adapted model's (`stream_curve`
    dicts whose "error" is that share)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=capped_size(12.0, 4.0, DPI))
    end = adapted["images"][-1] if adapted["images"] else 0
    _stairs(ax, source, "source", "#999999")
    _stairs(ax, adapted, label, "tab:blue")
    _finish_stream_axes(ax, adapted, end, f"brittle (%), logit margin <= {threshold:.3g}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _stairs(ax, curve: dict, label: str, color: str) -> None:
    """A curve's windows, each a flat step over the images it covers."""
    if curve["images"]:
        edges = [curve["images"][0] - curve["n"][0], *curve["images"]]
        ax.stairs(curve["error"], edges, baseline=None, color=color, lw=1.0, label=label)


def _finish_stream_axes(ax, curve: dict, end: int, quantity: str) -> None:
    """Domain boundaries and names, axis labels and limits, legend."""
    names = curve["domains"]
    many = len(names) > MAX_DOMAIN_LABELS  # then only a change of name is a strong line
    for k, start in enumerate(curve["domain_starts_images"][1:], start=1):
        strong = not many or k >= len(names) or names[k] != names[k - 1]
        ax.axvline(start, color="tab:red", linewidth=0.6, alpha=0.6 if strong else 0.12)
    top = ax.secondary_xaxis("top")
    marks = boundary_labels(curve)
    top.set_xticks([x for x, _ in marks], [n for _, n in marks], rotation=45, ha="left")
    top.tick_params(length=0, labelsize=7)
    window = curve.get("window_batches", 1)
    per = "batch" if window == 1 else f"window of {window} batches"
    ax.set_xlabel("images seen")
    ax.set_ylabel(f"{quantity} per {per}")
    ax.set_xlim(0, max(end, 1))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
