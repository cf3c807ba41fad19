"""`norm`: test-batch BatchNorm statistics, no gradient step.

Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020 (the "BN" baseline of TENT's tables): every BatchNorm normalizes
with the statistics of the current test batch instead of the source running statistics.
"""

from __future__ import annotations

from tta.losses.base import Loss
from tta.registry import LOSSES


@LOSSES.register("norm")
class NormLoss(Loss):
    name = "norm"
    adapts = False
    default_norm = "batch"
