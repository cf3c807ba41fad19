"""`norm`: test-batch BatchNorm statistics, no gradient step.

Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020 (the "BN" baseline of TENT's tables): every BatchNorm normalizes
with the statistics of the current test batch instead of the source running statistics.
"""

from __future__ import annotations

from torch import nn

from tta.losses.base import Loss
from tta.norm.base import require_batchnorm
from tta.norm.batch import use_batch_statistics
from tta.norm.window import check_window, use_window_statistics
from tta.registry import LOSSES


@LOSSES.register("norm")
class NormLoss(Loss):
    name = "norm"
    adapts = False

    def __init__(self, bn_window: int | None = None) -> None:
        """`bn_window`: normalize with the last W samples' statistics (batch size 1)."""
        check_window(bn_window)
        self.bn_window = bn_window

    def check_model(self, model: nn.Module) -> None:
        require_batchnorm(model, "loss 'norm' (test-batch BatchNorm statistics)")

    def configure(self, model: nn.Module) -> None:
        model.eval()
        use_batch_statistics(model)
        if self.bn_window:
            use_window_statistics(model, self.bn_window)
