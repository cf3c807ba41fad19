"""`shot-im` and `shot`: Liang et al., "Do We Really Need to Access the Source Data? Source
Hypothesis Transfer for Unsupervised Domain Adaptation", ICML 2020 (tim-learn/SHOT).

`shot-im` is SHOT's information maximization: the mean per-sample entropy minus the entropy
of the batch-mean prediction, `mean_i H(p_i) - H(mean_i p_i)`, so predictions become confident
and, over the batch, diverse. The marginal entropy uses log(p + 1e-5) as the official code
(`object/image_target.py`, `args.epsilon`) and T3A's `SHOTIM` do; the per-sample entropy is
the exact softmax entropy (as T3A).

`shot` adds `beta * pl` with `beta=0.1` and the confidence-thresholded pseudo-labels of
tta/losses/pl.py (`threshold=0.9`). This is the test-time SHOT of the DomainBed TTA protocol
(matsuolab/T3A `adapt_algorithms.py`, class `SHOT`: beta 0.9, theta 0.1) and of the GALA
paper (Sahoo et al., AAAI 2025), not SHOT's original pseudo-labels: the official SHOT labels
the whole target set offline by weighted k-means clustering of features (`obtain_label`,
`cls_par=0.3`), which needs the full target set and is not an online per-batch method. A
batch with no confident sample gets the information-maximization term alone.

As in the GALA paper these update all layers (`params='all'`) and BatchNorm keeps its source
running statistics (T3A adapts with the featurizer in eval mode). The official SHOT and T3A's
SHOT freeze the classifier head (the "source hypothesis"); pass e.g. a list of the
feature-extractor parameter names as `params=` for that.

Presets (`presets`): as pl's (tta/losses/pl.py, which gives the sources); shot inherits
shot-im's.
"""

from __future__ import annotations

import torch

from tta.functional import softmax_entropy
from tta.losses.base import Loss
from tta.losses.pl import check_threshold, pseudo_label_loss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES

EPSILON = 1e-5  # inside the log of the marginal entropy, as SHOT's `args.epsilon`


def information_maximization(logits: torch.Tensor) -> torch.Tensor:
    """mean_i H(p_i) - H(mean_i p_i), p_i = softmax(logits_i)."""
    marginal = logits.softmax(1).mean(0)
    diversity = -(marginal * torch.log(marginal + EPSILON)).sum()
    return softmax_entropy(logits).mean(0) - diversity


@LOSSES.register("shot-im")
class ShotIMLoss(Loss):
    name = "shot-im"
    default_params = "all"
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return information_maximization(logits)


@LOSSES.register("shot")
class ShotLoss(ShotIMLoss):
    name = "shot"

    def __init__(self, beta: float = 0.1, threshold: float = 0.9) -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or beta < 0:
            raise ValueError(f"loss 'shot': beta must be a number >= 0, got {beta!r}")
        self.beta = float(beta)
        self.threshold = check_threshold(threshold, "loss 'shot'")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        loss = information_maximization(logits)
        pseudo = pseudo_label_loss(logits, self.threshold)
        return loss if pseudo is None else loss + self.beta * pseudo
