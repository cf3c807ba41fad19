"""Normalization statistics (`norm=`): what BatchNorm normalizes with while a model adapts.

Modes: `source` (running statistics), `batch` (the test batch's), `alpha` (source as a prior
on the batch's), `ema` (moving average of test statistics), `robust` (RoTTA's robust BN),
`window` (the last W test samples, for batch size 1). Importing this package registers them.
"""

from tta.norm import alpha, batch, ema, robust, source, window  # noqa: F401  (registers modes)
from tta.norm.base import NormMode

__all__ = ["NormMode"]
