"""Figures stay readable at any stream length: a 750-step GALA heatmap and a 135-domain
gradual run are aggregated (per window, per corruption) and drawn within the size cap."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.harness.metrics import stream_curve
from tta.harness.plots import MAX_PIXELS, group_by_domain, plot_errors, plot_stream
from tta.harness.results import Baseline
from tta.harness.stream import GRADUAL_SEVERITIES
from tta.harness.trace import MAX_COLUMNS, window_means, write_trace


def pixels(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def gradual_rows(offset: float = 0.0) -> list[dict]:
    """135 (corruption, severity) segments: the gradual setting over 15 corruptions."""
    return [
        {"domain": name, "severity": s, "n": 1000, "error": 10.0 * s + offset + k}
        for k, name in enumerate(STANDARD_CORRUPTIONS)
        for s in GRADUAL_SEVERITIES
    ]


def test_window_means_by_hand():
    mask = np.array([[1, 0], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=bool)
    assert window_means(mask, 2) == pytest.approx(np.array([[1, 0.5], [0.5, 0], [0, 1]]))
    cosine = np.array([[0.5, np.nan], [0.7, np.nan], [np.nan, 0.2]])
    means = window_means(cosine, 2)
    assert means[0, 0] == pytest.approx(0.6) and np.isnan(means[0, 1])
    assert means[1, 1] == pytest.approx(0.2)


def test_heatmap_of_750_steps_stays_within_the_cap(tmp_path):
    """Before: 10400 pixels wide (0.08 inch per step, two panels, at 130 dpi)."""
    rng = np.random.default_rng(0)
    n_steps, names = 750, [f"layer{k}.conv" for k in range(40)]
    trace = {
        "step": list(range(n_steps)),
        "selected": [[int(rng.integers(40))] if k % 7 else [] for k in range(n_steps)],
        "skipped": [k % 7 == 0 for k in range(n_steps)],
        "cosine": rng.uniform(0.5, 1.0, (n_steps, 40)).tolist(),
    }
    starts = list(range(0, n_steps, 50))
    summary = write_trace(tmp_path, trace, names, starts, list(STANDARD_CORRUPTIONS))
    width, height = pixels(tmp_path / summary["heatmap_file"])
    assert width <= MAX_PIXELS and height <= MAX_PIXELS
    assert summary["n_selector_steps"] == 750, "the .npz and summary keep every step"
    saved = np.load(tmp_path / summary["trace_file"])
    assert saved["selected"].shape == (750, 40)
    assert MAX_COLUMNS < n_steps


def test_bar_chart_of_135_segments_is_one_bar_per_corruption(tmp_path):
    """Before: 9130 pixels wide with 135 unlabeled bars."""
    rows = gradual_rows()
    names, groups = group_by_domain(rows)
    assert names == list(STANDARD_CORRUPTIONS) and [len(g) for g in groups] == [9] * 15
    fog = STANDARD_CORRUPTIONS.index("fog")
    assert np.mean([rows[i]["error"] for i in groups[fog]]) == pytest.approx(
        10.0 * np.mean(GRADUAL_SEVERITIES) + fog
    )
    baselines = [
        Baseline("source", "source", gradual_rows(20.0)),
        Baseline("all_layers", "tent+all", gradual_rows(5.0)),
    ]
    plot_errors(rows, baselines, "tent+gala", tmp_path / "errors.png")
    width, height = pixels(tmp_path / "errors.png")
    assert width <= MAX_PIXELS and height <= MAX_PIXELS


def test_short_runs_keep_one_bar_per_domain():
    rows = [{"domain": d, "severity": 5, "n": 10, "error": 1.0} for d in STANDARD_CORRUPTIONS]
    names, groups = group_by_domain(rows)
    assert names == list(STANDARD_CORRUPTIONS) and groups == [[k] for k in range(15)]


def test_stream_plot_of_a_long_gradual_run_stays_within_the_cap(tmp_path):
    batches = 135 * 50
    domains = [(d["domain"], d["severity"]) for d in gradual_rows()]
    curve = stream_curve([200] * batches, [40] * batches, list(range(0, batches, 50)), domains)
    assert len(curve["images"]) <= 300 + 135
    baselines = [Baseline("source", "source", gradual_rows(20.0))]
    plot_stream(curve, baselines, "tent+gala", tmp_path / "stream.png")
    width, height = pixels(tmp_path / "stream.png")
    assert width <= MAX_PIXELS and height <= MAX_PIXELS
