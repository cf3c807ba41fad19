"""`redundancy` sample filter: EATA's filter of samples that repeat what was already learned.

Niu et al., "Efficient Test-Time Model Adaptation without Forgetting", ICML 2022, Eqns. 4-5,
as the official code (mr-eggplant/EATA, `eata.py`: `forward_and_adapt_eata` and
`update_model_probs`) does it:

- a sample is redundant when the cosine similarity between its softmax prediction and the
  moving average m of the predictions of previously kept samples is >= d_margin
  (the code keeps `|cos| < d_margin`; probabilities are non-negative, so |cos| = cos);
- before any average exists every sample passes, and m is first set to the mean prediction
  of the samples kept then (in EATA: the reliable ones);
- afterwards m <- 0.9 m + 0.1 mean(p of the samples kept this batch); a batch that keeps no
  sample leaves m unchanged.

d_margin defaults to 0.05, the official ImageNet value; CIFAR-10 uses 0.4 (the EATA paper;
the `cifar` presets set it). The average is computed from detached probabilities.

`non_redundant` and `update_average` are the one implementation: the filter below uses them
on its own (any loss, `--sample-filter redundancy`), and the `eta`/`eata` methods reuse them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta.context import FilterContext
from tta.filters.base import SampleFilter
from tta.registry import SAMPLE_FILTERS

MOMENTUM = 0.9  # m <- 0.9 m + 0.1 mean(p), fixed in the official code


def non_redundant(
    probs: torch.Tensor, average: torch.Tensor | None, d_margin: float
) -> torch.Tensor:
    """Boolean mask of the samples whose prediction is not redundant with `average`.

    `probs` is (B, C) softmax probabilities; with no average yet every sample passes.
    """
    if average is None:
        return torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    cosine = F.cosine_similarity(average.unsqueeze(0), probs, dim=1)
    return cosine.abs() < d_margin


@torch.no_grad()
def update_average(
    average: torch.Tensor | None, kept_probs: torch.Tensor, momentum: float = MOMENTUM
) -> torch.Tensor | None:
    """The moving average of kept predictions after this batch (EATA's `update_model_probs`)."""
    if kept_probs.shape[0] == 0:
        return average
    mean = kept_probs.detach().mean(0)
    return mean if average is None else momentum * average + (1 - momentum) * mean


def check_d_margin(d_margin: float, who: str) -> float:
    if isinstance(d_margin, bool) or not isinstance(d_margin, int | float) or not d_margin > 0:
        raise ValueError(
            f"{who}: d_margin is a cosine-similarity threshold, a positive number "
            f"(EATA: 0.05 ImageNet, 0.4 CIFAR-10); got {d_margin!r}"
        )
    return float(d_margin)


@SAMPLE_FILTERS.register("redundancy")
class RedundancyFilter(SampleFilter):
    """Drop samples whose prediction has cosine similarity >= d_margin with the moving average.

    The average covers the samples this filter kept (when used on its own it does not know
    whether the loss later drops more). `reset()` forgets it. `n_kept` and `n_removed` count
    samples over the whole run.
    """

    name = "redundancy"

    def __init__(self, d_margin: float = 0.05) -> None:
        self.d_margin = check_d_margin(d_margin, "sample filter 'redundancy'")
        self.average: torch.Tensor | None = None
        self.n_kept = 0
        self.n_removed = 0

    @torch.no_grad()
    def keep(
        self, x: torch.Tensor, logits: torch.Tensor, context: FilterContext | None = None
    ) -> torch.Tensor:
        probs = logits.detach().softmax(1)
        mask = non_redundant(probs, self.average, self.d_margin)
        self.average = update_average(self.average, probs[mask])
        kept = int(mask.sum())
        self.n_kept += kept
        self.n_removed += mask.numel() - kept
        return mask

    def reset(self) -> None:
        self.average = None

    def stats(self) -> dict[str, int]:
        return {"n_kept": self.n_kept, "n_removed": self.n_removed}
