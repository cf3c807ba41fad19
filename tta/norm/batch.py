"""BatchNorm on the current test batch's statistics ("BN adapt", Schneider et al., NeurIPS 2020).

The normalization axis: what BatchNorm normalizes with during adaptation. This module holds
the test-batch mode that TENT and most methods use; `tta.norm.window` the sliding window
for batch size 1.
"""

from __future__ import annotations

from torch import nn


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def require_batchnorm(model: nn.Module, needed_by: str) -> None:
    """Raise a clear error when a method that works through BatchNorm meets a model without it."""
    if not batchnorm_modules(model):
        raise ValueError(
            f"{needed_by} needs BatchNorm layers, but {type(model).__name__} has none. "
            "Use a model with BatchNorm, or a loss that does not rely on it with "
            "params='all' (e.g. loss='entropy', params='all')."
        )


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
