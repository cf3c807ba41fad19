"""`source`: BatchNorm normalizes with the source model's running statistics, unchanged."""

from __future__ import annotations

from torch import nn

from tta.norm.base import BatchNorm, NormMode
from tta.registry import NORMS


@NORMS.register("source")
class SourceNorm(NormMode):
    """The model's own running statistics (BatchNorm in eval mode, never updated)."""

    name = "source"
    needs_batchnorm = False

    def configure(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, BatchNorm):
                module.eval()
