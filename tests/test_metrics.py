"""ECE against hand computations, the error-along-the-stream windows, and both as the stream
loop collects them (from the logits it already has: no extra forward pass)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stream import LabelledBenchmark, LabelReader

import tta
from tta.harness.metrics import expected_calibration_error, stream_curve
from tta.harness.stream import StreamSpec, run_stream


def test_ece_by_hand():
    """15 bins of width 1/15: 0.95 -> bin 14, 0.55 -> bin 8, 0.30 -> bin 4.

    bin 14: 2 samples, accuracy 1/2, confidence 0.95 -> 2/6 * 0.45 = 0.15
    bin 8:  1 sample,  accuracy 1,   confidence 0.55 -> 1/6 * 0.45 = 0.075
    bin 4:  3 samples, accuracy 1/3, confidence 0.30 -> 3/6 * 0.0333.. = 0.01666..
    """
    confidence = np.array([0.95, 0.95, 0.55, 0.30, 0.30, 0.30])
    correct = np.array([True, False, True, False, False, True])
    assert expected_calibration_error(confidence, correct) == pytest.approx(
        100 * (0.15 + 0.075 + 0.05 / 3)
    )


def test_ece_bins_are_closed_on_the_right():
    """A confidence on a bin edge belongs to the bin below it, as in Guo et al.'s code:
    together (one bin) the two samples would give |0.5 - 0.205| = 29.5%."""
    edge = np.linspace(0, 1, 16)[3]
    ece = expected_calibration_error(np.array([edge, edge + 0.01]), np.array([True, False]))
    assert ece == pytest.approx(100 * (0.5 * (1 - edge) + 0.5 * (edge + 0.01)))


def test_ece_of_a_calibrated_and_an_overconfident_model():
    confidence = np.full(10, 0.7)
    assert expected_calibration_error(confidence, np.arange(10) < 7) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(4), np.zeros(4, bool)) == pytest.approx(100.0)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([], bool)))
    with pytest.raises(ValueError, match="one entry per sample"):
        expected_calibration_error(np.ones(3), np.ones(2))


def test_stream_curve_windows_stay_inside_domains():
    """10 batches of 10 images, domains at batches 0 and 6, at most 3 points: windows of
    ceil(10 / 3) = 4 batches, cut at the boundary -> [0, 4), [4, 6), [6, 10)."""
    wrong = [1, 2, 3, 4, 5, 6, 0, 0, 10, 10]
    curve = stream_curve([10] * 10, wrong, [0, 6], [("a", 5), ("b", 5)], max_points=3)
    assert curve["window_batches"] == 4 and curve["n_batches"] == 10
    assert curve["batch"] == [0, 4, 6]
    assert curve["images"] == [40, 60, 100] and curve["n"] == [40, 20, 40]
    assert curve["error"] == pytest.approx([100 * 10 / 40, 100 * 11 / 20, 100 * 20 / 40])
    assert curve["domain_starts_images"] == [0, 60] and curve["domains"] == ["a", "b"]
    assert curve["severities"] == [5, 5]


def test_stream_curve_keeps_every_batch_of_a_short_stream():
    curve = stream_curve([4, 4, 2], [1, 0, 2], [0], [("a", None)])
    assert curve["window_batches"] == 1 and curve["images"] == [4, 8, 10]
    assert curve["error"] == pytest.approx([25.0, 0.0, 100.0])


def test_stream_curve_of_750_steps_stays_small():
    curve = stream_curve([200] * 750, [20] * 750, list(range(0, 750, 50)), [("d", 5)] * 15)
    assert len(curve["images"]) <= 300 + 15 and curve["images"][-1] == 150000


@pytest.mark.parametrize("setting", ["continual", "mixed"])
def test_stream_collects_ece_and_batches_from_the_logits_it_has(setting):
    """Per-domain and overall ECE from the stream's own logits; one forward per batch."""
    spec = StreamSpec(
        benchmark="arrays", corruptions=("a", "b", "c"), setting=setting, batch_size=8,
        n_per_domain=24,
    )  # fmt: skip
    bench = LabelledBenchmark()
    result = run_stream(tta.adapt(LabelReader(), loss="source"), spec, bench)
    assert result.counters["n_forward"] == 9, "no extra forward pass"
    confidences, corrects = [], []
    for name, d in zip(("a", "b", "c"), result.per_domain, strict=True):
        images, labels = bench.data[name]
        with torch.no_grad():
            logits = LabelReader()(torch.tensor(images).permute(0, 3, 1, 2).float() / 255)
        confidence = logits.softmax(1).amax(1).numpy()
        correct = logits.argmax(1).numpy() == labels
        assert d["ece"] == pytest.approx(expected_calibration_error(confidence, correct))
        confidences.append(confidence)
        corrects.append(correct)
    overall = expected_calibration_error(np.concatenate(confidences), np.concatenate(corrects))
    assert result.overall_ece() == pytest.approx(overall)
    assert result.batch_n == [8] * 9 and sum(result.batch_wrong) == 3 + 6 + 12
    assert result.domain_start_batches == ([0, 3, 6] if setting == "continual" else [0])
