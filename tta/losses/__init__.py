"""Unsupervised test-time losses; importing this package registers them in `LOSSES`."""

from tta.functional import softmax_entropy
from tta.losses import (  # noqa: F401
    adacontrast,
    cmf,
    cotta,
    deyo,
    eata,
    entropy,
    lame,
    memo,
    norm,
    pl,
    rdumb,
    rmt,
    roid,
    rotta,
    santa,
    sar,
    shot,
    source,
    t3a,
    tent,
    ttaug,
)
from tta.losses.base import Loss

__all__ = ["Loss", "softmax_entropy"]
