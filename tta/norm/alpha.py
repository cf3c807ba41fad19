"""`alpha`: BatchNorm on source statistics mixed with the test batch's, a prior of N samples.

Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020: with n the batch size and N the prior strength (`prior=16`, the
paper's choice for small batches),

    mean = N/(N+n) mean_source + n/(N+n) mean_batch
    var  = N/(N+n) var_source  + n/(N+n) var_batch

The batch statistics are computed without gradient, with the unbiased variance, as the
common benchmark code (mariodoebler/test-time-adaptation `AlphaBatchNorm`, which takes the
weight alpha = n/(N+n) directly: pass `alpha=` for a fixed weight instead of the prior).
The source statistics are the layer's running statistics, never changed.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.norm.base import BatchNorm, NormMode, replace_batchnorm
from tta.norm.stats import batch_stats, normalize
from tta.registry import NORMS


class AlphaBatchNorm(BatchNorm):
    """A BatchNorm that normalizes with a source/batch mixture of statistics."""

    def __init__(self, source: BatchNorm, prior: float | None, alpha: float | None) -> None:
        super().__init__(source.num_features, source.eps, source.momentum, source.affine, True)
        self.weight, self.bias = source.weight, source.bias
        self.running_mean, self.running_var = source.running_mean, source.running_var
        self.num_batches_tracked = source.num_batches_tracked
        self.prior, self.alpha = prior, alpha

    def batch_weight(self, n: int) -> float:
        """The weight of the batch's statistics: alpha, or n / (N + n)."""
        return self.alpha if self.alpha is not None else n / (self.prior + n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean_b, var_b = batch_stats(x, unbiased=x.numel() // x.shape[1] > 1)
        w = self.batch_weight(x.shape[0])
        mean = (1 - w) * self.running_mean + w * mean_b
        var = (1 - w) * self.running_var + w * var_b
        return normalize(x, mean, var, self.weight, self.bias, self.eps)


@NORMS.register("alpha")
class AlphaNorm(NormMode):
    """Source statistics as a prior on the test batch's (BN-alpha)."""

    name = "alpha"

    def __init__(self, prior: float = 16.0, alpha: float | None = None) -> None:
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"norm 'alpha': alpha is a weight in [0, 1], got {alpha!r}")
        if not float(prior) >= 0:
            raise ValueError(f"norm 'alpha': prior is a number of samples >= 0, got {prior!r}")
        self.prior = float(prior)
        self.alpha = None if alpha is None else float(alpha)

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        self.require_running_stats(model)

    def configure(self, model: nn.Module) -> None:
        replace_batchnorm(model, lambda bn: AlphaBatchNorm(bn, self.prior, self.alpha))

    def options(self) -> dict:
        return {"prior": self.prior, "alpha": self.alpha}
