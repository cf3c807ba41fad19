"""`memo`: Zhang, Levine & Finn, "MEMO: Test Time Robustness via Adaptation and
Augmentation", NeurIPS 2022 (official code: zhangmarvin/memo, `cifar-10-exps/test_calls/
test_adapt.py`, `imagenet-exps/test_calls/test_adapt.py`, `imagenet-exps/utils/
adapt_helpers.py`, augmentations in `*/utils/third_party.py`).

Episodic, one test point at a time (`per_sample = True`: the engine splits every batch and
restores the source weights, buffers and optimizer state before each point, as the official
loop reloads the checkpoint before each image):

- B = `n_augmentations` AugMix copies of the point (tta/losses/augmix.py), one forward pass.
- Loss: the marginal entropy H(p_bar), p_bar = (1/B) sum_b softmax(f(x_b)), computed as the
  official `marginal_entropy`: log p_bar = logsumexp_b(log_softmax) - log B, clamped below
  at the dtype's smallest number, H = -sum_c p_bar_c log p_bar_c.
- `steps` (official `niter`, 1) gradient steps on it; every parameter trains
  (`default_params = "all"`, the official optimizer gets `net.parameters()`).
- Prediction: the adapted model on the point itself, after the update (the official
  `test_single`), so each point costs three forward passes (the engine's on the point, the
  augmented batch, the prediction) and one backward. After a call the model holds the last
  point's adapted weights, as the official loop leaves it: `predict()` (and the harness's
  forgetting measure) see those, not the source.

BatchNorm (`default_norm = "source"`): the official CIFAR model is a GroupNorm ResNet-26
run in eval mode. The official ImageNet BatchNorm ResNet-50 normalizes with the source
statistics mixed with the current batch's (the augmented copies when adapting, the point
alone when predicting) at a fixed weight 1/(N+1) on the batch for prior strength N = 16:
that is `norm="alpha"` with `norm_options={"alpha": memo_bn_alpha(16)}` (= 1/17), which
`prior_strength=16` makes the loss's default (`--loss-option prior_strength=16`; an
explicit `norm=` wins).

Defaults and presets: `cifar` (official CIFAR-10): SGD lr 0.005, no momentum, B = 32,
niter 1; `imagenet` (official ResNet-50): SGD lr 0.00025, no momentum, no weight decay,
B = 64, `crop="resized"` (RandomResizedCrop pre-augmentation), `prior_strength=16`. The
stream batch size of the presets (200 / 64) only sets how many points arrive per call.

Deviations: the optimizer state is restored with the weights before each point (the
official loop keeps one optimizer across points; with its momentum-free SGD that state is
empty, with its AdamW for RVT/ResNeXt it is not); AugMix is the tensor re-statement
described in tta/losses/augmix.py. With a layer selector the selector restarts at every
point (GALA's first step of a window updates every layer, so it only selects from the
second of `steps`).
"""

from __future__ import annotations

import math

import torch

from tta.checks import require_images
from tta.context import LossContext
from tta.losses.augmix import CROPS, augmix
from tta.losses.base import Loss
from tta.presets import Preset, imagenet_sgd
from tta.registry import LOSSES


def memo_bn_alpha(prior_strength: float = 16.0) -> float:
    """The batch-statistics weight of MEMO's BatchNorm prior: 1 / (N + 1) (official
    `prior = N / (N + 1)` on the source statistics)."""
    return 1.0 / (float(prior_strength) + 1.0)


def marginal_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H(mean_b softmax(logits_b)) over the rows, and log of that mean (official formula)."""
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = log_probs.logsumexp(dim=0) - math.log(logits.shape[0])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg * avg.exp()).sum(dim=-1), avg


def check_augmentations(n: object, crop: object, who: str) -> tuple[int, str]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{who}: n_augmentations must be an integer >= 1, got {n!r}")
    if crop not in CROPS:
        raise ValueError(f"{who}: crop must be one of {', '.join(CROPS)}, got {crop!r}")
    return n, crop


@LOSSES.register("memo")
class MEMOLoss(Loss):
    """Marginal entropy over AugMix copies of one test point, adapted from the source."""

    name = "memo"
    default_params = "all"
    per_sample = True  # the engine adapts each point alone, from the source
    grad_scaling = True  # every backward goes through LossContext.backward (float16-safe)
    scores_logits_alone = False  # the objective needs the images
    presets = {
        "cifar": Preset(
            optimizer="sgd",
            lr=0.005,
            batch_size=200,
            momentum=0.0,
            options={"n_augmentations": 32, "crop": "pad"},
        ),
        "imagenet": imagenet_sgd(
            momentum=0.0,
            options={"n_augmentations": 64, "crop": "resized", "prior_strength": 16},
        ),
    }

    def __init__(
        self, n_augmentations: int = 32, crop: str = "pad", prior_strength: float | None = None
    ) -> None:
        self.n_augmentations, self.crop = check_augmentations(n_augmentations, crop, "loss 'memo'")
        self.prior_strength = prior_strength
        if prior_strength is not None:
            number = isinstance(prior_strength, int | float) and not isinstance(
                prior_strength, bool
            )
            if not number or prior_strength < 0:
                raise ValueError(
                    f"loss 'memo': prior_strength must be a number >= 0, got {prior_strength!r}"
                )
            self.default_norm = "alpha"  # the official BatchNorm prior, see the docstring
            self.default_norm_options = {"alpha": memo_bn_alpha(prior_strength)}

    def check_model(self, model: torch.nn.Module) -> None:
        require_images(model, "loss 'memo'", "adapts on augmented copies of each image")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The marginal entropy of the predictions on augmented copies of one point."""
        return marginal_entropy(logits)[0]

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        copies = augmix(x.expand(self.n_augmentations, *x.shape[1:]), self.crop)
        loss = self(context.model(copies))
        context.count_forward()
        context.backward(loss)
        return loss.detach()

    @torch.no_grad()
    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The adapted model's logits on the point itself (after the update)."""
        context.count_forward()
        return context.model(x)
