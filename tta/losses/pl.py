"""`pl`: pseudo-labeling (Lee, "Pseudo-Label", ICML 2013 workshop) as a test-time loss.

The test-time form of the DomainBed TTA protocol (Iwasawa & Matsuo, "Test-Time Classifier
Adjustment Module", NeurIPS 2021; matsuolab/T3A `adapt_algorithms.py`, class `PseudoLabel`),
which the GALA paper (Sahoo et al., AAAI 2025) uses: take the argmax of the softmax as the
label of every sample whose top probability exceeds `threshold` (0.9, T3A's `beta`), and
minimize the cross-entropy averaged over those confident samples only. As there, every
parameter trains (`params='all'`) and BatchNorm keeps its source running statistics (T3A
runs the featurizer in eval mode while adapting).

When no sample is confident there is nothing to learn from: `backward` returns None and the
engine counts a skipped step (T3A would back-propagate the NaN of an empty mean). Counts over
the run: `n_confident`, `n_unconfident` (the latter also adds to `n_filtered_samples`).

Presets (`presets`, also for shot-im and shot): the GALA paper's continual CIFAR protocol
(batch 200) with Adam, the optimizer of the DomainBed TTA protocol it follows
(matsuolab/T3A); lr 1e-3 as TENT's CIFAR setting. No ImageNet-C setting exists: SGD 2.5e-4,
momentum 0.9, batch 64, the common ImageNet-C optimizer. Method options are the losses'
defaults (threshold 0.9, beta 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.context import LossContext
from tta.losses.base import Loss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


def check_threshold(threshold: float, who: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"{who}: threshold must be a probability in [0, 1), got {threshold!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"{who}: threshold must be a probability in [0, 1), got {threshold!r}")
    return float(threshold)


def confident_pseudo_labels(
    logits: torch.Tensor, threshold: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of samples whose top softmax probability > threshold, argmax labels)."""
    confidence, labels = logits.detach().softmax(1).max(1)
    return confidence > threshold, labels


def pseudo_label_loss(logits: torch.Tensor, threshold: float = 0.9) -> torch.Tensor | None:
    """Mean cross-entropy of the confident samples against their argmax; None if none is."""
    confident, labels = confident_pseudo_labels(logits, threshold)
    if not bool(confident.any()):
        return None
    return F.cross_entropy(logits[confident], labels[confident])


@LOSSES.register("pl")
class PseudoLabelLoss(Loss):
    name = "pl"
    grad_scaling = True  # its backward goes through LossContext.backward (float16-safe)
    default_params = "all"
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = check_threshold(threshold, "loss 'pl'")
        self.n_confident = 0
        self.n_unconfident = 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The pseudo-label loss; a differentiable zero when no sample is confident."""
        loss = pseudo_label_loss(logits, self.threshold)
        return logits.sum() * 0.0 if loss is None else loss

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        logits = logits if keep is None else logits[keep]
        confident, labels = confident_pseudo_labels(logits, self.threshold)
        n_confident = int(confident.sum())
        self.n_confident += n_confident
        self.n_unconfident += logits.shape[0] - n_confident
        context.count_filtered(logits.shape[0] - n_confident)
        if n_confident == 0:
            return None
        loss = F.cross_entropy(logits[confident], labels[confident])
        context.backward(loss)
        return loss.detach()

    def stats(self) -> dict[str, int]:
        return {"n_confident": self.n_confident, "n_unconfident": self.n_unconfident}
