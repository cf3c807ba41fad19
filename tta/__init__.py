"""tta: test-time adaptation for PyTorch classifiers.

import tta
adapted = tta.adapt(model, loss="tent")   # predicts and adapts online
logits = adapted(x)                        # x: float (B, C, H, W) in [0, 1]
adapted.reset()                            # back to the source weights
"""

from tta.api import adapt
from tta.engine import AdaptedModel
from tta.layers import list_layers as layers  # noqa: F401  (tta.layers(model))
from tta.registry import LAYER_SELECTORS, LOSSES, SAMPLE_FILTERS

__version__ = "0.1.0"
__all__ = ["adapt", "AdaptedModel", "LOSSES", "LAYER_SELECTORS", "SAMPLE_FILTERS", "__version__"]
