"""Adversarial robustness beside the core (it uses `tta`, `tta` never uses it).

Attacks (`pgd`, `apgd_ce`; AutoAttack through pyautoattack in `tta.robust.autoattack`) on
any model taking [0, 1] images, attacked in a stated state (`attack_state`); expected
robustness (`expected_robustness`); margin consistency (`logit_margin`, `input_margins`,
`kendall_tau`, `detection_metrics`, `subset_estimate`, the pseudo-margin and
`margin_consistency`); the pieces a brittleness monitor needs (`calibrate_threshold`,
`brittle_fraction`); an adversarially trained Fashion-MNIST ResNet-20 (`robust_model`).
"""

from tta.robust.apgd import apgd_ce
from tta.robust.common import AttackResult
from tta.robust.consistency import MarginConsistency, margin_consistency
from tta.robust.detection import (
    brittle_fraction,
    detection_metrics,
    estimate_robust_accuracy,
    fpr_at_tpr,
    subset_estimate,
    threshold_at_tpr,
)
from tta.robust.expected import ExpectedRobustness, budget_grid, expected_robustness
from tta.robust.margins import InputMargins, input_margins, kendall_tau, logit_margin
from tta.robust.monitor import BrittlenessThreshold, calibrate_threshold
from tta.robust.pgd import pgd
from tta.robust.pseudo_margin import PseudoMargin, fit_pseudo_margin
from tta.robust.state import attack_state
from tta.robust.train import RobustTrainConfig, robust_model

__all__ = [
    "AttackResult",
    "BrittlenessThreshold",
    "ExpectedRobustness",
    "InputMargins",
    "MarginConsistency",
    "PseudoMargin",
    "RobustTrainConfig",
    "apgd_ce",
    "attack_state",
    "brittle_fraction",
    "budget_grid",
    "calibrate_threshold",
    "detection_metrics",
    "estimate_robust_accuracy",
    "expected_robustness",
    "fit_pseudo_margin",
    "fpr_at_tpr",
    "input_margins",
    "kendall_tau",
    "logit_margin",
    "margin_consistency",
    "pgd",
    "robust_model",
    "subset_estimate",
    "threshold_at_tpr",
]
