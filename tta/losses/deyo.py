"""`deyo`: Lee et al., "Entropy is not Enough for Test-Time Adaptation: From the Perspective of
Disentangled Factors", ICLR 2024.

Destroy Your Object, as the official code (Jhyun17/DeYO, `methods/deyo.py`, `config.py`,
`main.py`, `exp_deyo.sh`):

- Entropy filter: keep the samples with entropy E < `margin` x ln C (`deyo_margin=0.5`,
  multiplied by ln C in `main.py`); none left -> no update (counted as skipped).
- Patch shuffling (`aug_type="patch"`, `patch_len=4`): each kept image is cut into a
  `patch_len` x `patch_len` grid of patches, shuffled with a random permutation per image
  (an image whose sides are not multiples of `patch_len` is resized to the nearest smaller
  multiples and back, bilinear, as the official `Resize`); the model predicts on the
  shuffled images without gradient (one extra forward).
- PLPD (pseudo-label probability difference) = p(y_hat | x) - p(y_hat | x_shuffled) with
  y_hat = argmax p(. | x); keep the samples with PLPD > `plpd_threshold` (0.2, the
  `config.py` default and the "wild" setting of `exp_deyo.sh`; the "mild" ImageNet-C setting
  there uses 0.3). None left -> no update.
- Sample weights (`reweight_ent=1`, `reweight_plpd=1`, detached):
  w = reweight_ent / exp(E - E0) + reweight_plpd * exp(PLPD), E0 = `margin_e0` x ln C
  (`deyo_margin_e0=0.4`); the loss is mean(w * E) over the samples left. With both
  reweight factors zero the samples are not reweighted (official).
- Parameters and normalization as the official `collect_params`/`configure_model`: the
  norm-affine parameters of modules not named like top layers (`layer4`, `blocks.9-11`,
  `norm`; the same rule as SAR's code, `tta.losses.sar.official_norm_params`), BatchNorm on
  batch statistics; `exclude="last-stage"` is our structural variant, off by default.
- Optimizer of the paper: SGD momentum 0.9, lr 0.00025 for ResNet-50 at batch 64 (x2 x bs /
  64 below batch 32), 0.001 x bs / 64 for ViT-B/16. No CIFAR setting in the official code.

Presets (`presets`): ImageNet as Jhyun17/DeYO: SGD 2.5e-4, momentum 0.9, batch 64. CIFAR:
Adam 1e-3, batch 200 (the continual CIFAR protocol; DeYO has no CIFAR-C setting).

Deviation: the official code calls `model.train()` on the whole model; we put only the
BatchNorm layers in train mode, as our TENT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tta.checks import require_images
from tta.context import LossContext
from tta.filters.entropy import check_margin, reliable
from tta.functional import softmax_entropy
from tta.losses.sar import TopLayersFrozenLoss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


def patch_shuffle(x: torch.Tensor, patch_len: int = 4) -> torch.Tensor:
    """Shuffle the patch_len x patch_len grid of patches of each image independently."""
    height, width = x.shape[-2:]
    grid_h, grid_w = height // patch_len * patch_len, width // patch_len * patch_len
    if grid_h == 0 or grid_w == 0:
        raise ValueError(f"patch_len={patch_len} is larger than the images ({height}x{width})")
    resized = (grid_h, grid_w) != (height, width)
    if resized:
        x = F.interpolate(x, size=(grid_h, grid_w), mode="bilinear", antialias=True)
    grid = {"ps1": patch_len, "ps2": patch_len}
    patches = rearrange(x, "b c (ps1 h) (ps2 w) -> b (ps1 ps2) c h w", **grid)
    b, n = patches.shape[:2]
    order = torch.argsort(torch.rand(b, n), dim=1).to(x.device)
    patches = patches[torch.arange(b, device=x.device).unsqueeze(1), order]
    out = rearrange(patches, "b (ps1 ps2) c h w -> b c (ps1 h) (ps2 w)", **grid)
    if resized:
        out = F.interpolate(out, size=(height, width), mode="bilinear", antialias=True)
    return out


def plpd(logits: torch.Tensor, logits_shuffled: torch.Tensor) -> torch.Tensor:
    """p(y_hat | x) - p(y_hat | x_shuffled), y_hat = argmax of p(. | x); per sample."""
    probs, probs_shuffled = logits.softmax(1), logits_shuffled.softmax(1)
    y_hat = probs.argmax(1, keepdim=True)
    return (probs.gather(1, y_hat) - probs_shuffled.gather(1, y_hat)).squeeze(1)


def deyo_weights(
    entropy: torch.Tensor,
    plpd_values: torch.Tensor,
    e0: float,
    reweight_ent: float = 1.0,
    reweight_plpd: float = 1.0,
) -> torch.Tensor:
    """reweight_ent / exp(E - E0) + reweight_plpd * exp(PLPD) (ones if both factors are 0)."""
    if not reweight_ent and not reweight_plpd:
        return torch.ones_like(entropy)
    return reweight_ent * torch.exp(-(entropy - e0)) + reweight_plpd * torch.exp(plpd_values)


@LOSSES.register("deyo")
class DeYOLoss(TopLayersFrozenLoss):
    """Entropy weighted by confidence and shape sensitivity (PLPD), on filtered samples."""

    scores_logits_alone = False  # the objective needs the images (patch shuffling)
    name = "deyo"
    grad_scaling = True  # its backward goes through LossContext.backward (float16-safe)
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __init__(
        self,
        margin: float = 0.5,
        margin_e0: float = 0.4,
        plpd_threshold: float = 0.2,
        patch_len: int = 4,
        reweight_ent: float = 1.0,
        reweight_plpd: float = 1.0,
        exclude: str = "official",
    ) -> None:
        super().__init__(exclude)
        if patch_len < 1:
            raise ValueError(f"patch_len must be >= 1, got {patch_len}")
        self.margin = check_margin(margin, "loss 'deyo'")
        self.margin_e0 = check_margin(margin_e0, "loss 'deyo' (margin_e0)")
        self.plpd_threshold = plpd_threshold
        self.patch_len = patch_len
        self.reweight_ent = reweight_ent
        self.reweight_plpd = reweight_plpd

    def check_model(self, model: nn.Module) -> None:
        require_images(model, "loss 'deyo'", "shuffles image patches")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss 'deyo' needs the images (patch shuffling); it runs in tta.adapt")

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        n_classes = logits.shape[1]
        entropy = softmax_entropy(logits)
        first = reliable(entropy, n_classes, self.margin)
        first = first if keep is None else first & keep
        context.count_filtered(
            int((~first).sum()) - (int((~keep).sum()) if keep is not None else 0)
        )
        if not bool(first.any()):
            return None
        with torch.no_grad():
            logits_shuffled = context.model(patch_shuffle(x[first].detach(), self.patch_len))
        context.count_forward()
        values = plpd(logits[first].detach(), logits_shuffled)
        second = values > self.plpd_threshold
        context.count_filtered(int((~second).sum()))
        if not bool(second.any()):
            return None
        kept_entropy = entropy[first][second]
        weights = deyo_weights(
            kept_entropy.detach(),
            values[second],
            self.margin_e0 * math.log(n_classes),
            self.reweight_ent,
            self.reweight_plpd,
        )
        loss = (kept_entropy * weights).mean(0)
        context.backward(loss)
        return loss.detach()
