"""`auto-snr`: freeze the tensors whose gradient signal-to-noise ratio is low (Auto-SNR).

Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023
(official code: yoonholee/surgical-finetuning, `get_lr_weights` with `auto_tune=eb-criterion`).
The paper defines, per tensor, SNR = mean(g)^2 / var(g) averaged over the tensor's elements,
and freezes the tensors below a threshold. The official code computes, for each of 5 batches,
`mean((g * g) / (var(g, dim=0) + 1e-8))` on the batch gradient (the variance runs over the
tensor's first axis), averages it over the batches, and keeps a tensor (learning-rate weight
1) when the value is >= 0.95, else freezes it (weight 0).

Approximation here: per-sample gradients are not in the proposal, so the mean and variance
run over a sliding window of the last `window` per-step gradients of each element:

    SNR_t = mean over elements e of  mean_w(g_e)^2 / (var_w(g_e) + eps),

with the unbiased variance over the window. A tensor is kept (scale 1) when SNR_t >= threshold,
else frozen (scale 0); all frozen skips the step. Pure noise gives SNR ~ 1/window, a steady
gradient a large SNR, so the official threshold 0.95 keeps the tensors whose gradient signal
is at least about as strong as its step-to-step noise.

Defaults: `threshold=0.95` and `eps=1e-8` (the official code's), `window=5` (its 5 batches),
`normalize=False`; `normalize=True` first divides the SNRs by their max, the "normalized to
[0, 1]" reading of the paper's text (then the max tensor is always kept). As in the official
code the absolute `eps` is not negligible: per-element gradients of ~1e-4 have variances below
1e-8, so tensors with small gradients also score low; pass a smaller `eps` for a scale-free SNR.
Granularity "tensor" ("module" or "block" with `block_patterns`: the elements of each layer's
parameters). The first `window - 1` steps only collect gradients and are skipped (the official
code also measures before it tunes); `reset()` empties the window. Memory: `window` copies of
the trainable parameters. Unlike the official code, parameters named "bn" are not excluded:
`params=` decides.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal


def flat_grads(proposal: Proposal) -> list[torch.Tensor]:
    """Each layer's gradient as one float32 vector (a new tensor; None counts as zeros)."""
    return [
        torch.cat(
            [
                (p.new_zeros(p.shape) if g is None else g).detach().float().reshape(-1)
                for g, p in zip(grads, before, strict=True)
            ]
        )
        for grads, before in zip(proposal.grads, proposal.before, strict=True)
    ]


def window_snr(history: torch.Tensor, eps: float) -> torch.Tensor:
    """SNR of a (window, elements) history: mean over elements of mean^2 / (var + eps)."""
    return (history.mean(0).square() / (history.var(0) + eps)).mean()


@LAYER_SELECTORS.register("auto-snr")
class AutoSNR(LayerSelector):
    name = "auto-snr"

    def __init__(
        self,
        threshold: float = 0.95,
        window: int = 5,
        normalize: bool = False,
        eps: float = 1e-8,
        granularity: str = "tensor",
        block_patterns: Sequence[str] | str | None = None,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"selector 'auto-snr': window must be an integer >= 2, got {window!r}")
        if eps <= 0:
            raise ValueError(f"selector 'auto-snr': eps must be positive, got {eps}")
        self.threshold = float(threshold)
        self.window = window
        self.warmup_steps = window - 1
        self.normalize = normalize
        self.eps = eps
        self.granularity = granularity
        self.block_patterns = block_patterns
        self._history: list[deque[torch.Tensor]] = []
        self._trace: dict[str, list] = {"step": [], "selected": [], "skipped": [], "snr": []}

    def reset(self) -> None:
        self._history = []

    def select(self, proposal: Proposal) -> list[float]:
        if len(proposal.grads) != len(proposal.layers):
            raise ValueError("selector 'auto-snr' needs the gradients in the proposal")
        grads = flat_grads(proposal)
        if len(self._history) != len(grads):
            self._history = [deque(maxlen=self.window) for _ in grads]
        for history, grad in zip(self._history, grads, strict=True):
            history.append(grad)
        if not grads or len(self._history[0]) < self.window:
            scales, snr = [0.0] * len(grads), []
        else:
            values = torch.stack(
                [window_snr(torch.stack(list(h)), self.eps) for h in self._history]
            )
            if self.normalize:
                values = values / values.max().clamp_min(torch.finfo(values.dtype).tiny)
            snr = values.tolist()
            scales = [1.0 if v >= self.threshold else 0.0 for v in snr]
        selected = [i for i, s in enumerate(scales) if s]
        self._trace["step"].append(proposal.step)
        self._trace["selected"].append(selected)
        self._trace["skipped"].append(not selected)
        self._trace["snr"].append(snr)
        return scales

    def trace(self) -> dict:
        return {key: list(values) for key, values in self._trace.items()}
