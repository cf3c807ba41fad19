"""`auto-rgn`: per-tensor learning rates from the relative gradient norm (Auto-RGN).

Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023
(official code: yoonholee/surgical-finetuning, `get_lr_weights`). For every tensor t,

    RGN_t = ||g_t|| / ||theta_t||,     scale_t = RGN_t / max_s RGN_s,

and the tensor's proposed update is multiplied by scale_t: the tensor with the largest
relative gradient norm moves at the full learning rate, the others proportionally less.
Scaling the proposed update is exactly a per-tensor learning rate for SGD (with or without
momentum and weight decay) and for Adam, whose steps are linear in the learning rate and
whose state does not depend on it.

Defaults and the differences from the official code:
- granularity "tensor" (weight and bias apart, as the paper); "module" or "block" (with
  `block_patterns`) take the norms over each layer's flattened parameters.
- the weights are recomputed every step from that step's gradient and the parameters before
  the update (the official code averages RGN over 5 labelled batches once per epoch; online
  test-time adaptation has one batch per step).
- the official code skips parameters whose name contains "bn"; here the candidate tensors are
  whatever `params=` made trainable.
- a tensor whose parameters are all zero (e.g. a zero-initialized bias) has no relative
  norm: it keeps its full update (scale 1) and does not enter the max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal


def layer_norms(tensors: list[list[torch.Tensor | None]], device: torch.device) -> torch.Tensor:
    """The L2 norm of each layer's flattened tensors (None counts as zeros), float32."""
    zero = torch.zeros((), device=device)
    norms = []
    for group in tensors:
        parts = [torch.linalg.vector_norm(t.float()) for t in group if t is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(parts)) if parts else zero)
    return torch.stack(norms)


def rgn_scales(grad_norms: list[float], param_norms: list[float]) -> list[float]:
    """scale = RGN / max RGN; a tensor with zero parameter norm gets scale 1 (or 0 if g = 0)."""
    rgn = [g / p if p > 0 else math.nan for g, p in zip(grad_norms, param_norms, strict=True)]
    finite = [r for r in rgn if not math.isnan(r)]
    top = max(finite, default=0.0)
    scales = []
    for r, g in zip(rgn, grad_norms, strict=True):
        if math.isnan(r):
            scales.append(1.0 if g > 0 else 0.0)
        else:
            scales.append(r / top if top > 0 else 0.0)
    return scales


@LAYER_SELECTORS.register("auto-rgn")
class AutoRGN(LayerSelector):
    name = "auto-rgn"

    def __init__(
        self, granularity: str = "tensor", block_patterns: Sequence[str] | str | None = None
    ) -> None:
        self.granularity = granularity
        self.block_patterns = block_patterns
        self._trace: dict[str, list] = {"step": [], "selected": [], "skipped": [], "scales": []}

    def select(self, proposal: Proposal) -> list[float]:
        if not proposal.layers:
            return []
        if len(proposal.grads) != len(proposal.layers):
            raise ValueError("selector 'auto-rgn' needs the gradients in the proposal")
        device = proposal.before[0][0].device
        grad_norms, param_norms = torch.stack(
            [layer_norms(proposal.grads, device), layer_norms(proposal.before, device)]
        ).tolist()
        scales = rgn_scales(grad_norms, param_norms)
        selected = [i for i, s in enumerate(scales) if s > 0]
        self._trace["step"].append(proposal.step)
        self._trace["selected"].append(selected)
        self._trace["skipped"].append(not selected)
        self._trace["scales"].append(scales)
        return scales

    def trace(self) -> dict:
        return {key: list(values) for key, values in self._trace.items()}
