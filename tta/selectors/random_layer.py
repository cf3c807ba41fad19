"""`random`: one layer drawn uniformly at random takes its update each step.

The control for GALA (Sahoo et al., "A Layer Selection Approach to Test Time Adaptation",
AAAI 2025): it updates as few layers per step as GALA's default, but ignores the gradients, so
any gap between the two is what gradient alignment buys.

Options: `seed=0` (the same seed gives the same sequence of draws), `k=1` (layers per step,
drawn without replacement), `granularity="module"` (and `block_patterns` for "block"). As in
GALA, a layer whose proposed update is exactly zero is not a candidate; a step with no
candidate is skipped. `reset()` does not re-seed: an episodic run (reset before every batch)
still draws a new layer each batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal


def nonzero_layers(proposal: Proposal) -> list[int]:
    """Indices of the layers whose proposed update is not all zeros (one device sync)."""
    flags = [torch.stack([u.ne(0).any() for u in updates]).any() for updates in proposal.updates]
    if not flags:
        return []
    return [i for i, flag in enumerate(torch.stack(flags).tolist()) if flag]


@LAYER_SELECTORS.register("random")
class RandomLayer(LayerSelector):
    name = "random"

    def __init__(
        self,
        seed: int = 0,
        k: int = 1,
        granularity: str = "module",
        block_patterns: Sequence[str] | str | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"selector 'random': k must be a positive integer, got {k!r}")
        self.seed = seed
        self.k = k
        self.granularity = granularity
        self.block_patterns = block_patterns
        self._rng = random.Random(seed)
        self._trace: dict[str, list] = {"step": [], "selected": [], "skipped": []}

    def select(self, proposal: Proposal) -> list[float]:
        candidates = nonzero_layers(proposal)
        chosen = sorted(self._rng.sample(candidates, min(self.k, len(candidates))))
        self._trace["step"].append(proposal.step)
        self._trace["selected"].append(chosen)
        self._trace["skipped"].append(not chosen)
        return [1.0 if i in chosen else 0.0 for i in range(len(proposal.layers))]

    def trace(self) -> dict:
        return {key: list(values) for key, values in self._trace.items()}
