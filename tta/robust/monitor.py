"""The pieces of a brittleness monitor for adaptation streams (issue 11, item 4; the stream
wiring lives in the harness, not here).

Calibrate once on clean source data: input margins of n source images (a minimum-norm
attack), then the logit-margin threshold that flags 95% of those non-robust at eps
(`threshold_at_tpr`, as the subset estimate of Ngnawé et al., NeurIPS 2024). During a
stream, per batch, `brittle_fraction(logits, threshold)` is the share of samples whose
logit margin is at or below it, from the logits the model computes anyway: before
adaptation (the source model's logits) and after (the adapted model's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from tta.robust.detection import brittle_fraction, nonrobust, threshold_at_tpr
from tta.robust.margins import input_margins, logit_margin
from tta.robust.state import attack_state

__all__ = ["BrittlenessThreshold", "brittle_fraction", "calibrate_threshold"]


@dataclass(frozen=True)
class BrittlenessThreshold:
    """A logit-margin threshold and how it was calibrated (JSON-friendly via `to_dict`)."""

    threshold: float
    eps: float
    tpr: float
    norm: str
    method: str
    n_images: int
    nonrobust_share: float  # % of the calibration images non-robust at eps

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(
    model: nn.Module,
    images: torch.Tensor,
    eps: float = 8 / 255,
    norm: str = "Linf",
    method: str = "bisection",
    tpr: float = 0.95,
    batch_size: int = 250,
    seed: int = 0,
    **options: float,
) -> BrittlenessThreshold:
    """The threshold flagging `tpr` of the clean `images` that are non-robust at `eps`."""
    with attack_state(model) as net:
        with torch.no_grad():
            d_out = torch.cat(
                [
                    logit_margin(net(images[b : b + batch_size]))
                    for b in range(0, len(images), batch_size)
                ]
            )
        d_in = input_margins(net, images, norm, method, batch_size, seed, **options).margins
    flags = nonrobust(d_in, eps)
    return BrittlenessThreshold(
        threshold=threshold_at_tpr(d_out, flags, tpr),
        eps=eps,
        tpr=tpr,
        norm=norm,
        method=method,
        n_images=len(images),
        nonrobust_share=100.0 * float(flags.mean()),
    )
