"""`rmt`: Döbler et al., "Robust Mean Teacher for Continual and Gradual Test-Time
Adaptation", CVPR 2023.

As the official code (mariodoebler/test-time-adaptation, `classification/methods/rmt.py`,
`utils/losses.py` `SymmetricCrossEntropy`, `conf.py` RMT/CONTRAST/M_TEACHER options,
`cfgs/{cifar10_c,cifar100_c,imagenet_c}/rmt.yaml`):

- A mean teacher: an exponential moving average of the student (the adapted model) over
  every parameter, teacher <- alpha teacher + (1 - alpha) student after each update
  (`alpha=0.999`, M_TEACHER.MOMENTUM). BatchNorm normalizes with the test batch's statistics
  (`default_norm="batch"`) and every parameter trains (`default_params="all"`).
- Self-training with the symmetric cross-entropy SCE(x, t) = -1/2 sum softmax(t) log
  softmax(x) - 1/2 sum softmax(x) log softmax(t), averaged over the test image and its
  CoTTA augmentation (`cotta_augment`, the official `get_tta_transforms`):
  1/2 SCE(student(x), teacher(x)) + 1/2 SCE(student(aug x), teacher(x)).
- Contrastive term with the source prototypes (tta/losses/prototypes.py): each test image's
  nearest source prototype, its feature and its augmentation's feature are positives.
- Source replay: cross-entropy of the student on a labelled source batch per step
  (`lambda_ce_src=1`; 0 is the official source-free variant).
- Warm-up before adaptation: `warmup_samples // source_batch_size` steps (50000 // 200 = 250
  for CIFAR) of 1/2-symmetric cross-entropy between student and teacher on source batches,
  the learning rate rising linearly to its final value, the teacher updated after each step.
- Loss: lambda_ce_trg * self-training + lambda_cont * contrastive + lambda_ce_src * replay
  (all 1). Predictions returned: student logits + teacher logits of the test batch, from
  before the update (the official ensemble).

Source data (`source_data`, see tta/losses/prototypes.py for the forms it takes): the
prototypes, the replay and the warm-up draw on the same pool of labelled source images
(`num_samples=10000` of them; the official uses the whole source training set, up to 100000
images for the prototypes), reshuffled each time it has been gone through, as the official
loader. tta-run passes the benchmark's source split. Without `source_data`, RMT refuses to
start unless everything that needs it is off: `lambda_ce_src=0` (no replay),
`lambda_cont=0` (no prototypes, no contrastive term) and `warmup_samples=0` (no warm-up);
what is left is a mean teacher with symmetric cross-entropy on the image and its
augmentation.

Presets (`presets`): CIFAR Adam 1e-3, batch 200; ImageNet SGD 0.01 momentum 0.9, batch 64
(the official configs), with the projector's optimizer (`aux_optimizer`, `aux_lr`) and
`source_batch_size` set to match.

Deviations, all deliberate:
- The warm-up and the projector use an optimizer of their own (`aux_optimizer`, `aux_lr`)
  because the engine's optimizer exists only after `configure`, where the warm-up runs; the
  official uses its one optimizer for everything, so its warm-up's moment estimates carry
  into adaptation, ours do not. The warm-up trains every parameter (the official trainable
  set), whatever `params` the engine gets.
- Source images never move the normalization statistics of a stateful norm mode (`robust`,
  `ema`, `window`): those passes restore the buffers after them. With the default `batch`
  mode there is nothing to restore, as in the official code.
- The pool of source images is `num_samples` large (see above); a class without a source
  image has no prototype. The hue jitter of the augmentation is left out (see cotta.py).
- A sample filter given to the engine restricts the self-training and contrastive terms to
  the kept images.

Mixed precision (`amp`): bfloat16 and float16 both run; under float16 the loss goes through
the engine's gradient scaler and the projector's gradients are unscaled with it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from tta.checks import require_images
from tta.context import LossContext
from tta.losses.buffers import frozen_buffers
from tta.losses.cotta import ema_update, soft_cross_entropy
from tta.losses.lame import last_linear
from tta.losses.prototype_loss import PrototypeContrastLoss, check_int
from tta.losses.prototypes import FeatureTap, SourceData
from tta.progress import progress
from tta.registry import LOSSES


def symmetric_cross_entropy(x: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample -1/2 sum softmax(t) log softmax(x) - 1/2 sum softmax(x) log softmax(t)."""
    return 0.5 * soft_cross_entropy(x, teacher) + 0.5 * soft_cross_entropy(teacher, x)


