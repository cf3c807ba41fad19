"""`source`: the unadapted model, the baseline every method must beat."""

from __future__ import annotations

from tta.losses.base import Loss
from tta.registry import LOSSES


@LOSSES.register("source")
class SourceLoss(Loss):
    """No adaptation: the model in eval mode with its source running statistics."""

    name = "source"
    adapts = False
