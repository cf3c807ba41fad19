"""The figure of a fine-tuning run: the budget schedule eps(t) and the validation curves.

Drawn on `matplotlib.figure.Figure` directly (no pyplot, no global backend change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tta.robust.finetune.schedule import epsilon_at


def plot_run(history: list[dict], eps_g: float, hinges: tuple[float, float], path: Path) -> Path:
    """Left: eps(t) (x 1/255) with the hinges; right: validation clean / adv / expected."""
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    epochs = max(len(history), 1)
    t = np.linspace(0, epochs, 400)
    t1, t2 = hinges
    left.plot(t, [epsilon_at(v, eps_g, t1, t2) * 255 for v in t], label="eps(t)")
    ends = [h["epoch"] for h in history]
    if history:
        mids = [e - 0.5 for e in ends]
        means = [h["eps_mean"] * 255 for h in history]
        left.plot(mids, means, "o", ms=3, label="mean over the epoch")
    marks = ((t1, "T1 = T2"),) if t1 == t2 else ((t1, "T1"), (t2, "T2"))
    for x, name in marks:
        left.axvline(x, color="grey", ls=":", lw=1)
        left.text(x, eps_g * 255 * 1.02, name, ha="center", fontsize=8)
    left.set_xlabel("epoch")
    left.set_ylabel("eps (x 1/255)")
    left.set_ylim(0, eps_g * 255 * 1.12 + 1e-9)
    left.legend(loc="lower right", fontsize=8)
    for key, label in (
        ("val_clean", "clean"),
        ("val_adv", "adv @ eps_g"),
        ("val_expected", "expected"),
    ):
        right.plot(ends, [h[key] for h in history], marker="o", ms=3, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy (%)")
    right.set_ylim(0, 100)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
