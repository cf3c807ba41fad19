"""Metrics beyond the error rate: calibration (ECE) and error along the stream.

ECE (Guo et al., ICML 2017; as TTA papers report it): confidences are the maximum softmax
probabilities, split into equal-width bins (lower, upper]; ECE = sum_b |B_b| / n *
|acc(B_b) - conf(B_b)|, in percent.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
MAX_STREAM_POINTS = 300


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE in percent over equal-width confidence bins; NaN for no samples."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape:
        raise ValueError(
            f"confidence {confidence.shape} and correct {correct.shape} must have one entry "
            "per sample"
        )
    if confidence.size == 0:
        return float("nan")
    # Bin b holds (edges[b], edges[b + 1]] as in Guo et al.'s code; 0 goes to bin 0.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return 100.0 * float(np.abs(acc_sum - conf_sum).sum() / confidence.size)


def stream_curve(
    batch_n: list[int],
    batch_wrong: list[int],
    domain_starts: list[int],
    domains: list[tuple[str, int | None]],
    max_points: int = MAX_STREAM_POINTS,
) -> dict:
    """Error per window of consecutive batches, windows never crossing a domain boundary.

    `batch_n` / `batch_wrong`: images and wrong predictions per batch, in stream order;
    `domain_starts`: the first batch index of each domain, `domains` its (name, severity).
    Windows hold `window_batches` batches (1 until there are more than `max_points`
    batches), so there are at most `max_points` + number of domains points. `images` is the number of images seen at the
    end of each window; `error` its error in percent.
    """
    n_batches = len(batch_n)
    window = max(1, math.ceil(n_batches / max_points))
    n = np.asarray(batch_n, dtype=np.int64)
    wrong = np.asarray(batch_wrong, dtype=np.int64)
    seen = np.cumsum(n)
    bounds = sorted({s for s in domain_starts if s < n_batches} | {0}) if n_batches else []
    starts, ends = [], []
    for first, last in zip(bounds, [*bounds[1:], n_batches], strict=False):
        for start in range(first, last, window):
            starts.append(start)
            ends.append(min(start + window, last))
    images = [int(n[a:b].sum()) for a, b in zip(starts, ends, strict=True)]
    errors = [
        100.0 * float(wrong[a:b].sum()) / count if count else float("nan")
        for a, b, count in zip(starts, ends, images, strict=True)
    ]
    before = np.concatenate([[0], seen])
    return {
        "window_batches": window,
        "n_batches": n_batches,
        "batch": starts,
        "images": [int(seen[b - 1]) for b in ends],
        "n": images,
        "error": errors,
        "domain_starts_batches": list(domain_starts),
        "domain_starts_images": [int(before[min(s, n_batches)]) for s in domain_starts],
        "domains": [name for name, _ in domains],
        "severities": [severity for _, severity in domains],
    }
