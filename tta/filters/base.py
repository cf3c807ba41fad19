"""The interface of sample filters: which samples of a batch the loss may learn from."""

from __future__ import annotations

import torch

from tta.context import FilterContext


class SampleFilter:
    """Decides, per batch, which samples count.

    `keep` returns a boolean mask over the batch, or None for "keep every sample". A batch
    whose mask keeps nothing skips the step (counted by the engine). `needs_logit_objective`
    is True for filters that differentiate `loss(logits)` per sample; `tta.adapt` refuses
    them with losses whose objective needs more than the logits.
    """

    name = "filter"
    needs_logit_objective = False

    def keep(
        self, x: torch.Tensor, logits: torch.Tensor, context: FilterContext | None = None
    ) -> torch.Tensor | None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget state kept across batches (moving averages, anchors)."""

    def stats(self) -> dict[str, int]:
        """Counts over the whole run (samples kept and removed, extra passes)."""
        return {}

    def trace(self) -> dict:
        """Per-call record (e.g. the fraction of each batch kept)."""
        return {}
