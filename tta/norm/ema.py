"""`ema`: BatchNorm on a moving average of test statistics.

As the common benchmark code's `norm_ema` (mariodoebler/test-time-adaptation, `EMABatchNorm`
from Schneider et al.'s code): every batch first updates the running statistics with its own
(BatchNorm's update, momentum `momentum`, default PyTorch's 0.1, unbiased variance), then
normalizes with the updated running statistics. The running statistics start at the
source's. Deviation: the reference runs the whole model twice per batch (a train-mode pass
that only updates statistics, then an eval-mode pass); here each layer updates and then
normalizes in one pass, so a layer's statistics see its input as normalized by the layers
before it with their updated averages, not with batch statistics. One forward, not two.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.norm.base import BatchNorm, NormMode, replace_batchnorm
from tta.norm.stats import batch_stats, normalize
from tta.registry import NORMS


class EmaBatchNorm(BatchNorm):
    """Update the running statistics with the batch, then normalize with them."""

    def __init__(self, source: BatchNorm, momentum: float) -> None:
        super().__init__(source.num_features, source.eps, momentum, source.affine, True)
        self.weight, self.bias = source.weight, source.bias
        self.running_mean = source.running_mean.clone()
        self.running_var = source.running_var.clone()
        self.num_batches_tracked = source.num_batches_tracked.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean_b, var_b = batch_stats(x, unbiased=x.numel() // x.shape[1] > 1)
            self.running_mean.lerp_(mean_b, self.momentum)
            self.running_var.lerp_(var_b, self.momentum)
            self.num_batches_tracked.add_(1)
        return normalize(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)


@NORMS.register("ema")
class EmaNorm(NormMode):
    """Test statistics tracked by an exponential moving average."""

    name = "ema"

    def __init__(self, momentum: float = 0.1) -> None:
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"norm 'ema': momentum must be in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        self.require_running_stats(model)

    def configure(self, model: nn.Module) -> None:
        replace_batchnorm(model, lambda bn: EmaBatchNorm(bn, self.momentum))

    def options(self) -> dict:
        return {"momentum": self.momentum}
