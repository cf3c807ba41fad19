"""Save a layer selector's per-step trace: an .npz of the decisions and a heatmap PNG.

Any selector whose `trace()` has `step`, `selected` (layer indices per call) and `skipped`
works; per-layer scores shaped (calls, layers) such as GALA's `cosine` are saved too, and
the cosine is drawn beside the selection. The .npz keeps every step; the heatmap draws at
most `MAX_COLUMNS` columns, a column being a window of consecutive steps on long streams
(the fraction of its steps each layer was selected, the mean cosine), and stays within the
figure size cap of `tta.harness.plots`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from tta.harness.plots import MAX_PIXELS, pyplot, thin_labels

TRACE_FILE = "selector_trace.npz"
HEATMAP_FILE = "selector_heatmap.png"
MAX_COLUMNS = 200
DPI = 130


def selection_mask(selected: list[list[int]], n_layers: int) -> np.ndarray:
    """(calls, layers) bool: which layers kept their update at each call."""
    mask = np.zeros((len(selected), n_layers), dtype=bool)
    for row, indices in enumerate(selected):
        mask[row, list(indices)] = True
    return mask


def domain_columns(steps: np.ndarray, domain_starts: list[int]) -> np.ndarray:
    """The first trace row of each domain (steps are adaptation step indices, as domain_starts)."""
    return np.searchsorted(steps, np.asarray(domain_starts, dtype=np.int64), side="left")


def window_means(values: np.ndarray, window: int) -> np.ndarray:
    """(calls, ...) -> (ceil(calls / window), ...): the mean of each window of rows, NaNs
    ignored (a window of NaN only stays NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if window == 1:
        return values
    rows = [values[start : start + window] for start in range(0, len(values), window)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window: NaN
        return np.stack([np.nanmean(row, axis=0) for row in rows])


def per_layer_scores(trace: dict, n_calls: int, n_layers: int) -> dict[str, np.ndarray]:
    """Trace entries that hold one number per layer and call (cosine, scales, snr, ...)."""
    scores = {}
    for key, values in trace.items():
        if key in ("step", "selected", "skipped", "window_position", "layer_names"):
            continue
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            continue
        if array.shape == (n_calls, n_layers):
            scores[key] = array
    return scores


def write_trace(
    out_dir: str | Path,
    trace: dict,
    layer_names: list[str],
    domain_starts: list[int],
    domain_names: list[str],
) -> dict:
    """Write selector_trace.npz and selector_heatmap.png; return the summary for results.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = np.asarray(trace["step"], dtype=np.int64)
    mask = selection_mask(trace["selected"], len(layer_names))
    skipped = np.asarray(trace.get("skipped", ~mask.any(1)), dtype=bool)
    scores = per_layer_scores(trace, len(steps), len(layer_names))
    extra = {}
    if "window_position" in trace:
        extra["window_position"] = np.asarray(trace["window_position"], dtype=np.int64)
    np.savez_compressed(
        out_dir / TRACE_FILE,
        step=steps,
        selected=mask,
        skipped=skipped,
        layer_names=np.asarray(layer_names, dtype=str),
        domain_starts=np.asarray(domain_starts, dtype=np.int64),
        domain_names=np.asarray(domain_names, dtype=str),
        **extra,
        **scores,
    )
    plot_heatmap(
        out_dir / HEATMAP_FILE,
        mask,
        skipped,
        layer_names,
        domain_columns(steps, domain_starts),
        domain_names,
        scores.get("cosine"),
    )
    return {
        "n_selector_steps": int(len(steps)),
        "n_selector_skipped": int(skipped.sum()),
        "selection_counts": {
            name: int(n) for name, n in zip(layer_names, mask.sum(0), strict=True)
        },
        "trace_file": TRACE_FILE,
        "heatmap_file": HEATMAP_FILE,
    }


def _mark_domains(ax, positions: np.ndarray, names: list[str], n_columns: int) -> None:
    """Vertical lines at domain boundaries (column positions), names above their span."""
    ends = [*positions[1:], n_columns]
    for position in positions[1:]:
        ax.axvline(position - 0.5, color="tab:red", linewidth=0.8)
    top = ax.secondary_xaxis("top")
    centres = [(start + end - 1) / 2 for start, end in zip(positions, ends, strict=False)]
    names = list(names)
    if len(names) > len(centres):  # a mixed stream: one start, many domains
        names = [f"{len(names)} domains mixed"]
    n = min(len(centres), len(names))  # an interrupted run has a start without a result
    marks = thin_labels(centres[:n], names[:n])
    top.set_xticks([c for c, _ in marks], [name for _, name in marks], rotation=60, ha="left")
    top.tick_params(length=0, labelsize=7)


def _cosine_range(cosine: np.ndarray) -> tuple[float, float]:
    """Colour range of the cosines: their own span, as they often all lie close to 1."""
    finite = cosine[np.isfinite(cosine)]
    low = float(finite.min()) if finite.size else -1.0
    return (low, 1.0) if low < 1.0 else (-1.0, 1.0)


def plot_heatmap(
    path: Path,
    mask: np.ndarray,
    skipped: np.ndarray,
    layer_names: list[str],
    columns: np.ndarray,
    domain_names: list[str],
    cosine: np.ndarray | None = None,
) -> None:
    """Steps x layers: what was selected (and the cosines, when the trace has them); in
    windows of steps when there are more than `MAX_COLUMNS`, within `MAX_PIXELS`."""
    plt = pyplot()
    n_calls, n_layers = mask.shape
    window = max(1, math.ceil(n_calls / MAX_COLUMNS))
    n_columns = math.ceil(n_calls / window)
    if window == 1:
        what = "selected (black)"
    else:
        what = f"share of each window of {window} steps selected (black: all)"
    panels = [(f"{what}; skipped steps: red ticks", window_means(mask, window).T, "Greys")]
    if cosine is not None:
        mean = "" if window == 1 else f"mean per window of {window} steps; "
        title = f"cosine <u, u + TD> / (|u| |u + TD|); {mean}blank: u = 0"
        panels.append((title, window_means(cosine, window).T, "viridis"))
    limit = MAX_PIXELS / DPI
    width = min(limit, len(panels) * max(6.0, 0.08 * n_columns + 2.5))
    height = min(limit, max(3.5, 0.13 * n_layers + 2.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), sharey=True, squeeze=False)
    fontsize = 7 if n_layers <= 40 else 5
    skipped_at = np.unique(np.flatnonzero(skipped) // window)
    for ax, (title, image, cmap) in zip(axes[0], panels, strict=True):
        vmin, vmax = (0.0, 1.0) if cmap == "Greys" else _cosine_range(image)
        colors = plt.get_cmap(cmap).with_extremes(bad="white")
        shown = ax.imshow(
            image, aspect="auto", interpolation="nearest", cmap=colors, vmin=vmin, vmax=vmax
        )
        if cmap != "Greys":
            fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.01)
        else:
            ax.plot(skipped_at, np.full(len(skipped_at), -0.5), "|", color="tab:red", ms=6)
        _mark_domains(ax, np.asarray(columns) / window, domain_names, n_columns)
        ax.set_xlabel("selector step" if window == 1 else f"selector step / {window}")
        ax.set_title(title, fontsize=8, pad=40)
    axes[0][0].set_yticks(range(n_layers), layer_names, fontsize=fontsize)
    axes[0][0].set_ylim(n_layers - 0.5, -1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
