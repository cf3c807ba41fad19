"""`sar`: Niu et al., "Towards Stable Test-Time Adaptation in Dynamic Wild World", ICLR 2023.

Sharpness-Aware and Reliable entropy minimization, as the official code (mr-eggplant/SAR,
`sar.py` + `sam.py`, `main.py`):

- Reliable entropy: only samples with entropy E < `margin` x ln C (`margin=0.4`; official
  `sar_margin_e0` = 0.4 x ln 1000 for ImageNet) contribute, tested by the shared
  `tta.filters.entropy.reliable`; no sample left -> no update (counted as skipped).
- Sharpness-aware step (SAM, `rho=0.05`, not adaptive): the gradient g at the weights w on
  the reliable samples gives the perturbation e(w) = rho * g / (||g|| + 1e-12), ||.|| over
  all trainable tensors together; a second forward at w + e(w) re-applies the filter to the
  samples kept by the first one (`entropys2[filter_ids_1] < margin`) and its gradient is the
  one the optimizer steps with, from w restored exactly. Here the two passes run in
  `backward`, which leaves the second gradient in `.grad`: the engine's optimizer step and
  its layer selector (GALA included) act on it as on any other gradient.
- No reliable sample: the official code still steps. Its loss is the mean of an empty set
  (NaN) whose gradient is zero for every parameter, SAM's perturbation is then zero, and
  `optimizer.second_step` runs the base SGD with a zero gradient, so momentum (and weight
  decay) still move the weights. Here the same happens: every trainable gradient is set to
  zero and the engine steps (counted in `stats()["n_zero_gradient_steps"]`). Likewise when
  the second filter leaves no sample; the ema is then not updated (as theirs: NaN is
  skipped).
- Model recovery: `ema` of the second-pass loss (ema <- 0.9 ema + 0.1 loss, initialised to
  the first loss, updated only when that loss is a number); when ema < `reset_constant`
  (`reset_constant_em=0.2`) after an update, the weights and buffers go back to the source
  and ema is cleared. The optimizer's state is kept, as in the official code: its
  `load_model_and_optimizer` reloads the SAM wrapper's state, but SGD's momentum buffers live
  in the base optimizer's state, which that does not touch. `stats()["n_recoveries"]`
  counts the recoveries; resets do not clear it.
- Parameters (`default_params`, `exclude="official"`): the official `collect_params` rule,
  by module name: the affine weight and bias of BatchNorm2d, LayerNorm and GroupNorm
  modules, skipping every module whose name contains `layer4`, `blocks.9`, `blocks.10`,
  `blocks.11` or `norm.`, or is `norm` (ResNet-50's last stage, ViT-B/16's last three
  blocks and final norm). On a CIFAR WideResNet or ResNet-20 nothing is skipped.
  `exclude="last-stage"` is our structural variant (a named deviation, off by default):
  drop the network's last stage and what follows it, whatever its name (see
  `norm_params_without_last_stage`).
- BatchNorm normalizes with the current batch's statistics (running statistics dropped, as
  TENT); GroupNorm and LayerNorm are used as they are.
- Optimizer of the paper: SGD, momentum 0.9, lr 0.00025 for ResNet-50 (BN or GN) at batch
  64 (2 x 0.00025 x bs / 64 below batch 32), lr 0.001 x bs / 64 for ViT-B/16. The paper has
  no CIFAR setting; the engine's optimizer is whatever `tta.adapt` was given.

Presets (`presets`): ImageNet as mr-eggplant/SAR `main.py`: SGD momentum 0.9, batch 64, lr
2.5e-4 for ResNet-50 at batch >= 32 and 2 x 2.5e-4 x batch / 64 below (`sar_lr`; the rule
follows an overridden batch size). SAR has no CIFAR setting: Adam 1e-3, batch 200 (the
continual CIFAR protocol).

Deviation: the official code calls `model.train()` on the whole model (we put only the
BatchNorm layers in train mode, as our TENT: dropout stays off).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from tta.context import LossContext
from tta.filters.entropy import check_margin, reliable
from tta.functional import softmax_entropy
from tta.layers import block_keys
from tta.losses.base import Loss
from tta.params import select_parameters
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES

VIT_BLOCK_PATTERN = r"(?:.*?\.)?blocks\.\d+"


def sar_lr(batch_size: int) -> float:
    """SAR's ResNet-50 rule (mr-eggplant/SAR main.py): 2.5e-4, or 2 x 2.5e-4 x bs / 64 below 32."""
    return 0.00025 if batch_size >= 32 else 2 * 0.00025 * batch_size / 64


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


def sam_perturb(params: list[nn.Parameter], rho: float) -> list[torch.Tensor] | None:
    """Move every parameter with a gradient to w + rho g / (||g|| + 1e-12); return the old w.

    ||g|| is the 2-norm over all the tensors together (SAM's `_grad_norm`, not adaptive).
    A non-finite ||g|| (a float16 overflow of the scaled gradient) moves nothing: None.
    """
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        saved = [p.detach().clone() for p in params]
        if not grads:
            return saved
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not bool(torch.isfinite(norm)):
            return None
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


