"""Unsupervised test-time losses; importing this package registers them in `LOSSES`."""

from tta.losses import cotta, deyo, eata, entropy, lame, norm, pl, sar, shot, source, tent  # noqa: F401
from tta.losses.base import Loss, softmax_entropy

__all__ = ["Loss", "softmax_entropy"]
