"""The interface every loss (method) implements.

A plain loss only implements `__call__(logits) -> scalar`. Methods that need more hook into
the engine's step (see tta/engine.py): `backward` (e.g. SAR's two-pass sharpness-aware
gradient, EATA's weighting), `output` (what the user gets back, e.g. CoTTA's teacher) and
`after_update` (e.g. an EMA teacher, stochastic restore, SAR's recovery). The hooks see a
`LossContext` (the model, the trainable parameters, work counters, a reset request), never
the engine; per-loss numbers are reported through `stats()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from tta.context import LossContext
from tta.presets import Preset


class Loss:
    """An unsupervised test-time objective.

    `default_params` is the parameter set used when `tta.adapt(params=None)`, `default_norm`
    the normalization mode when `norm=None` (the paper's); `adapts` is False
    for methods without a gradient step (source, norm). `presets` (family -> Preset, see
    tta/presets.py) are the method's recommended settings, declared beside its defaults.
    """

    name = "loss"
    default_params = "norm"
    default_norm = "source"  # what BatchNorm normalizes with unless `norm=` says otherwise
    presets: ClassVar[Mapping[str, Preset]] = {}
    adapts = True
    default_reset_every = 0  # engine resets to the source every N steps (RDumb: 1000); 0: never
    scores_logits_alone = True  # False when the objective needs more than the logits (images)

    def params_for(self, model: nn.Module) -> str | list[str]:
        """The parameter set used for `params=None` (model-dependent for SAR and DeYO)."""
        return self.default_params

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error if the model lacks what the method needs; runs before any change."""

    def configure(self, model: nn.Module) -> None:
        """Prepare the model (e.g. a teacher copy). Called once, after the normalization mode
        configured BatchNorm and before the snapshot that `reset()` restores."""

    def reset(self) -> None:
        """Forget any state (moving averages) kept across batches."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Fill the trainable parameters' .grad; return the detached loss, or None to skip."""
        loss = self(logits if keep is None else logits[keep])
        context.backward(loss)
        return loss.detach()

    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The predictions returned for this batch (default: the logits before the update)."""
        return logits

    def after_update(self, context: LossContext) -> None:
        """Runs after every committed update."""

    def stats(self) -> dict[str, int | float]:
        """Counts worth reporting (e.g. samples each filter removed); shown in results.json."""
        return {}
