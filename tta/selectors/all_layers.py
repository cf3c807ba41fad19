"""`all`: every trainable layer takes its update every step (the base methods' own behaviour)."""

from __future__ import annotations

from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal


@LAYER_SELECTORS.register("all")
class AllLayers(LayerSelector):
    name = "all"
    needs_proposal = False

    def select(self, proposal: Proposal) -> list[float]:
        return [1.0] * len(proposal.layers)