OFFICIAL_SKIPPED = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")
EXCLUSIONS = ("official", "last-stage")


def official_norm_params(model: nn.Module) -> list[str]:
    """SAR's and DeYO's official `collect_params`: norm-affine names, top layers skipped by name.

    BatchNorm2d, LayerNorm and GroupNorm weight and bias, except in modules whose name
    contains `layer4`, `blocks.9`, `blocks.10`, `blocks.11` or `norm.`, or is `norm`.
    """
    names = []
    for module_name, module in model.named_modules():
        if any(part in module_name for part in OFFICIAL_SKIPPED) or module_name == "norm":
            continue
        if isinstance(module, nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm):
            for pname, _ in module.named_parameters(recurse=False):
                if pname in ("weight", "bias"):
                    names.append(f"{module_name}.{pname}" if module_name else pname)
    return names


class TopLayersFrozenLoss(Loss):
    """SAR's and DeYO's setting: BatchNorm on batch statistics, and the norm-affine parameters
    outside the network's top layers: `exclude="official"` (the official name rule, see
    `official_norm_params`) or `"last-stage"` (see `norm_params_without_last_stage`)."""

    default_params = "norm-without-top-layers"  # resolved per model by params_for
    default_norm = "batch"

    def __init__(self, exclude: str = "official") -> None:
        if exclude not in EXCLUSIONS:
            raise ValueError(
                f"loss {self.name!r}: exclude must be one of {', '.join(EXCLUSIONS)}; got {exclude!r}"
            )
        self.exclude = exclude

    def params_for(self, model: nn.Module) -> str | list[str]:
        if self.exclude == "official":
            return official_norm_params(model) or "norm"  # none: "norm" raises the clear error
        try:
            return norm_params_without_last_stage(model)
        except ValueError:  # no norm layer: resolving "norm" raises the clear error
            return "norm"


def zero_gradients(params: list[nn.Parameter]) -> None:
    """Every trainable gradient set to zero: the step the official code takes on a NaN loss."""
    for p in params:
        p.grad = torch.zeros_like(p)


@LOSSES.register("sar")
class SARLoss(TopLayersFrozenLoss):
    """Reliable entropy with a sharpness-aware two-pass step and model recovery."""

    name = "sar"
    grad_scaling = True  # both SAM passes go through LossContext.backward (float16-safe)
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd(lr_rule=sar_lr)}

    def __init__(
        self,
        margin: float = 0.4,
        rho: float = 0.05,
        reset_constant: float = 0.2,
        exclude: str = "official",
    ) -> None:
        super().__init__(exclude)
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.margin = check_margin(margin, "loss 'sar'")
        self.rho = rho
        self.reset_constant = reset_constant
        self.ema: float | None = None
        self.n_recoveries = 0
        self.n_zero_gradient_steps = 0

    def reset(self) -> None:
        self.ema = None  # as the official reset; the counts span the whole run

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean entropy of the reliable samples (the objective of each SAM pass)."""
        entropy = softmax_entropy(logits)
        return entropy[reliable(entropy, logits.shape[1], self.margin)].mean(0)

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        params = context.params
        entropy = softmax_entropy(logits)
        first = reliable(entropy, logits.shape[1], self.margin)
        first = first if keep is None else first & keep
        context.count_filtered(
            int((~first).sum()) - (int((~keep).sum()) if keep is not None else 0)
        )
        if not bool(first.any()):
            return self._zero_gradient_step(params, logits)
        first_loss = entropy[first].mean(0)
        context.backward(first_loss)  # float16: scaled; SAM's e is scale-free
        saved = sam_perturb(params, self.rho)
        if saved is None:  # the first gradient overflowed: the engine skips the step (scale halves)
            return first_loss.detach()
        for p in params:
            p.grad = None
        try:
            entropy2 = softmax_entropy(context.model(x))[first]
            context.count_forward()
            second = reliable(entropy2, logits.shape[1], self.margin)
            if not bool(second.any()):
                return self._zero_gradient_step(params, logits)
            loss = entropy2[second].mean(0)
            context.backward(loss)
        finally:
            restore(params, saved)
        self._update_ema(loss.item())
        return loss.detach()

    def _zero_gradient_step(self, params: list[nn.Parameter], logits: torch.Tensor) -> torch.Tensor:
        """No reliable sample: step with a zero gradient, as the official code's NaN loss does."""
        zero_gradients(params)
        self.n_zero_gradient_steps += 1
        return logits.new_zeros(())

    def _update_ema(self, value: float) -> None:
        if math.isfinite(value):
            self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value

    def after_update(self, context: LossContext) -> None:
        """Recovery: back to the source weights when the loss average falls below the bound."""
        if self.ema is not None and self.ema < self.reset_constant:
            self.n_recoveries += 1
            context.request_reset()  # calls self.reset(): clears ema; the optimizer state stays

    def stats(self) -> dict[str, int]:
        return {
            "n_recoveries": self.n_recoveries,
            "n_zero_gradient_steps": self.n_zero_gradient_steps,
        }
