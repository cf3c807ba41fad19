"""`roid`: Marsden, Döbler and Yang, "Universal Test-time Adaptation through Weight Ensembling,
Diversity Weighting, and Prior Correction", WACV 2024.

As the official code (mariodoebler/test-time-adaptation, `classification/methods/roid.py`,
`utils/losses.py` (`SoftLikelihoodRatio`, `SymmetricCrossEntropy`), `utils/misc.py`
(`ema_update_model`), `augmentations/transforms_cotta.py` (`get_tta_transforms(...,
padding_mode="reflect", cotta_augs=False)`), defaults in `conf.py` `_C.ROID`):

- Model: BatchNorm normalizes with the current batch's statistics (running statistics
  dropped, `default_norm = "batch"`); the affine parameters of the norm layers train
  (`default_params = "norm"`).
- Soft-likelihood-ratio loss per sample: with p = softmax(logits) clipped to [0, 0.99],
  SLR = -sum_c p_c log(p_c / (1 - p_c) + 1e-5) (`slr`).
- Weights (`use_weighting=True`), computed without gradient on the batch's logits:
  diversity w_div = 1 - cos(m, p_i) with m the moving average of the batch-mean prediction
  (uniform at the start; m <- 0.9 m + 0.1 mean_i p_i after the weights, `momentum_probs`),
  min-max normalized over the batch; certainty w_cert = -H(p_i), min-max normalized; samples
  with w_div below the batch mean of w_div are masked out; the others get
  w = exp(w_div * w_cert / T), T = 1/3 (`temperature`). See `roid_weights`.
- Loss: sum over the unmasked samples of w * SLR, plus (`use_consistency=True`) the
  consistency term: the unmasked images, augmented once, go through the model and
  sum_i w_i SCE(aug_i, logits_i) is added, SCE the symmetric cross-entropy with alpha 0.5
  (`symmetric_cross_entropy`; gradients flow through both sides, as the official). Both
  sums are divided by the batch size.
- After the optimizer step, weight ensembling with the source: every trainable parameter
  theta <- a theta + (1 - a) theta_src, a = 0.99 (`momentum_src`; `weight_ensemble`).
- Predictions returned (`use_prior_correction=True`): the logits of the forward before the
  update multiplied by the smoothed batch prior, prior = mean_i p_i, s = max(1/B, 1/C) /
  max(prior), smoothed = (prior + s) / (1 + s C) (`prior_correction`; the official code
  multiplies the logits, not the probabilities, and so do we).
- Augmentation (`roid_augment`): the official `get_tta_transforms(cotta_augs=False)`, one
  random draw per batch: clip, CoTTA's colour jitter (tta/losses/cotta.py), affine (rotation
  +-15 degrees, scale 0.9-1.1, shift 1/8) with reflected borders, horizontal flip w.p. 0.5,
  clip; no blur, no noise.

Mixed precision (`amp`): bfloat16 and float16 (the one backward goes through
`LossContext.backward`, so the float16 gradient scaler reaches it); the weights, the prior
average and the prior correction are computed in float32.

Presets (`presets`): the official `cfgs/cifar10_c/roid.yaml` and `cifar100_c/roid.yaml`
(Adam 1e-3, batch 200) for the `cifar` family; `cfgs/imagenet_c/roid.yaml` (SGD 2.5e-4,
momentum 0.9, batch 64) for `imagenet`.

Deviations: the loss is divided by the length of the batch given (the official divides by
the configured batch size; they differ only on a stream's last, shorter batch); a batch
where every sample has the same diversity (or certainty) value, e.g. one image, gives 0/0 in
the official min-max normalization (NaN weights); here those normalized weights are 0, so
every sample is kept with weight 1; with `use_weighting=False` (the official code then
fails on its undefined mask) every sample counts with weight 1; the colour jitter leaves out the hue jitter (see
tta/losses/cotta.py); `reset()` also forgets the prior moving average, as the official
reset. A sample filter given to the engine (`keep`) restricts the batch first. Samples
masked by the diversity weight are counted in `stats()["n_masked"]` and in the engine's
`n_filtered_samples`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tta.checks import require_images
from tta.context import LossContext
from tta.functional import softmax_entropy
from tta.losses.base import Loss
from tta.losses.cotta import color_jitter, random_affine
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


def slr(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample soft likelihood ratio -sum_c p_c log(p_c / (1 - p_c) + eps), p clipped."""
    p = logits.softmax(1).clamp(0.0, clip)
    return -(p * torch.log(p / (1 - p) + eps)).sum(1)