class SourceBatches:
    """Endless batches of the labelled source pool, reshuffled after each pass."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self._order: list[torch.Tensor] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._order:
            perm = torch.randperm(len(self.images)).to(self.images.device)
            self._order = list(perm.split(self.batch_size))
        index = self._order.pop(0)
        return self.images[index], self.labels[index]


@LOSSES.register("rmt")
class RMTLoss(PrototypeContrastLoss):
    """Robust mean teacher: SCE self-training, prototype contrast, source replay, warm-up."""

    name = "rmt"
    default_params = "all"
    reference_name = "teacher"

    def __init__(
        self,
        source_data: SourceData | None = None,
        num_samples: int = PrototypeContrastLoss.default_num_samples,
        lambda_ce_trg: float = 1.0,
        lambda_cont: float = 1.0,
        lambda_ce_src: float = 1.0,
        alpha: float = 0.999,
        warmup_samples: int = 50000,
        temperature: float = 0.1,
        projection_dim: int = 128,
        source_batch_size: int = 200,
        aux_optimizer: str = "adam",
        aux_lr: float = 1e-3,
    ) -> None:
        super().__init__(
            source_data,
            num_samples,
            lambda_ce_trg,
            lambda_cont,
            temperature,
            projection_dim,
            source_batch_size,
            aux_optimizer,
            aux_lr,
        )
        self.warmup_samples = check_int(warmup_samples, "warmup_samples", "loss 'rmt'", 0)
        if not lambda_ce_src >= 0:
            raise ValueError(f"loss 'rmt': lambda_ce_src must be >= 0, got {lambda_ce_src!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"loss 'rmt': alpha must be in [0, 1], got {alpha!r}")
        self.lambda_ce_src = lambda_ce_src
        self.alpha = alpha
        self.teacher: nn.Module | None = None
        self.source: SourceBatches | None = None
        self._teacher_state: dict[str, torch.Tensor] = {}
        self._prediction: torch.Tensor | None = None

    @property
    def needs_source(self) -> bool:
        return self.lambda_ce_src > 0 or self.lambda_cont > 0 or self.warmup_samples > 0

    def check_model(self, model: nn.Module) -> None:
        require_images(model, "loss 'rmt'", "trains on augmented images")
        last_linear(model)
        if self.needs_source and self.source_data is None:
            raise ValueError(
                "loss 'rmt' needs labelled clean source images for its source prototypes, "
                "source replay and warm-up: pass source_data=(images, labels) (floats (N, C, "
                "H, W) in the model's input range, integer labels (N,)), as tta-run does; or "
                "run the source-free variant with lambda_ce_src=0, lambda_cont=0, "
                "warmup_samples=0 (a mean teacher with symmetric cross-entropy only)"
            )

    def configure(self, model: nn.Module) -> None:
        self.check_model(model)
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.tap = FeatureTap(model)  # on the student only: the teacher was copied first
        if self.needs_source:
            images, labels = self.labelled_source(model)
            self.source = SourceBatches(images, labels, self.source_batch_size)
            if self.lambda_cont > 0:
                self.contrast.fit(model, self.tap, images, labels, self.source_batch_size)
            self.warm_up(model)
        self._teacher_state = copy.deepcopy(self.teacher.state_dict())

    def warm_up(self, model: nn.Module) -> None:
        """The official warm-up on source batches (see the module docstring)."""
        steps = self.warmup_samples // self.source_batch_size
        if steps == 0:
            return
        params = [p for p in model.parameters() if p.is_floating_point()]
        flags = [p.requires_grad for p in params]
        if self.aux_optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=self.aux_lr, betas=(0.9, 0.999))
        else:
            optimizer = torch.optim.SGD(params, lr=self.aux_lr, momentum=0.9)
        try:
            for p in params:
                p.requires_grad_(True)
            with torch.enable_grad(), frozen_buffers(model):
                for i in progress(range(steps), desc="rmt warm-up on source", unit="step"):
                    for group in optimizer.param_groups:
                        group["lr"] = self.aux_lr * (i + 1) / steps
                    images, _ = self.source.next()
                    with torch.no_grad():
                        target = self.teacher(images)
                    loss = symmetric_cross_entropy(model(images), target).mean(0)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    ema_update(self.teacher, model, self.alpha)
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
                p.grad = None
        self.tap.features = None

    def reset(self) -> None:
        """Teacher and projector back to their state after the warm-up (official reset)."""
        if self.teacher is not None:
            self.teacher.load_state_dict(self._teacher_state)
        self.contrast.reset()
        self._prediction = None

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        model = context.model
        features, features_aug, logits_aug, teacher = self.views(context, x, self.teacher)
        self._prediction = logits.detach() + teacher
        if keep is not None:
            features, features_aug = features[keep], features_aug[keep]
            logits, logits_aug, teacher = logits[keep], logits_aug[keep], teacher[keep]
        self_training = (
            0.5 * symmetric_cross_entropy(logits, teacher)
            + 0.5 * symmetric_cross_entropy(logits_aug, teacher)
        ).mean(0)
        loss = self.add_contrast(self.lambda_ce_trg * self_training, features, features_aug)
        if self.lambda_ce_src > 0:
            images, labels = self.source.next()
            with frozen_buffers(model):
                source_logits = model(images)
            self.tap.features = None
            context.count_forward()
            loss = loss + self.lambda_ce_src * F.cross_entropy(source_logits, labels)
        return self.backward_all(context, loss)

    def after_update(self, context: LossContext) -> None:
        """The projector's step, then the teacher's moving average (official order)."""
        super().after_update(context)
        ema_update(self.teacher, context.model, self.alpha)

    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Student + teacher logits of this batch, from before the update."""
        prediction, self._prediction = self._prediction, None
        if prediction is None:
            with torch.no_grad():
                prediction = logits + self.teacher(x)
            context.count_forward()
        return prediction
