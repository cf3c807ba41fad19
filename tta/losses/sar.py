"""`sar`: Niu et al., "Towards Stable Test-Time Adaptation in Dynamic Wild World", ICLR 2023.

Sharpness-Aware and Reliable entropy minimization, as the official code (mr-eggplant/SAR,
`sar.py` + `sam.py`, `main.py`):

- Reliable entropy: only samples with entropy E < `margin` x ln C (`margin=0.4`; official
  `sar_margin_e0` = 0.4 x ln 1000 for ImageNet) contribute, tested by the shared
  `tta.selectors.entropy_filter.reliable`; no sample left -> no update (counted as skipped).
- Sharpness-aware step (SAM, `rho=0.05`, not adaptive): the gradient g at the weights w on
  the reliable samples gives the perturbation e(w) = rho * g / (||g|| + 1e-12), ||.|| over
  all trainable tensors together; a second forward at w + e(w) re-applies the filter to the
  samples kept by the first one (`entropys2[filter_ids_1] < margin`) and its gradient is the
  one the optimizer steps with, from w restored exactly. Here the two passes run in
  `backward`, which leaves the second gradient in `.grad`: the engine's optimizer step and
  its layer selector (GALA included) act on it as on any other gradient.
- Model recovery: `ema` of the second-pass loss (ema <- 0.9 ema + 0.1 loss, initialised to
  the first loss, updated only when that loss is a number); when ema < `reset_constant`
  (`reset_constant_em=0.2`) after an update, the weights, buffers and optimizer state go
  back to the source (`adapted.reset()`, which also clears ema as the official reset does).
  `n_recoveries` counts them (also reported as `counters.n_recoveries`); resets do not
  clear it.
- Parameters (`default_params`, see `norm_params_without_last_stage`): the affine weight
  and bias of the norm layers, excluding the network's last stage and what follows it (the
  official `collect_params` skips `layer4` of ResNet-50, `blocks.9-11` and the final `norm`
  of ViT-B/16).
- BatchNorm normalizes with the current batch's statistics (running statistics dropped, as
  TENT); GroupNorm and LayerNorm are used as they are.
- Optimizer of the paper: SGD, momentum 0.9, lr 0.00025 for ResNet-50 (BN or GN) at batch
  64 (2 x 0.00025 x bs / 64 below batch 32), lr 0.001 x bs / 64 for ViT-B/16. The paper has
  no CIFAR setting; the engine's optimizer is whatever `tta.adapt` was given.

Deviations: the official code calls `model.train()` on the whole model (we put only the
BatchNorm layers in train mode, as our TENT); when the second filter leaves no sample the
official code still takes an SGD step (momentum only, zero gradient) while we skip the step.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from tta.layers import block_keys
from tta.losses.base import Loss, softmax_entropy
from tta.params import select_parameters, use_batch_statistics
from tta.registry import LOSSES
from tta.selectors.entropy_filter import check_margin, reliable

if TYPE_CHECKING:
    from tta.engine import AdaptedModel

VIT_BLOCK_PATTERN = r"(?:.*?\.)?blocks\.\d+"


def _top_keys(keys: list[str], drop_last: int) -> set[str]:
    """The last `drop_last` stage keys and the head: the blocks SAR does not adapt."""
    stages = list(dict.fromkeys(k for k in keys if k not in ("stem", "head")))
    return {*stages[len(stages) - drop_last :], "head"}


def norm_params_without_last_stage(model: nn.Module) -> list[str]:
    """Names of the norm-affine parameters outside the network's last stage, as SAR/DeYO.

    Stages are found as `tta.layers` finds blocks (`layer1..4`, `block1..3`, `stage_1..3`,
    `stages.N`): the last stage and everything after it ("head") are dropped, e.g. `layer4`
    of a ResNet-50, `layer3` of a CIFAR ResNet-20, `block3` and the final BatchNorm of a
    WideResNet. Without such stages, timm ViT blocks (`blocks.N`) count as stages and the
    last quarter of them (blocks 9-11 of 12, as the official code) and the head are dropped.
    Without either, every norm-affine parameter is kept (the official substring rule keeps
    them all too). If the drop would leave nothing, every norm-affine parameter is kept.
    """
    norm_names = [name for name, _ in select_parameters(model, "norm")]
    all_names = [name for name, _ in model.named_parameters()]
    try:
        keys = block_keys(all_names)
        top = _top_keys(keys, 1)
    except ValueError:
        try:
            keys = block_keys(all_names, [VIT_BLOCK_PATTERN])
        except ValueError:
            return norm_names
        n_blocks = len({k for k in keys if re.fullmatch(VIT_BLOCK_PATTERN, k)})
        top = _top_keys(keys, max(1, n_blocks // 4))
    key_of = dict(zip(all_names, keys, strict=True))
    kept = [name for name in norm_names if key_of[name] not in top]
    return kept or norm_names


def sam_perturb(params: list[nn.Parameter], rho: float) -> list[torch.Tensor]:
    """Move every parameter with a gradient to w + rho g / (||g|| + 1e-12); return the old w.

    ||g|| is the 2-norm over all the tensors together (SAM's `_grad_norm`, not adaptive).
    """
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        saved = [p.detach().clone() for p in params]
        if not grads:
            return saved
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = rho / (norm + 1e-12)
        for p in params:
            if p.grad is not None:
                p.add_(p.grad * scale)
    return saved


def restore(params: list[nn.Parameter], saved: list[torch.Tensor]) -> None:
    """Copy the saved values back, bit for bit."""
    with torch.no_grad():
        for p, value in zip(params, saved, strict=True):
            p.copy_(value)


class LastStageFrozenLoss(Loss):
    """SAR's and DeYO's setting: BatchNorm on batch statistics, norm-affine parameters
    outside the network's last stage (see `norm_params_without_last_stage`)."""

    default_params = "norm-without-last-stage"  # resolved per model by params_for

    def params_for(self, model: nn.Module) -> str | list[str]:
        try:
            return norm_params_without_last_stage(model)
        except ValueError:  # no norm layer: resolving "norm" raises the clear error
            return "norm"

    def configure(self, model: nn.Module) -> None:
        model.eval()
        use_batch_statistics(model)


@LOSSES.register("sar")
class SARLoss(LastStageFrozenLoss):
    """Reliable entropy with a sharpness-aware two-pass step and model recovery."""

    name = "sar"

    def __init__(self, margin: float = 0.4, rho: float = 0.05, reset_constant: float = 0.2) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.margin = check_margin(margin, "loss 'sar'")
        self.rho = rho
        self.reset_constant = reset_constant
        self.ema: float | None = None
        self.n_recoveries = 0

    def reset(self) -> None:
        self.ema = None  # as the official reset; n_recoveries counts the whole run

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean entropy of the reliable samples (the objective of each SAM pass)."""
        entropy = softmax_entropy(logits)
        return entropy[reliable(entropy, logits.shape[1], self.margin)].mean(0)

    def backward(
        self,
        adapted: AdaptedModel,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        counters = adapted.counters
        counters.n_recoveries = self.n_recoveries
        entropy = softmax_entropy(logits)
        first = reliable(entropy, logits.shape[1], self.margin)
        first = first if keep is None else first & keep
        counters.n_filtered_samples += int((~first).sum()) - (
            int((~keep).sum()) if keep is not None else 0
        )
        if not bool(first.any()):
            return None
        entropy[first].mean(0).backward()
        counters.n_backward += 1

        params = [p for layer in adapted.layers for p in layer.params]
        saved = sam_perturb(params, self.rho)
        for p in params:
            p.grad = None
        try:
            entropy2 = softmax_entropy(adapted.model(x))[first]
            counters.n_forward += 1
            second = reliable(entropy2, logits.shape[1], self.margin)
            if not bool(second.any()):
                return None
            loss = entropy2[second].mean(0)
            loss.backward()
            counters.n_backward += 1
        finally:
            restore(params, saved)
        self._update_ema(loss.item())
        return loss.detach()

    def _update_ema(self, value: float) -> None:
        if math.isfinite(value):
            self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value

    def after_update(self, adapted: AdaptedModel) -> None:
        """Recovery: back to the source weights when the loss average falls below the bound."""
        if self.ema is not None and self.ema < self.reset_constant:
            self.n_recoveries += 1
            adapted.reset()  # calls self.reset(): clears ema, keeps n_recoveries
        adapted.counters.n_recoveries = self.n_recoveries
