"""`gala`: Sahoo et al., "A Layer Selection Approach to Test Time Adaptation", AAAI 2025.

Gradient-Aligned Layer Adaptation. Every step the optimizer proposes an update u_l for each
layer l; each layer has an anchor (its parameters at the start of the current window) and a
total displacement TD_l = theta_l - anchor_l, with theta_l the parameters before this step.
The alignment of the proposal with the direction the layer has been moving is

    cos_l = <u_l, u_l + TD_l> / (||u_l|| * ||u_l + TD_l||)

and a layer with u_l = 0 is not a candidate. Defaults (the paper's):

- The search space is every layer: with `params=None`, `tta.adapt` lets every parameter
  train (`default_params = "all"`), whatever the loss's own default (TENT's is the norm
  layers). Measured on fmnist-c (README): TENT's objective over all parameters collapses
  with `all` layers and not with GALA. Pass `params="norm"` to search the norm layers only.

- `threshold=0.75` (lambda). `variant="single"`: only the layer with the largest cos_l keeps
  its update, and only if cos_l > threshold; otherwise the step is skipped (all scales 0, the
  engine counts it in `n_skipped`). `variant="multi"`: every layer with cos_l > threshold.
- `window=20` (s), in adaptation steps (one per batch and step, `proposal.step`, counted by
  the engine whatever number of forward passes the loss runs: SAR's two, CoTTA's ~34): at
  the first step of each window the anchor moves to the current parameters (the weights are
  NOT reset) and every layer keeps its update (TD = 0, so every cosine is 1). A step the
  loss skipped before any proposal (e.g. EATA kept no sample) still counts; if it was a
  window's first, the window's first proposal moves the anchor instead. `window=None`,
  `0`, `"inf"` or `float("inf")`: no reset, the anchor stays at the first step's
  parameters.
- `granularity="module"` (alias "layer": one module that owns parameters, flattened),
  `"block"` (network stages, see `tta.layers`; `block_patterns` overrides discovery) or
  `"tensor"`. The engine partitions the trainable parameters at this granularity.
- `damping=None` (off). The paper damps "a few initial samples" of each window without
  giving the form; ours: with `damping=f`, the kept updates of the `damping_steps` (default
  3) steps that follow a window's first step are scaled by f (the engine commits
  before + f * u). The window's first, all-layer step is not damped.

Cost over the base method: one flat copy of the trainable parameters (the anchors); per
step two concatenations, three elementwise products and three segment sums over the
parameters (O(#params), no Python loop over elements, no extra forward or backward), and
one device-to-host copy of the per-layer cosines.

With Adam (or SGD with momentum) the optimizer steps every trainable parameter, so the
moment estimates (and Adam's step count) of every layer are updated, including layers
whose change GALA drops: the gradient was observed. Only the weights of unselected layers
stay put; when such a layer is selected later its step uses moments that have seen every
gradient since adaptation began.

`trace()` records one row per call: the stream step (`proposal.step`), the position in the
window, the selected layer indices, whether the step was skipped, and the cosine of every
layer (float32, NaN for a layer with u = 0). `reset()` (called by the engine's reset, e.g.
at every shift of `reset-each-shift`) restarts the window but keeps the trace, which is the
record of the whole run; `clear_trace()` drops it. In the episodic setting every batch
starts from the source weights and a new window, so every step updates all layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal

VARIANTS = ("single", "multi")
GRANULARITIES = {"module": "module", "layer": "module", "block": "block", "tensor": "tensor"}


def parse_window(window: int | float | str | None) -> int | None:
    """Steps per reset window; None means no reset (s = infinity)."""
    if window is None or window == 0 or str(window).lower() in ("inf", "none"):
        return None
    if isinstance(window, int | float) and not isinstance(window, bool):
        if math.isinf(window):
            return None
        if window > 0 and window == int(window):
            return int(window)
    raise ValueError(
        f"window must be a positive integer, or 0/None/'inf' for no reset; got {window!r}"
    )


def _flat(tensors: list[list[torch.Tensor]]) -> torch.Tensor:
    """All layers' tensors as one new vector, layer after layer."""
    return torch.cat([t.reshape(-1) for layer in tensors for t in layer])


def _check_options(threshold, granularity, variant, block_patterns, damping, damping_steps) -> None:
    """Fail when the selector is built, naming the bad option."""
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
        )
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if block_patterns and GRANULARITIES[granularity] != "block":
        raise ValueError("block_patterns needs granularity='block'")
    if damping is not None and not float(damping) > 0:
        raise ValueError(f"damping is a positive factor (e.g. 0.5) or None, got {damping}")
    if int(damping_steps) < 0:
        raise ValueError(f"damping_steps must be >= 0, got {damping_steps}")


