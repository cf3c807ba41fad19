"""Margin consistency (tta.robust): minimum-norm estimates against analytic margins, tau,
detection metrics and the subset estimate against hand computations, the pseudo-margin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_robust_linear import linear_problem

from tta.robust import (
    brittle_fraction,
    calibrate_threshold,
    detection_metrics,
    estimate_robust_accuracy,
    fit_pseudo_margin,
    fpr_at_tpr,
    input_margins,
    kendall_tau,
    logit_margin,
    margin_consistency,
    subset_estimate,
    threshold_at_tpr,
)
from tta.robust.margins import bisection_margins

pytest.importorskip("sklearn", reason="tta[robust] installs scikit-learn")


def test_logit_margin_is_top1_minus_top2():
    logits = torch.tensor([[1.0, 3.0, 2.5], [0.0, -1.0, 4.0], [2.0, 2.0, 0.0]])
    assert torch.allclose(logit_margin(logits), torch.tensor([0.5, 4.0, 0.0]))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_bisection_margins_bracket_the_analytic_margin(norm):
    model, x, _, margins = linear_problem(norm=norm)
    estimate = bisection_margins(model, x, norm, iters=8)
    assert (estimate >= margins * (1 - 1e-5)).all()  # an actual adversarial point: never below
    # doubling from 1/255 brackets each margin in [m, 2m]; 8 halvings: within m / 256 (+ APGD)
    assert (estimate <= margins * (1 + 1 / 256) + 1e-6).all()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_margins_are_within_one_percent_of_the_analytic_margin(norm):
    pytest.importorskip("pyautoattack")
    model, x, _, margins = linear_problem(n=12, norm=norm)
    result = input_margins(model, x, norm, method="fab")
    assert result.n_failed == 0
    assert torch.allclose(result.margins, margins, rtol=0.01)


def test_tau_is_one_on_the_linear_model():
    model, x, _, margins = linear_problem()
    with torch.no_grad():
        d_out = logit_margin(model(x))  # |f(x)|, proportional to the input margin
    assert kendall_tau(margins, d_out) == pytest.approx(1.0)
    estimated = input_margins(model, x, method="bisection", iters=12).margins
    assert kendall_tau(estimated, d_out) > 0.98
    assert kendall_tau(margins, -d_out) == pytest.approx(-1.0)


# Hand example: positives (d_in <= 0.06) are the first three samples.
D_IN = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3])
D_OUT = np.array([0.5, 2.0, 1.0, 1.5, 3.0, 0.8])


def test_detection_metrics_against_a_hand_computation():
    m = detection_metrics(D_IN, D_OUT, eps=0.06)
    # AUROC: pairs (positive, negative) with the positive's logit margin smaller: 6 of 9
    assert m["auroc"] == pytest.approx(100 * 6 / 9)
    # ranked by d_out: 0.5 P, 0.8 N, 1.0 P, 1.5 N, 2.0 P, 3.0 N -> AP = (1 + 2/3 + 3/5) / 3
    assert m["aupr"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3)
    # 95% TPR needs all three positives: d_out <= 2.0 flags negatives 1.5 and 0.8: FPR 2/3
    assert m["fpr@95"] == pytest.approx(100 * 2 / 3)
    assert m["threshold"] == 2.0 and m["nonrobust"] == pytest.approx(50.0)


def test_threshold_at_tpr_is_the_point_roc_curve_picks():
    rng = np.random.default_rng(0)
    d_out = rng.random(300)
    labels = rng.random(300) < 0.3 + 0.4 * (d_out < 0.5)
    for tpr in (0.8, 0.9, 0.95, 1.0):
        _, score_threshold = fpr_at_tpr(labels, -d_out, tpr)
        assert threshold_at_tpr(d_out, labels, tpr) == pytest.approx(-score_threshold)
    assert threshold_at_tpr(d_out, np.zeros(300, bool)) == -math.inf  # nothing to flag


def test_subset_estimate_against_a_hand_computation():
    d_out_all = np.array([0.5, 2.5, 3.0, 1.0, 2.0, 4.0])
    correct_all = np.array([1, 1, 0, 1, 1, 1], bool)
    result = subset_estimate(D_IN, D_OUT, 0.06, d_out_all, correct_all)
    # threshold 2.0; correct with d_out > 2.0: 2.5 and 4.0 (3.0 is wrong) -> 2 of 6
    assert result["threshold"] == 2.0
    assert result["estimate"] == pytest.approx(100 * 2 / 6)
    assert estimate_robust_accuracy(d_out_all, correct_all, -math.inf) == pytest.approx(500 / 6)


def test_brittle_fraction_counts_margins_at_or_below_the_threshold():
    logits = torch.tensor([[0.0, 0.3], [0.0, 2.0], [1.0, 0.0], [5.0, 0.0]])  # 0.3, 2, 1, 5
    assert brittle_fraction(logits, 1.0) == pytest.approx(0.5)
    assert brittle_fraction(logits, -math.inf) == 0.0


def test_detection_with_one_kind_of_sample_gives_nan_not_an_error():
    m = detection_metrics(D_IN, D_OUT, eps=1.0)  # every sample non-robust
    assert math.isnan(m["auroc"]) and m["nonrobust"] == 100.0


def test_pseudo_margin_learns_a_margin_the_logit_margin_misranks():
    """logits (u, v, 0) with u, v in [0, 1]: the logit margin is |u - v|, the input margin
    here (u + v) / 20; the MLP reads it, the logit margin cannot."""
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(400, 2, generator=g)
    logits = torch.cat([uv, torch.zeros(400, 1)], dim=1)
    d_in = uv.sum(1) / 20
    train, test = slice(0, 300), slice(300, 400)
    assert abs(kendall_tau(d_in[test], logit_margin(logits[test]))) < 0.2
    model = fit_pseudo_margin(logits[train], d_in[train], epochs=500, seed=0)
    with torch.no_grad():
        predicted = model(logits[test])
    assert kendall_tau(d_in[test], predicted) > 0.9


def test_margin_consistency_end_to_end_on_the_linear_model():
    """Perfect consistency: tau 1, AUROC 100, FPR@95 0; the subset estimate and the attacked
    truth as computed by hand from the analytic margins."""
    model, x, y, margins = linear_problem(n=40)
    labels = y.clone()
    labels[:4] = 1 - labels[:4]  # four misclassified samples
    eps = float(margins.sort().values[19:21].mean())  # between two margins: no tie
    result = margin_consistency(
        model,
        x,
        labels,
        eps=eps,
        n_subset=40,
        method="bisection",
        heldout_images=x,
        pseudo="logits",
        min_norm_options={"iters": 12},
        pseudo_epochs=50,
    )
    s = result.summary
    (at,) = s["by_eps"]
    assert s["tau"] == pytest.approx(1.0, abs=0.02)
    assert at["detection"]["auroc"] == pytest.approx(100.0)
    assert at["detection"]["fpr@95"] == 0.0
    correct = (labels == y).numpy()
    m = margins.numpy()
    assert at["truth"] == pytest.approx(100 * np.mean(correct & (m > eps)))
    positives = np.sort(m[m <= eps])
    cut = positives[math.ceil(0.95 * len(positives) - 1e-9) - 1]  # in margin units
    assert at["estimate"]["estimate"] == pytest.approx(100 * np.mean(correct & (m > cut)))
    assert result.protocol["min_norm"]["method"] == "bisection"
    assert s["pseudo_tau"] is not None and "pseudo_detection" in at


def test_calibrated_threshold_flags_95_percent_of_the_nonrobust_source_images():
    model, x, _, margins = linear_problem(n=40)
    eps = float(margins.sort().values[19:21].mean())
    calibration = calibrate_threshold(model, x, eps, iters=10)
    with torch.no_grad():
        logits = model(x)
    d_out = logit_margin(logits).numpy()
    positives = np.sort(d_out[margins.numpy() <= eps])  # 20 non-robust: flag 19 of them
    assert calibration.threshold == pytest.approx(positives[18])
    assert calibration.nonrobust_share == 50.0
    assert brittle_fraction(logits, calibration.threshold) == pytest.approx(19 / 40)
