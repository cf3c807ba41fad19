"""BatchNorm on the current test batch's statistics ("BN adapt", Schneider et al., NeurIPS 2020).

The normalization axis: what BatchNorm normalizes with during adaptation. This module holds
the test-batch mode that TENT and most methods use; `tta.norm.window` the sliding window
for batch size 1.
"""

from __future__ import annotations

from torch import nn

from tta.norm.base import NormMode, batchnorm_modules
from tta.registry import NORMS


def use_batch_statistics(model: nn.Module) -> None:
    """Make every BatchNorm normalize with the current batch's statistics, as TENT's code does.

    Running statistics are dropped (`track_running_stats=False`, buffers set to None), so the
    layer uses batch statistics in train and in eval mode alike.
    """
    for module in batchnorm_modules(model):
        module.train()
        module.track_running_stats = False
        module.running_mean = None
        module.running_var = None


@NORMS.register("batch")
class BatchStatsNorm(NormMode):
    """Every BatchNorm normalizes with the current test batch's statistics."""

    name = "batch"

    def check_batch(self, batch_size: int) -> None:
        if batch_size == 1:
            raise ValueError(
                "norm='batch' with a batch of 1 image normalizes every image by its own "
                "statistics, which gives chance accuracy; use norm='window' (statistics of the "
                "last 64 test samples) or batches of more images"
            )

    def configure(self, model: nn.Module) -> None:
        use_batch_statistics(model)
