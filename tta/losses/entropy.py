"""`entropy`: mean Shannon entropy of the predictions, with no change to the model's layers.

The plain objective GALA (Sahoo et al., AAAI 2025) pairs with layer selection: it trains
whatever `params=` names (default `all`), and BatchNorm keeps its source running statistics,
so it also fits models without BatchNorm.
"""

from __future__ import annotations

import torch

from tta.functional import softmax_entropy
from tta.losses.base import Loss
from tta.registry import LOSSES


@LOSSES.register("entropy")
class EntropyLoss(Loss):
    name = "entropy"
    default_params = "all"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return softmax_entropy(logits).mean(0)