@LAYER_SELECTORS.register("gala")
class Gala(LayerSelector):
    """GALA layer selection; see the module docstring for the algorithm and its options."""

    name = "gala"
    needs_proposal = True
    default_params = "all"  # the paper's search space: every layer (conv, BN, fc)

    def __init__(
        self,
        threshold: float = 0.75,
        window: int | float | str | None = 20,
        granularity: str = "module",
        variant: str = "single",
        block_patterns: Sequence[str] | str | None = None,
        damping: float | None = None,
        damping_steps: int = 3,
    ) -> None:
        if isinstance(damping, str) and damping.lower() == "none":
            damping = None  # as the CLI passes it
        _check_options(threshold, granularity, variant, block_patterns, damping, damping_steps)
        self.threshold = float(threshold)
        self.window = parse_window(window)
        self.granularity = GRANULARITIES[granularity]
        self.variant = variant
        self.block_patterns = block_patterns
        self.damping = None if damping is None else float(damping)
        self.damping_steps = int(damping_steps)
        self.reset()
        self.clear_trace()

    def reset(self) -> None:
        """Restart the window: the next call moves the anchor and updates every layer."""
        self._origin: int | None = None  # the step the current run of windows started at
        self._window_index: int | None = None
        self._anchor: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None

    def clear_trace(self) -> None:
        self._rows: dict[str, list] = {
            "step": [],
            "window_position": [],
            "selected": [],
            "skipped": [],
            "cosine": [],
        }
        self._layer_names: list[str] = []

    @torch.no_grad()
    def select(self, proposal: Proposal) -> list[float]:
        if self._origin is None:
            self._origin = proposal.step
        elapsed = proposal.step - self._origin
        position = elapsed if self.window is None else elapsed % self.window
        window_index = 0 if self.window is None else elapsed // self.window
        new_window = window_index != self._window_index
        self._window_index = window_index
        cosines = self.cosines(proposal, new_window=new_window)
        if new_window:
            selected = [i for i, c in enumerate(cosines) if not np.isnan(c)]
            scales = [1.0] * len(cosines)
        else:
            selected = self._choose(cosines)
            scale = self._scale(position)
            scales = [0.0] * len(cosines)
            for i in selected:
                scales[i] = scale
        self._record(proposal, position, selected, not any(scales), cosines)
        return scales

    def cosines(self, proposal: Proposal, new_window: bool = False) -> np.ndarray:
        """cos_l of every layer (NaN where u_l = 0); `new_window` first moves the anchor."""
        u = _flat(proposal.updates)
        theta = _flat(proposal.before)
        if new_window or self._anchor is None:
            self._anchor = theta  # a fresh buffer: the one copy GALA keeps
            self._lengths = torch.tensor(
                [sum(t.numel() for t in layer) for layer in proposal.updates], device=u.device
            )
            w = u  # TD = 0
        else:
            w = theta.sub_(self._anchor).add_(u)  # u + TD, in theta's buffer
        uu, uw, ww = (
            torch.segment_reduce(a * b, "sum", lengths=self._lengths)
            for a, b in ((u, u), (u, w), (w, w))
        )
        denominator = (uu * ww).sqrt()
        cos = torch.where(denominator > 0, uw / denominator, torch.zeros_like(uw)).clamp_(-1, 1)
        cos = torch.where(uu > 0, cos, torch.full_like(cos, float("nan")))
        return cos.to(torch.float32).cpu().numpy()

    def _choose(self, cosines: np.ndarray) -> list[int]:
        """Indices of the layers that keep their update (all NaN/low cosines: none)."""
        passing = cosines > self.threshold  # NaN compares False
        if self.variant == "multi":
            return [int(i) for i in np.flatnonzero(passing)]
        if not passing.any():
            return []
        return [int(np.nanargmax(cosines))]

    def _scale(self, position: int) -> float:
        if self.damping is not None and 1 <= position <= self.damping_steps:
            return self.damping
        return 1.0

    def _record(
        self,
        proposal: Proposal,
        position: int,
        selected: list[int],
        skipped: bool,
        cosines: np.ndarray,
    ) -> None:
        if not self._layer_names:
            self._layer_names = [layer.name for layer in proposal.layers]
        rows = self._rows
        rows["step"].append(int(proposal.step))
        rows["window_position"].append(position)
        rows["selected"].append(selected)
        rows["skipped"].append(skipped)
        rows["cosine"].append(cosines)

    def trace(self) -> dict:
        """One entry per call; `cosine` is a float32 array (calls, layers). Empty before any call."""
        if not self._rows["step"]:
            return {}
        return {
            **{key: list(values) for key, values in self._rows.items() if key != "cosine"},
            "cosine": np.stack(self._rows["cosine"]).astype(np.float32),
            "layer_names": list(self._layer_names),
        }
