"""`ttaug`: test-time augmentation, averaging the predictions over augmented copies.

The classic training-free baseline (Krizhevsky et al., NeurIPS 2012, averaging over crops
and flips), in the form MEMO compares against (Zhang, Levine & Finn, NeurIPS 2022,
zhangmarvin/memo): the model is never changed (`adapts = False`; eval mode, source BatchNorm
statistics); each image's prediction is the mean of the softmax over `n_augmentations`
independent AugMix copies of it, the augmentations MEMO adapts on (tta/losses/augmix.py).
The returned logits are log of that mean, so softmax and argmax of the output are the
averaged prediction. `include_original=True` adds the un-augmented image's softmax to the
average (the forward pass the engine runs anyway).

Cost: `n_augmentations` extra forward passes per batch (counted in `n_forward`).

Presets: the `cifar` family (B = 32, pad-and-crop, stream batch 200) and `imagenet` (B = 64,
random resized crop, batch 64), MEMO's augmentation settings; no optimizer runs. Layer
selectors do not apply (nothing is trained) and are refused.
"""

from __future__ import annotations

import torch

from tta.checks import require_images
from tta.context import LossContext
from tta.losses.augmix import augmix
from tta.losses.base import Loss
from tta.losses.memo import check_augmentations
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


def average_prediction(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the mean softmax over a list of (batch, classes) logits."""
    probabilities = torch.stack([t.float().softmax(1) for t in logits]).mean(0)
    return probabilities.clamp_min(1e-30).log()


@LOSSES.register("ttaug")
class TTAugLoss(Loss):
    """Softmax averaged over AugMix copies of each image; no weight changes."""

    name = "ttaug"
    adapts = False
    refuses_layer_selectors = True
    presets = {
        "cifar": cifar_adam(options={"n_augmentations": 32, "crop": "pad"}),
        "imagenet": imagenet_sgd(options={"n_augmentations": 64, "crop": "resized"}),
    }

    def __init__(
        self, n_augmentations: int = 32, crop: str = "pad", include_original: bool = False
    ) -> None:
        self.n_augmentations, self.crop = check_augmentations(n_augmentations, crop, "loss 'ttaug'")
        if not isinstance(include_original, bool):
            raise ValueError(
                f"loss 'ttaug': include_original must be True or False, got {include_original!r}"
            )
        self.include_original = include_original

    def check_model(self, model: torch.nn.Module) -> None:
        require_images(model, "loss 'ttaug'", "averages predictions over image augmentations")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss 'ttaug' averages predictions only and has no objective to minimize")

    @torch.no_grad()
    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log mean softmax over the augmented copies (and the image, if asked)."""
        predictions = [context.model(augmix(x, self.crop)) for _ in range(self.n_augmentations)]
        context.count_forward(self.n_augmentations)
        if self.include_original:
            predictions.append(logits)
        return average_prediction(predictions)
