"""`santa`: Chakrabarty et al., "SANTA: Source Anchoring Network and Target Alignment for
Continual Test Time Adaptation", TMLR 2023.

The official code lives in mariodoebler/test-time-adaptation
(`classification/methods/santa.py`, `utils/losses.py` `AugCrossEntropy`,
`cfgs/{cifar10_c,cifar100_c,imagenet_c}/santa.yaml`; goirik-chakrabarty/SANTA points there,
its fork goirik-chakrabarty/test-time-adaptation holds the same method). As that code:

- Source anchoring: the anchor is a frozen copy of the source model as configured for
  adaptation (BatchNorm on the test batch's statistics, `default_norm="batch"`); only the
  norm layers' affine parameters train (`default_params="norm"`).
- Self-training against the anchor over the test image and its augmentation
  (`cotta_augment`, the official `get_tta_transforms`):
  -1/2 sum softmax(student(x)) log softmax(anchor(x))
  -1/2 sum softmax(student(aug x)) log softmax(anchor(x)),
  averaged over the batch: the gradient flows through the student's probabilities, the
  anchor's log-probabilities are fixed (the official `AugCrossEntropy`, alpha 0.5).
- Target alignment: the contrastive term with the source prototypes of RMT
  (tta/losses/prototypes.py: nearest prototype, feature and augmented feature are
  positives; projector, temperature 0.1).
- Loss: lambda_ce_trg * self-training + lambda_cont * contrastive (both 1). Predictions
  returned: the student's logits of the test batch, from before the update.

Defaults and presets (`presets`): CIFAR Adam 1e-3, batch 200; ImageNet SGD 0.01 momentum 0.9,
batch 64 (the official configs), with the projector's optimizer (`aux_optimizer`,
`aux_lr`) and `source_batch_size` set to match.

Source data (`source_data`, the forms of tta/losses/prototypes.py): labelled source images
for the prototypes only (`num_samples=10000`; the official uses up to 100000). tta-run passes
the benchmark's source split. Without it, SANTA refuses to start unless `lambda_cont=0`,
which leaves the anchored self-training alone.

Deviations, all deliberate: the projector has its own optimizer (`aux_optimizer`, `aux_lr`;
the official adds it to the model's optimizer, same kind and lr); the prototype passes do not
move the statistics of a stateful norm mode; a class without a source image has no
prototype; a sample filter given to the engine restricts the loss to the kept images; the hue
jitter of the augmentation is left out (see cotta.py).

Mixed precision (`amp`): bfloat16 and float16 both run; under float16 the loss goes through
the engine's gradient scaler and the projector's gradients are unscaled with it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tta.checks import require_images
from tta.context import LossContext
from tta.losses.cotta import soft_cross_entropy
from tta.losses.lame import last_linear
from tta.losses.prototype_loss import PrototypeContrastLoss
from tta.losses.prototypes import FeatureTap
from tta.registry import LOSSES


def anchored_cross_entropy(
    x: torch.Tensor, x_aug: torch.Tensor, anchor: torch.Tensor
) -> torch.Tensor:
    """Per-sample -1/2 sum softmax(x) log softmax(a) - 1/2 sum softmax(x_aug) log softmax(a)."""
    return 0.5 * soft_cross_entropy(anchor, x) + 0.5 * soft_cross_entropy(anchor, x_aug)


@LOSSES.register("santa")
class SANTALoss(PrototypeContrastLoss):
    """Source-anchored self-training on augmentations plus the prototype contrastive term."""

    name = "santa"
    default_params = "norm"
    reference_name = "anchor model"
    anchor: nn.Module | None = None  # the frozen source copy, made in `configure`

    def check_model(self, model: nn.Module) -> None:
        require_images(model, "loss 'santa'", "trains on augmented images")
        last_linear(model)
        if self.lambda_cont > 0 and self.source_data is None:
            raise ValueError(
                "loss 'santa' needs labelled clean source images for its source prototypes: "
                "pass source_data=(images, labels) (floats (N, C, H, W) in the model's input "
                "range, integer labels (N,)), as tta-run does; or set lambda_cont=0 "
                "(anchored self-training only, no contrastive term)"
            )

    def configure(self, model: nn.Module) -> None:
        self.check_model(model)
        self.anchor = copy.deepcopy(model).requires_grad_(False)
        self.tap = FeatureTap(model)  # on the student only: the anchor was copied first
        if self.lambda_cont > 0:
            images, labels = self.labelled_source(model)
            self.contrast.fit(model, self.tap, images, labels, self.source_batch_size)

    def reset(self) -> None:
        """The projector back to its initial state (the anchor never changes)."""
        self.contrast.reset()

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        features, features_aug, logits_aug, anchor = self.views(context, x, self.anchor)
        if keep is not None:
            features, features_aug = features[keep], features_aug[keep]
            logits, logits_aug, anchor = logits[keep], logits_aug[keep], anchor[keep]
        loss = self.lambda_ce_trg * anchored_cross_entropy(logits, logits_aug, anchor).mean(0)
        loss = self.add_contrast(loss, features, features_aug)
        return self.backward_all(context, loss)
