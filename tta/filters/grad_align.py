"""`grad-align`: keep the samples whose own update agrees with where the weights have been going.

Our extension of GALA (Sahoo et al., "A Layer Selection Approach to Test Time Adaptation",
AAAI 2025), which has no sample-level variant: GALA's alignment test applied to per-sample
gradients instead of per-layer proposals. For each sample i of a batch, with g_i its
per-sample gradient (`tta.filters.per_sample`), lr the optimizer's learning rate, and TD = theta -
anchor the displacement of the trainable parameters since the start of the current window:

    u_i = -lr * g_i                       (the SGD step a batch of this sample alone would take)
    cos_i = <u_i, u_i + TD> / (||u_i|| * ||u_i + TD||)       (GALA's cosine)

and the sample is kept when cos_i > threshold; the loss is then computed on the kept samples
only, and a batch with no kept sample skips the step (the engine counts it in `n_skipped`).

Options and defaults:

- `threshold=0.0`: drop the samples whose update turns against the displacement (the cosine
  is negative when <u_i, TD> < -||u_i||^2). GALA's 0.75 is for a batch-averaged proposal; a
  single sample's gradient is far noisier, so 0.75 would drop most of every batch.
- `window=20` (as GALA's s): at the first step of each window the anchor moves to the current
  parameters (the weights are not reset); TD = 0 there, so every cosine is 1 and every sample
  is kept, without computing per-sample gradients. `None`, `0` or `"inf"`: no reset.
  The filter keeps its own anchor and counts its own calls (one per batch, skipped steps
  included), so it composes with any layer selector; composed with `gala` the two windows
  start together but drift apart once a step is skipped.
- `granularity="all"`: one vector over all trainable parameters; `"layer"`: one cosine per
  layer (the engine's layers, e.g. GALA's granularity), averaged over the layers where
  u_i != 0. A sample with u_i = 0 everywhere has cosine 0 (no update, nothing to align).
- `method="auto"`: how per-sample gradients are computed (see `tta.filters.per_sample`).
- `share_forward=True`: reuse the engine's forward. From a window's first step until
  `reset()` the filter keeps a forward pre-hook and hook on the model, so that each forward
  under grad is recorded by `tta.filters.per_sample.Capture`: BatchNorm runs the native kernels
  through a tap (same logits; the engine's own backward is exact, bit for bit, see the
  tests), Linear/convolution outputs get a zero added whose gradient is the output's.
  Without it (`False`, or a parameter of a module with no closed-form rule, or a BatchNorm
  that updates running statistics) the filter runs its own forward.

The approximation: per-sample gradients treat BatchNorm's batch statistics as constants
(computed from the whole batch, detached). The logits are exact; only the gradient paths
through the batch mean and variance are dropped. It decides which samples count; the update
itself is the loss's exact gradient over the kept samples. With Adam, u_i uses lr * g_i, not
Adam's normalized step, so once TD has grown the test is close to "does -g_i point along TD".
The loss is called once more per step, on detached logits, to get dL/dlogits.

Cost per step (except a window's first, which costs nothing): one extra backward (plus one
extra forward without `share_forward`), per-sample gradients of the trainable parameters (B
copies of them), and O(B * #params) dot products; no Python loop over samples. Counted in
`stats()`; benchmarks/per_sample_speed.py measures it against a plain TENT step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tta.context import FilterContext
from tta.filters.base import SampleFilter
from tta.filters.per_sample import METHODS, Capture, per_sample_grads, shares_forward
from tta.registry import SAMPLE_FILTERS
from tta.selectors.gala import parse_window

GRANULARITIES = ("all", "layer")


def alignment(
    nsq: torch.Tensor, dot: torch.Tensor, td_sq: torch.Tensor, u_nonzero: torch.Tensor
) -> torch.Tensor:
    """cos(u, u + TD) from ||u||^2, <u, TD> and ||TD||^2 (any shape, broadcast); 0 where u = 0."""
    w_sq = (nsq + 2 * dot + td_sq).clamp_min(0)
    denominator = (nsq * w_sq).sqrt()
    cos = torch.where(denominator > 0, (nsq + dot) / denominator, torch.zeros_like(dot))
    return torch.where(u_nonzero, cos.clamp(-1, 1), torch.zeros_like(cos))


@SAMPLE_FILTERS.register("grad-align")
class GradAlign(SampleFilter):
    """Gradient-alignment sample filter; see the module docstring."""

    name = "grad-align"
    needs_logit_objective = True  # tta.adapt refuses losses that cannot score logits alone

    def __init__(
        self,
        threshold: float = 0.0,
        window: int | float | str | None = 20,
        granularity: str = "all",
        method: str = "auto",
        share_forward: bool = True,
    ) -> None:
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.threshold = float(threshold)
        self.window = parse_window(window)
        self.granularity = granularity
        self.method = method
        self.share_forward = share_forward
        self.kept_fraction: list[float] = []  # per call; these counts span the whole run
        self.n_kept = self.n_removed = self.n_extra_forward = self.n_extra_backward = 0
        self._hooks: list = []
        self._busy = False
        self._checked = False
        self.reset()

    def reset(self) -> None:
        """Restart the window: the next batch moves the anchor and keeps every sample."""
        self._calls = 0
        self._anchor: list[torch.Tensor] | None = None
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._open, self._capture = [], None, None

    def trace(self) -> dict:
        """Fraction of each batch kept, one entry per call."""
        return {"kept_fraction": list(self.kept_fraction)} if self.kept_fraction else {}

    def stats(self) -> dict[str, int]:
        """Samples kept and removed, and the extra passes the filter ran, over the whole run."""
        return {
            "n_kept": self.n_kept,
            "n_removed": self.n_removed,
            "n_extra_forward": self.n_extra_forward,
            "n_extra_backward": self.n_extra_backward,
        }

    @torch.no_grad()
    def keep(
        self, x: torch.Tensor, logits: torch.Tensor, context: FilterContext
    ) -> torch.Tensor | None:
        """Boolean mask over the batch (None: keep all, at a window's first step)."""
        position = self._calls if self.window is None else self._calls % self.window
        self._calls += 1
        params = [p for layer in context.layers for p in layer.params]
        capture, self._capture = self._capture, None
        if capture is not None and capture.output is not logits:
            capture = None  # recorded some other forward
        if position == 0 or self._anchor is None:
            self._check_loss(context.loss, logits)
            self._anchor = [p.detach().clone() for p in params]
            self._record_forwards(context.model, params)
            self._count(len(x), len(x))
            return None
        keep = self.scores(context, x, params, capture) > self.threshold
        self._count(int(keep.sum()), len(x))
        return keep

    def _count(self, kept: int, total: int) -> None:
        self.n_kept += kept
        self.n_removed += total - kept
        self.kept_fraction.append(kept / total)

    def _check_loss(self, loss, logits: torch.Tensor) -> None:
        """Fail at the first batch, not the second, if the loss cannot score logits alone."""
        if self._checked:
            return
        try:
            loss(logits.detach())
        except TypeError as error:
            raise ValueError(
                "sample filter 'grad-align' differentiates loss(logits) per sample, and this "
                f"loss has no such objective: {error}"
            ) from error
        self._checked = True

    def scores(
        self,
        context: FilterContext,
        x: torch.Tensor,
        params: Sequence[torch.nn.Parameter],
        capture: Capture | None = None,
    ) -> torch.Tensor:
        """cos_i of every sample (B,), against the current anchor."""
        td = [p.detach() - a for p, a in zip(params, self._anchor, strict=True)]
        if not any(bool(t.any()) for t in td):
            return x.new_ones(x.shape[0])  # TD = 0: every cosine is 1, no gradients needed
        with torch.enable_grad():
            if capture is not None:
                grads = capture.grads(capture.output, context.loss)
            else:
                self._busy = True  # our own forward is not to be recorded
                try:
                    grads = per_sample_grads(context.model, x, context.loss, params, self.method)
                finally:
                    self._busy = False
                self.n_extra_forward += 1
            self.n_extra_backward += 1
        lrs = _learning_rates(context.optimizer, params)
        terms = [_terms(g, t, lr) for g, t, lr in zip(grads, td, lrs, strict=True)]
        if self.granularity == "all":
            nsq, dot, td_sq = _total(terms)
            return alignment(nsq, dot, td_sq, nsq > 0)
        return self._layer_mean(context.layers, terms)

    def _record_forwards(self, model: torch.nn.Module, params: list) -> None:
        """Hook `model` so each forward under grad is recorded by an exact `Capture`.

        Then per-sample gradients reuse the engine's forward (one extra backward, no extra
        forward). Installed at a window's first step, removed by `reset()`.
        """
        if self._hooks or not self.share_forward or self.method == "vmap":
            return
        if not shares_forward(model, params):
            return

        def begin(module: torch.nn.Module, args: tuple) -> None:
            if torch.is_grad_enabled() and not self._busy:
                self._open = Capture(module, params, exact=True).__enter__()

        def end(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self._open is not None:
                self._open.__exit__(None, None, None)
                self._open.output, self._capture, self._open = output, self._open, None

        self._hooks = [
            model.register_forward_pre_hook(begin),
            model.register_forward_hook(end, always_call=True),
        ]

    @staticmethod
    def _layer_mean(layers, terms: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """Per-layer cosines averaged over the layers where the sample's update is nonzero."""
        cosines, counted, start = [], [], 0
        for layer in layers:
            nsq, dot, td_sq = _total(terms[start : start + len(layer.params)])
            start += len(layer.params)
            cosines.append(alignment(nsq, dot, td_sq, nsq > 0))
            counted.append(nsq > 0)
        cos, counted = torch.stack(cosines, 1), torch.stack(counted, 1)
        return (cos * counted).sum(1) / counted.sum(1).clamp_min(1)


def _terms(g: torch.Tensor, td: torch.Tensor, lr: float) -> tuple[torch.Tensor, ...]:
    """||u_i||^2 and <u_i, TD> for u_i = -lr * g_i (B,), and ||TD||^2, for one tensor."""
    g = g.flatten(1)
    return (lr * lr) * (g * g).sum(1), -lr * (g @ td.flatten()), (td * td).sum()


def _total(terms: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Sum the (||u||^2, <u, TD>, ||TD||^2) terms of several tensors."""
    return tuple(sum(term[k] for term in terms) for k in range(3))


def _learning_rates(optimizer: torch.optim.Optimizer, params) -> list[float]:
    """The learning rate of each parameter's group (1.0 without an optimizer)."""
    lr_of = {}
    for group in optimizer.param_groups if optimizer is not None else []:
        for p in group["params"]:
            lr_of[id(p)] = float(group["lr"])
    return [lr_of.get(id(p), 1.0) for p in params]
