"""The interface of layer selectors, and the proposal a selector judges."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tta.layers import Layer


@dataclass
class Proposal:
    """What the optimizer proposed this step, per layer.

    `updates[i]` and `before[i]` are lists of tensors aligned with `layers[i].params`:
    the proposed change u (after - before) and the parameters before the step.
    """

    step: int
    layers: list[Layer]
    before: list[list[torch.Tensor]]
    updates: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor | None]] = field(default_factory=list)


class LayerSelector:
    """Decides which layers keep their proposed update.

    `needs_proposal=False` means "keep every update" and lets the engine skip the
    proposal/commit bookkeeping entirely (the fast path of plain methods).
    `select` returns one scale per layer: 0 drops the update, 1 keeps it, other values
    scale it (AutoRGN); returning all zeros skips the step.
    """

    name = "selector"
    needs_proposal = True
    granularity = "module"
    default_params: str | None = None  # the parameter set when params=None (None: the loss's)
    # Steps after a reset that only collect (and skip): an episodic run needs more steps.
    warmup_steps = 0

    def bind(self, model: nn.Module, layers: list[Layer]) -> None:
        """Called once by `tta.adapt` with the model and its layers, before the first step.

        Selectors that decide from module types or layer names (`norm`, `fixed`) resolve and
        validate their choice here, so a mistake surfaces when the model is wrapped.
        """

    def reset(self) -> None:
        """Forget state kept across steps (anchors, windows)."""

    def select(self, proposal: Proposal) -> list[float]:
        raise NotImplementedError

    def trace(self) -> dict:
        """Per-step record of the decisions (for plots and results.json)."""
        return {}
