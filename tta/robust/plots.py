"""Figures of `tta-robust`: accuracy vs eps, input vs logit margin, ROC of detection.

Drawn on `matplotlib.figure.Figure` directly (no pyplot, no global backend change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tta.robust.consistency import MarginConsistency
from tta.robust.expected import ExpectedRobustness


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_accuracy_vs_eps(results: dict[str, ExpectedRobustness], path: Path) -> Path:
    """Robust accuracy along the grid, one line per model, E.adv in the legend."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for name, result in results.items():
        eps = np.array(result.grid) * 255
        ax.plot(eps, result.accuracy, marker="o", label=f"{name} (E.adv {result.expected:.1f})")
    ax.set_xlabel("eps (x 1/255)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"APGD-CE {next(iter(results.values())).protocol['steps']} steps")
    return _save(fig, path)


def plot_margin_scatter(result: MarginConsistency, path: Path) -> Path:
    """Input margin vs logit margin of the subset, each eps marked, tau in the title."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    finite = np.isfinite(result.d_in)
    ax.scatter(result.d_in[finite] * 255, result.d_out[finite], s=6, alpha=0.5)
    for eps in result.protocol["eps"]:
        ax.axvline(eps * 255, color="red", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"input margin ({result.protocol['norm']}, x 1/255; dashed: eps)")
    ax.set_ylabel("logit margin")
    ax.set_title(f"Kendall tau {result.summary['tau']:.3f}")
    return _save(fig, path)


def plot_roc(result: MarginConsistency, path: Path) -> Path:
    """ROC of detecting non-robust samples by the logit margin (solid) and the
    pseudo-margin (dashed), one colour per eps (budgets with one kind of sample omitted)."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    for index, entry in enumerate(result.summary["by_eps"]):
        color = f"C{index}"
        eps = f"{entry['eps'] * 255:.3g}/255"
        curves = [("logit", entry["roc"], entry["detection"], "-")]
        if entry.get("pseudo_roc"):
            curves.append(("pseudo", entry["pseudo_roc"], entry["pseudo_detection"], "--"))
        for name, roc, det, style in curves:
            if len(roc["fpr"]):
                label = f"{name} {eps} (AUROC {det['auroc']:.1f})"
                ax.plot(roc["fpr"], roc["tpr"], style, color=color, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)
