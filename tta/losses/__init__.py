"""Unsupervised test-time losses; importing this package registers them in `LOSSES`."""

from tta.functional import softmax_entropy
from tta.losses import cotta, deyo, eata, entropy, lame, norm, pl, sar, shot, source, tent  # noqa: F401
from tta.losses.base import Loss

__all__ = ["Loss", "softmax_entropy"]
