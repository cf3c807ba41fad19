"""Write a run's results: results.json, results.csv, the printed table and the plots."""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Baseline(NamedTuple):
    """Per-domain rows (in stream order) shown beside the run: `key` names its CSV column
    (`<key>_error`), `label` its table column and legend entry."""

    key: str
    label: str
    rows: list[dict]


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


def format_table(per_domain: list[dict], baselines: list[Baseline], label: str) -> str:
    """Per-domain errors: each baseline (e.g. source, the same loss on all layers) beside
    the run, the run's ECE, and the means."""
    headers = [f"{b.label} %" for b in baselines] + [f"{label} %", "ECE %"]
    widths = [max(10, len(h) + 2) for h in headers]
    head = "".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True))
    lines = [f"{'domain':<20}{'sev':>4}{'n':>7}{head}"]

    def cell(value: float | None, width: int) -> str:
        return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"

    for k, d in enumerate(per_domain):
        values = [_error_at(b.rows, k) for b in baselines]
        values += [d["error"], d.get("ece")]
        cells = "".join(cell(v, w) for v, w in zip(values, widths, strict=True))
        lines.append(f"{d['domain']:<20}{d['severity'] or '-':>4}{d['n']:>7}{cells}")
    n = len(per_domain)
    means = [mean_or_none(b.rows[:n]) if n else None for b in baselines]
    means += [mean_or_none(per_domain), mean_of(per_domain, "ece")]
    lines.append(f"{'mean':<31}" + "".join(cell(v, w) for v, w in zip(means, widths, strict=True)))
    return "\n".join(lines)


def _error_at(rows: list[dict], k: int) -> float | None:
    return rows[k]["error"] if k < len(rows) else None


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [d[key] for d in rows if d.get(key) is not None and math.isfinite(d[key])]
    return float(np.mean(values)) if values else None


def format_card(card: dict) -> str:
    width = max(len(k) for k in card)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in card.items())


def write_results(out_dir: Path, results: dict, baselines: list[Baseline]) -> None:
    """results.json (everything, strict JSON) and results.csv (per domain, the baselines
    beside); the figures are `tta.harness.plots`'."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(dump_json(results))
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        columns = [f"{b.key}_error" for b in baselines]
        writer.writerow(["domain", "severity", "n", *columns, "error", "ece"])
        for k, d in enumerate(results["per_domain"]):
            known = [_error_at(b.rows, k) for b in baselines]
            writer.writerow(
                [
                    d["domain"],
                    d["severity"],
                    d["n"],
                    *["" if v is None else v for v in known],
                    d["error"],
                    d.get("ece", ""),
                ]
            )
