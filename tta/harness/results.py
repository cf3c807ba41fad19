"""Write a run's results: results.json, results.csv and a per-domain bar chart."""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path

import numpy as np


def without_nan(value: object) -> object:
    """NaN and infinities -> None, in nested dicts, lists and tuples (JSON has no NaN)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value


def dump_json(value: object) -> str:
    """Strict JSON: NaN becomes null, anything unknown its str()."""
    return json.dumps(without_nan(value), indent=2, default=str, allow_nan=False)


def mean_or_none(per_domain: list[dict]) -> float | None:
    """Mean error over domains; None (not NaN) when no domain finished."""
    return float(np.mean([d["error"] for d in per_domain])) if per_domain else None


def versions() -> dict[str, str]:
    import torch
    import torchvision

    import tta

    return {
        "tta": tta.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


def format_table(per_domain: list[dict], source: list[dict] | None, label: str) -> str:
    """Per-domain errors, the source model beside the adapted one, and their means."""
    source_by = {(d["domain"], d["severity"]): d["error"] for d in source or []}
    width = max(10, len(label) + 3)
    lines = [f"{'domain':<20}{'sev':>4}{'n':>7}{'source %':>10}{label + ' %':>{width}}"]
    matched = []
    for d in per_domain:
        src = source_by.get((d["domain"], d["severity"]))
        matched.append(src)
        src_text = f"{src:10.2f}" if src is not None else f"{'-':>10}"
        lines.append(
            f"{d['domain']:<20}{d['severity'] or '-':>4}{d['n']:>7}{src_text}{d['error']:>{width}.2f}"
        )
    mean = mean_or_none(per_domain)
    known = [s for s in matched if s is not None]
    src_mean = f"{np.mean(known):10.2f}" if known else f"{'-':>10}"
    mean_text = f"{mean:>{width}.2f}" if mean is not None else f"{'-':>{width}}"
    lines.append(f"{'mean':<31}{src_mean}{mean_text}")
    return "\n".join(lines)


def format_card(card: dict) -> str:
    width = max(len(k) for k in card)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in card.items())


def plot_errors(per_domain: list[dict], source: list[dict] | None, label: str, path: Path) -> None:
    """Bar chart of per-domain error, source beside adapted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d["domain"] for d in per_domain]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4))
    if source:
        src = {(d["domain"], d["severity"]): d["error"] for d in source}
        heights = [src.get((d["domain"], d["severity"]), np.nan) for d in per_domain]
        ax.bar(x - 0.2, heights, 0.4, label="source", color="#bbbbbb")
    ax.bar(x + (0.2 if source else 0), [d["error"] for d in per_domain], 0.4, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(out_dir: Path, results: dict, label: str) -> None:
    """results.json (everything, strict JSON), results.csv (per domain) and errors.png.

    The chart is skipped when no domain finished (an early interrupt).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(dump_json(results))
    source = {
        (d["domain"], d["severity"]): d["error"] for d in results.get("source_per_domain", [])
    }
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["domain", "severity", "n", "source_error", "error"])
        for d in results["per_domain"]:
            writer.writerow(
                [
                    d["domain"],
                    d["severity"],
                    d["n"],
                    source.get((d["domain"], d["severity"]), ""),
                    d["error"],
                ]
            )
    if results["per_domain"]:
        plot_errors(
            results["per_domain"], results.get("source_per_domain"), label, out_dir / "errors.png"
        )
