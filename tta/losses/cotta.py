"""`cotta`: Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022.

As the official code (qinenergy/cotta, `cifar/cotta.py`, `cifar/cfgs/cifar10/cotta.yaml`):

- Three networks: the student (the adapted model), a teacher that is an exponential moving
  average of the student, and a frozen anchor (the source model). Teacher and anchor are
  copies made in `configure`, after BatchNorm is switched to batch statistics, so they
  normalize with the current batch's statistics too, as the official copies do.
- Pseudo-label: when the anchor's mean max-probability on the batch is below `ap`, the
  teacher's logits averaged over `n_augmentations=32` augmented copies of the batch,
  otherwise the teacher's logits on the batch itself.
- Student loss: cross-entropy to the teacher's soft prediction,
  -sum_c softmax(teacher)_c log softmax(student)_c, averaged over the batch
  (`symmetric=True`: the symmetric version of the official ImageNet code).
- After each update: teacher <- `alpha` teacher + (1 - alpha) student, over every parameter
  (`MT=0.999`), then stochastic restore: each element of each trainable tensor goes back to
  its source value with probability `rst` (`RST=0.01`).
- Predictions returned: the pseudo-label logits (teacher, augmentation-averaged or not),
  computed before the update, as the official `forward_and_adapt` returns `outputs_ema`.
- Every parameter trains (`default_params = "all"`).

Defaults: CIFAR-10 `ap=0.92`, `alpha=0.999`, `rst=0.01`, Adam lr 1e-3 (betas 0.9/0.999,
no weight decay), batch 200. CIFAR-100: `ap=0.72`, otherwise the same. ImageNet (official
`imagenet/cotta.py`): `ap=0.1`, `rst=0.001`, `alpha=0.999`, symmetric cross-entropy, SGD lr
0.01 momentum 0.9 Nesterov, batch 64.

Presets (`presets`): those settings, from the qinenergy/cotta configs (CIFAR-10 for the
`cifar` family, `ap` 0.72 on cifar100-c). Deviation: the official ImageNet SGD is Nesterov;
ours is plain momentum.

Augmentations (`cotta_augment`, torch ops on [0, 1] images, one random draw per call shared
by the whole batch, as torchvision transforms applied to a batch tensor): in random order
brightness x U(0.6, 1.4), contrast U(0.7, 1.3), saturation U(0.5, 1.5) (3-channel images
only) and gamma U(0.7, 1.3); an affine map with rotation U(-15, 15) degrees, scale
U(0.9, 1.1) and translation up to 1/8 of the image size, edge pixels extending the border
(the official pad-by-half, `translate=1/16` of the padded image, centre crop); Gaussian blur
(5x5, sigma U(0.001, 0.5)); horizontal flip with probability 0.5; Gaussian noise of std
0.005; clipping to [0, 1]. Left out: the hue jitter (U(-0.06, 0.06)), which needs an RGB-HSV
round trip; the official translation is rounded to whole pixels, ours is not.

Forwards of the teacher and anchor are counted as forward passes (`n_forward`). Teacher and anchor
live on the model's device at `tta.adapt` time.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from tta.checks import require_images
from tta.context import LossContext
from tta.losses.base import Loss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (ITU-R 601-2, as torchvision), or the image itself if 1-channel."""
    if x.shape[1] != 3:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def color_jitter(x: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and gamma jitter in a random order (official ranges)."""
    for op in torch.randperm(4).tolist():
        if op == 0:
            x = (x * _uniform(0.6, 1.4)).clamp(0, 1)
        elif op == 1:
            factor = _uniform(0.7, 1.3)
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (factor * x + (1 - factor) * mean).clamp(0, 1)
        elif op == 2 and x.shape[1] == 3:
            factor = _uniform(0.5, 1.5)
            x = (factor * x + (1 - factor) * _gray(x)).clamp(0, 1)
        elif op == 3:
            x = x.clamp(1e-8, 1).pow(_uniform(0.7, 1.3)).clamp(0, 1)
    return x


def random_affine(x: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Rotation +-15 degrees, scale 0.9-1.1, shift up to 1/8 of the size; edges extend
    (`padding_mode="reflection"`: mirrored, as ROID's reflect padding)."""
    angle = math.radians(_uniform(-15, 15))
    scale = _uniform(0.9, 1.1)
    shift = torch.empty(2).uniform_(-0.25, 0.25)  # normalized coordinates span 2 per image
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]])
    theta[:, 2] = -theta[:, :2] @ shift
    grid = F.affine_grid(theta.to(x).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Separable Gaussian blur, sigma U(0.001, 0.5), reflected borders (torchvision's)."""
    sigma = _uniform(0.001, 0.5)
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    pad = kernel_size // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    out = F.pad(x, (pad, pad, pad, pad), mode=mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def cotta_augment(x: torch.Tensor, noise_std: float = 0.005) -> torch.Tensor:
    """One random CoTTA augmentation of a batch of [0, 1] images (see the module docstring)."""
    x = color_jitter(x.clamp(0, 1))
    x = gaussian_blur(random_affine(x))
    if _uniform(0, 1) < 0.5:
        x = x.flip(-1)
    return (x + noise_std * torch.randn_like(x)).clamp(0, 1)


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum_c softmax(teacher)_c log softmax(student)_c."""
    return -(teacher.softmax(1) * student.log_softmax(1)).sum(1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.copy_(alpha * t + (1 - alpha) * s)


@torch.no_grad()
def stochastic_restore(params: list[tuple[nn.Parameter, torch.Tensor]], rst: float) -> None:
    """Each element of each (parameter, source) pair returns to its source value w.p. `rst`."""
    for param, source in params:
        mask = torch.rand_like(param) < rst
        param.copy_(torch.where(mask, source, param))


@LOSSES.register("cotta")
class CoTTALoss(Loss):
    scores_logits_alone = False  # the objective needs the teacher's pseudo-labels
    """Mean-teacher cross-entropy with augmentation-averaged pseudo-labels and restore."""

    name = "cotta"
    grad_scaling = True  # its backward goes through LossContext.backward (float16-safe)
    default_params = "all"
    default_norm = "batch"
    presets = {
        "cifar": cifar_adam(
            options={"ap": 0.92, "rst": 0.01, "alpha": 0.999},
            benchmark_options={"cifar100-c": {"ap": 0.72}},
        ),
        "imagenet": imagenet_sgd(
            lr=0.01, options={"ap": 0.1, "rst": 0.001, "alpha": 0.999, "symmetric": True}
        ),
    }

    def __init__(
        self,
        ap: float = 0.92,
        alpha: float = 0.999,
        rst: float = 0.01,
        n_augmentations: int = 32,
        symmetric: bool = False,
    ) -> None:
        if not 0 <= alpha <= 1 or not 0 <= rst <= 1:
            raise ValueError(f"alpha and rst must be in [0, 1], got alpha={alpha}, rst={rst}")
        if n_augmentations < 1:
            raise ValueError(f"n_augmentations must be >= 1, got {n_augmentations}")
        self.ap = ap
        self.alpha = alpha
        self.rst = rst
        self.n_augmentations = n_augmentations
        self.symmetric = symmetric
        self.teacher: nn.Module | None = None
        self.anchor: nn.Module | None = None
        self._prediction: torch.Tensor | None = None

    def check_model(self, model: nn.Module) -> None:
        require_images(model, "loss 'cotta'", "averages predictions over image augmentations")

    def configure(self, model: nn.Module) -> None:
        self.anchor = copy.deepcopy(model).requires_grad_(False)
        self.teacher = copy.deepcopy(model).requires_grad_(False)

    def reset(self) -> None:
        """The teacher goes back to the source (the anchor), as the official reset."""
        if self.teacher is not None:
            self.teacher.load_state_dict(self.anchor.state_dict())
        self._prediction = None

    @torch.no_grad()
    def pseudo_label(self, context: LossContext, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits: augmentation-averaged when the anchor is not confident enough."""
        confidence = self.anchor(x).softmax(1).max(1).values.mean()
        context.count_forward()
        if float(confidence) >= self.ap:
            context.count_forward()
            return self.teacher(x)
        total = sum(self.teacher(cotta_augment(x)) for _ in range(self.n_augmentations))
        context.count_forward(self.n_augmentations)
        return total / self.n_augmentations

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        per_sample = soft_cross_entropy(student, teacher)
        if self.symmetric:
            per_sample = 0.5 * per_sample + 0.5 * soft_cross_entropy(teacher, student)
        return per_sample.mean(0)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss 'cotta' needs its teacher; it runs inside tta.adapt only")

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        target = self.pseudo_label(context, x)
        self._prediction = target
        loss = self.loss(logits, target) if keep is None else self.loss(logits[keep], target[keep])
        context.backward(loss)
        return loss.detach()

    def after_update(self, context: LossContext) -> None:
        """Teacher EMA update, then stochastic restore of the trainable parameters."""
        ema_update(self.teacher, context.model, self.alpha)
        source = dict(self.anchor.named_parameters())
        trainable = [(param, source[name]) for name, param in context.named_params]
        stochastic_restore(trainable, self.rst)

    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The pseudo-label logits of this batch (the teacher's, before the update)."""
        prediction, self._prediction = self._prediction, None
        return prediction if prediction is not None else self.pseudo_label(context, x)
