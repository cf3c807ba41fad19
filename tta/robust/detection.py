"""Detecting non-robust samples by their logit margin, and robust accuracy from a subset
(Ngnawé et al., NeurIPS 2024; code ngnawejonas/margin-consistency, `notebook/nbutils.py`).

A sample is non-robust at eps when its input margin `d_in <= eps` (the positives); the
detection score is `-d_out` (small logit margin = brittle). AUROC is scikit-learn's
`roc_auc_score`; AUPR its `average_precision_score` (the official notebook integrates the
precision-recall curve with `auc`, a trapezoid, which can differ slightly); FPR at 95%
TPR is read off `roc_curve` at the highest threshold whose TPR reaches 95% (the official
`get_FPR_at_TPR` on `det_curve` picks the same point).

Robust accuracy from a subset: attack n samples, take the logit-margin threshold `t` at 95%
TPR on them, then estimate robust accuracy on the whole set as the share of samples that
are correctly classified and have `d_out > t` (the official `get_rob_acc` with
`determine_lda(..., alpha_trh=0.95)`). The same threshold, calibrated on clean source data,
gives the brittle fraction of any batch: the share of samples with `d_out <= t`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tta.robust.margins import _numpy, logit_margin


def nonrobust(d_in: np.ndarray | torch.Tensor, eps: float) -> np.ndarray:
    """The positives: samples whose input margin is at most eps (bool array)."""
    return _numpy(d_in) <= eps


def _two_classes(labels: np.ndarray) -> None:
    if labels.all() or not labels.any():
        kind = "non-robust" if labels.all() else "robust"
        raise ValueError(
            f"every sample is {kind} at this eps: detection needs both robust and non-robust "
            "samples (change eps or attack more samples)"
        )


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> tuple[float, float]:
    """(FPR, score threshold) at the highest threshold whose TPR >= `tpr` (scikit-learn's
    `roc_curve`); a sample is flagged when its score >= the threshold."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=bool)
    _two_classes(labels)
    fprs, tprs, thresholds = roc_curve(labels, _numpy(scores), drop_intermediate=False)
    at = int(np.argmax(tprs >= tpr - 1e-12))
    return float(fprs[at]), float(thresholds[at])


def threshold_at_tpr(
    d_out: np.ndarray | torch.Tensor, is_nonrobust: np.ndarray, tpr: float = 0.95
) -> float:
    """Logit-margin threshold t flagging `tpr` of the non-robust samples (brittle iff
    `d_out <= t`): the ceil(tpr * P)-th smallest logit margin of the P non-robust samples,
    the point `fpr_at_tpr` picks; -inf (flag nothing) when no sample is non-robust."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    positives = np.sort(_numpy(d_out)[np.asarray(is_nonrobust, dtype=bool)])
    if positives.size == 0:
        return -math.inf
    return float(positives[math.ceil(tpr * positives.size - 1e-9) - 1])


def detection_metrics(
    d_in: np.ndarray | torch.Tensor,
    d_out: np.ndarray | torch.Tensor,
    eps: float,
    tpr: float = 0.95,
) -> dict[str, float]:
    """AUROC, AUPR, FPR@`tpr` (in %) of detecting `d_in <= eps` by the score `-d_out`, the
    threshold on `d_out`, and the share of non-robust samples. With only one kind of sample
    the three metrics are undefined: NaN."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = nonrobust(d_in, eps)
    scores = -_numpy(d_out)
    metrics = {"auroc": math.nan, "aupr": math.nan, f"fpr@{round(100 * tpr)}": math.nan}
    if labels.any() and not labels.all():
        metrics = {
            "auroc": 100.0 * float(roc_auc_score(labels, scores)),
            "aupr": 100.0 * float(average_precision_score(labels, scores)),
            f"fpr@{round(100 * tpr)}": 100.0 * fpr_at_tpr(labels, scores, tpr)[0],
        }
    metrics["threshold"] = threshold_at_tpr(d_out, labels, tpr)
    metrics["nonrobust"] = 100.0 * float(labels.mean())
    return metrics


def roc_points(d_in: np.ndarray | torch.Tensor, d_out: np.ndarray | torch.Tensor, eps: float):
    """(fpr, tpr) arrays of the ROC curve of `-d_out` detecting `d_in <= eps` (for plots);
    empty when only one kind of sample is present."""
    from sklearn.metrics import roc_curve

    labels = nonrobust(d_in, eps)
    if labels.all() or not labels.any():
        return np.array([]), np.array([])
    fprs, tprs, _ = roc_curve(labels, -_numpy(d_out))
    return fprs, tprs


def estimate_robust_accuracy(
    d_out: np.ndarray | torch.Tensor, correct: np.ndarray | torch.Tensor, threshold: float
) -> float:
    """Estimated robust accuracy (%): the share of samples correct with `d_out > threshold`."""
    d_out, correct = _numpy(d_out), _numpy(correct).astype(bool)
    if d_out.shape != correct.shape:
        raise ValueError(f"d_out {d_out.shape} and correct {correct.shape} differ in shape")
    return 100.0 * float((correct & (d_out > threshold)).mean())


def subset_estimate(
    d_in_subset: np.ndarray | torch.Tensor,
    d_out_subset: np.ndarray | torch.Tensor,
    eps: float,
    d_out_all: np.ndarray | torch.Tensor,
    correct_all: np.ndarray | torch.Tensor,
    tpr: float = 0.95,
) -> dict[str, float]:
    """Robust accuracy on the whole set from input margins of a subset only: the threshold
    at `tpr` on the subset, then `estimate_robust_accuracy` on all samples."""
    threshold = threshold_at_tpr(d_out_subset, nonrobust(d_in_subset, eps), tpr)
    return {
        "threshold": threshold,
        "estimate": estimate_robust_accuracy(d_out_all, correct_all, threshold),
        "n_subset": len(_numpy(d_in_subset)),
        "n_all": len(_numpy(d_out_all)),
    }


def brittle_fraction(logits: torch.Tensor, threshold: float) -> float:
    """Share of a batch whose logit margin is at most `threshold` (a threshold calibrated on
    clean source data with `threshold_at_tpr`): the brittleness of the batch's decisions."""
    return float((logit_margin(logits) <= threshold).float().mean())
