"""`entropy` sample filter: learn only from the reliable (low-entropy) samples of a batch.

EATA (Niu et al., "Efficient Test-Time Model Adaptation without Forgetting", ICML 2022,
Eqn. 3) and SAR (Niu et al., "Towards Stable Test-Time Adaptation in Dynamic Wild World",
ICLR 2023, Eqn. 2) keep a sample only when its prediction entropy is below
E0 = margin * ln C (C classes). Both official codes (mr-eggplant/EATA and mr-eggplant/SAR,
`main.py`) set E0 = 0.4 * ln(1000) for ImageNet, so `margin=0.4` is the default here. The
comparison is strict (`entropy < E0`), as theirs.

`reliable` is the one implementation of the test: the filter below uses it on its own (any
loss, `--sample-filter entropy`), and the `eta`/`eata` and `sar` methods reuse it.
"""

from __future__ import annotations

import math

import torch

from tta.context import FilterContext
from tta.filters.base import SampleFilter
from tta.functional import softmax_entropy
from tta.registry import SAMPLE_FILTERS


def entropy_margin(num_classes: int, margin: float = 0.4) -> float:
    """E0 = margin * ln C: the entropy below which a prediction counts as reliable."""
    return margin * math.log(num_classes)


def reliable(entropy: torch.Tensor, num_classes: int, margin: float = 0.4) -> torch.Tensor:
    """Boolean mask of the samples whose entropy is below `margin * ln(num_classes)`."""
    return entropy < entropy_margin(num_classes, margin)


def check_margin(margin: float, who: str) -> float:
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin > 0:
        raise ValueError(
            f"{who}: the entropy margin is a fraction of ln C (EATA/SAR use 0.4), a positive "
            f"number; got {margin!r}"
        )
    return float(margin)


@SAMPLE_FILTERS.register("entropy")
class EntropyFilter(SampleFilter):
    """Keep the samples with softmax entropy < margin * ln C (default margin 0.4).

    `n_kept` and `n_removed` count samples over the whole run (not reset by `reset()`).
    """

    name = "entropy"

    def __init__(self, margin: float = 0.4) -> None:
        self.margin = check_margin(margin, "sample filter 'entropy'")
        self.n_kept = 0
        self.n_removed = 0

    @torch.no_grad()
    def keep(
        self, x: torch.Tensor, logits: torch.Tensor, context: FilterContext | None = None
    ) -> torch.Tensor:
        mask = reliable(softmax_entropy(logits.detach()), logits.shape[1], self.margin)
        kept = int(mask.sum())
        self.n_kept += kept
        self.n_removed += mask.numel() - kept
        return mask

    def stats(self) -> dict[str, int]:
        return {"n_kept": self.n_kept, "n_removed": self.n_removed}
