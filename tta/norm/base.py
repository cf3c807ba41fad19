"""The interface of normalization modes, and the one helper that swaps BatchNorm layers.

A mode decides what every BatchNorm normalizes with while the model adapts. It changes the
model in place once, before `tta.adapt` snapshots it, so `reset()` restores the mode's state
(buffers) exactly. Modes that replace BatchNorm layers keep the affine parameters (same
objects, same names), so `params='norm'` and layer selectors see the same layers.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


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


class NormMode:
    """What BatchNorm normalizes with. `needs_batchnorm`: refuse models without BatchNorm."""

    name = "norm-mode"
    needs_batchnorm = True

    def check_model(self, model: nn.Module) -> None:
        """A clear error before any change when the model cannot run this mode."""
        if self.needs_batchnorm and not batchnorm_modules(model):
            raise ValueError(
                f"norm={self.name!r} needs BatchNorm layers, but {type(model).__name__} has "
                "none; use norm='source' (the model as it is), or a model with BatchNorm"
            )

    def require_running_stats(self, model: nn.Module) -> None:
        """For modes that start from the source running statistics: every BatchNorm has them."""
        if any(isinstance(m, BatchNorm) and m.running_mean is None for m in model.modules()):
            raise ValueError(
                f"norm {self.name!r} starts from the source running statistics, but a "
                "BatchNorm has none (track_running_stats=False); use norm='batch'"
            )

    def check_batch(self, batch_size: int) -> None:
        """Refuse a batch this mode cannot normalize (one image alone for `batch`)."""

    def configure(self, model: nn.Module) -> None:
        raise NotImplementedError

    def options(self) -> dict:
        """The mode's settings as they ran (for the protocol card)."""
        return {}


def replace_batchnorm(model: nn.Module, make: Callable[[BatchNorm], nn.Module]) -> int:
    """Replace every BatchNorm child of every module by `make(old)`; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BatchNorm):
                setattr(parent, name, make(child))
                replaced += 1
    return replaced