def symmetric_cross_entropy(
    x: torch.Tensor, x_ema: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """Per-sample -(1 - a) sum softmax(x_ema) log softmax(x) - a sum softmax(x) log softmax(x_ema)."""
    return -(1 - alpha) * (x_ema.softmax(1) * x.log_softmax(1)).sum(1) - alpha * (
        x.softmax(1) * x_ema.log_softmax(1)
    ).sum(1)


def min_max(values: torch.Tensor) -> torch.Tensor:
    """(v - min) / (max - min) over the batch; all zeros when every value is the same."""
    low, high = values.min(), values.max()
    if not bool(high > low):
        return torch.zeros_like(values)
    return (values - low) / (high - low)


@torch.no_grad()
def roid_weights(
    logits: torch.Tensor, class_probs: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROID's (weights, mask): mask marks the samples left out (w_div below its batch mean);
    weights = exp(w_div * w_cert / T), 0 where masked (see the module docstring)."""
    probs = logits.softmax(1)
    w_div = min_max(1 - F.cosine_similarity(class_probs.unsqueeze(0), probs, dim=1))
    mask = w_div < w_div.mean()
    w_cert = min_max(-softmax_entropy(logits))
    weights = torch.exp(w_div * w_cert / temperature)
    weights[mask] = 0.0
    return weights, mask


def prior_correction(logits: torch.Tensor) -> torch.Tensor:
    """The logits times the smoothed batch prior (the official ROID output)."""
    n, c = logits.shape
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / n, 1 / c) / prior.max()
    return logits * ((prior + smooth) / (1 + smooth * c))


@torch.no_grad()
def weight_ensemble(params: list[tuple[nn.Parameter, torch.Tensor]], momentum: float) -> None:
    """theta <- momentum * theta + (1 - momentum) * theta_src (exactly theta where equal)."""
    for param, source in params:
        param.lerp_(source, 1 - momentum)


def roid_augment(x: torch.Tensor) -> torch.Tensor:
    """One random ROID augmentation of a batch of [0, 1] images (see the module docstring)."""
    x = color_jitter(x.clamp(0, 1))
    x = random_affine(x, padding_mode="reflection")
    if float(torch.rand(())) < 0.5:
        x = x.flip(-1)
    return x.clamp(0, 1)


def _check_unit(name: str, value: float, who: str) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"loss {who!r}: {name} must be in [0, 1], got {value!r}")
    return float(value)


@LOSSES.register("roid")
class ROIDLoss(Loss):
    """Weighted soft-likelihood ratio + consistency, weight ensembling, prior correction."""

    name = "roid"
    default_params = "norm"
    default_norm = "batch"
    scores_logits_alone = False  # the consistency term needs the images
    grad_scaling = True  # its one backward goes through LossContext.backward (float16-safe)
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __init__(
        self,
        use_weighting: bool = True,
        use_prior_correction: bool = True,
        use_consistency: bool = True,
        momentum_src: float = 0.99,
        momentum_probs: float = 0.9,
        temperature: float = 1 / 3,
    ) -> None:
        self.momentum_src = _check_unit("momentum_src", momentum_src, self.name)
        self.momentum_probs = _check_unit("momentum_probs", momentum_probs, self.name)
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"loss {self.name!r}: temperature must be > 0, got {temperature!r}")
        self.use_weighting = bool(use_weighting)
        self.use_prior_correction = bool(use_prior_correction)
        self.use_consistency = bool(use_consistency)
        self.temperature = float(temperature)
        self.class_probs: torch.Tensor | None = None
        self.source: dict[str, torch.Tensor] = {}
        self.n_masked = 0

    def check_model(self, model: nn.Module) -> None:
        if self.use_consistency:
            require_images(model, f"loss {self.name!r}", "augments images (use_consistency)")

    def configure(self, model: nn.Module) -> None:
        """Keep the source parameters (after the norm mode) for the weight ensemble."""
        self.source = {name: p.detach().clone() for name, p in model.named_parameters()}

    def reset(self) -> None:
        self.class_probs = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"loss {self.name!r} needs the images; it runs inside tta.adapt only")

    def objective(
        self, context: LossContext, x: torch.Tensor, logits: torch.Tensor, batch_size: int
    ) -> torch.Tensor:
        """The weighted SLR (+ consistency) of a batch; updates the prior moving average."""
        logits = logits.float()  # weights and averages in float32 under mixed precision
        if self.class_probs is None:
            c = logits.shape[1]
            self.class_probs = torch.full((c,), 1 / c, device=logits.device, dtype=logits.dtype)
        per_sample = slr(logits)
        if self.use_weighting:
            weights, mask = roid_weights(logits, self.class_probs, self.temperature)
            self.class_probs = self.momentum_probs * self.class_probs + (
                1 - self.momentum_probs
            ) * logits.detach().softmax(1).mean(0)
            n_masked = int(mask.sum())
            self.n_masked += n_masked
            context.count_filtered(n_masked)
            keep = ~mask
            loss = (per_sample * weights)[keep].sum() / batch_size
        else:
            weights = torch.ones_like(per_sample)
            keep = torch.ones_like(per_sample, dtype=torch.bool)
            loss = per_sample.sum() / batch_size
        if self.use_consistency and bool(keep.any()):
            augmented = context.model(roid_augment(x[keep]))
            context.count_forward()
            consistency = symmetric_cross_entropy(augmented.float(), logits[keep]) * weights[keep]
            loss = loss + consistency.sum() / batch_size
        return loss

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        batch_size = len(logits)
        if keep is not None:
            x, logits = x[keep], logits[keep]
        loss = self.objective(context, x, logits, batch_size)
        context.backward(loss)
        return loss.detach()

    def source_pairs(self, context: LossContext) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(param, self.source[name]) for name, param in context.named_params]

    def after_update(self, context: LossContext) -> None:
        """Weight ensembling of the trainable parameters with their source values."""
        weight_ensemble(self.source_pairs(context), self.momentum_src)

    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return prior_correction(logits.float()) if self.use_prior_correction else logits

    def stats(self) -> dict[str, int]:
        return {"n_masked": self.n_masked}
