"""`robust`: RoTTA's robust BatchNorm (Yuan et al., "Robust Test-Time Adaptation in Dynamic
Scenarios", CVPR 2023; code BIT-DA/RoTTA, `core/utils/bn_layers.py`, `RobustBN2d`).

Global statistics start at the source's and move towards each batch's with momentum
`momentum` (0.05, the paper's): mean <- (1 - m) mean + m mean_batch, likewise the variance
(biased batch variance); the batch is normalized with the updated statistics, through which
the gradient of the batch's mean and variance flows (as the official code); the stored
statistics are detached.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.norm.base import BatchNorm, NormMode, replace_batchnorm
from tta.norm.stats import batch_stats, normalize
from tta.registry import NORMS


class RobustBatchNorm(BatchNorm):
    """RoTTA's RobustBN, for BatchNorm1d/2d/3d."""

    def __init__(self, source: BatchNorm, momentum: float) -> None:
        super().__init__(source.num_features, source.eps, momentum, source.affine, True)
        self.weight, self.bias = source.weight, source.bias
        self.running_mean = source.running_mean.clone()
        self.running_var = source.running_var.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_b, var_b = batch_stats(x, unbiased=False)
        m = self.momentum
        mean = (1 - m) * self.running_mean + m * mean_b
        var = (1 - m) * self.running_var + m * var_b
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return normalize(x, mean, var, self.weight, self.bias, self.eps)


@NORMS.register("robust")
class RobustNorm(NormMode):
    """Source statistics moved towards each test batch's with a small momentum."""

    name = "robust"

    def __init__(self, momentum: float = 0.05) -> None:
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"norm 'robust': momentum must be in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        self.require_running_stats(model)

    def configure(self, model: nn.Module) -> None:
        replace_batchnorm(model, lambda bn: RobustBatchNorm(bn, self.momentum))

    def options(self) -> dict:
        return {"momentum": self.momentum}
