"""`rdumb`: Press, Schneider, Kümmerer and Bethge, "RDumb: A simple approach that questions our
progress in continual test-time adaptation", NeurIPS 2023.

ETA (tta/losses/eata.py: EATA's entropy and redundancy filters and sample weighting, no
Fisher penalty) with a return to the source every 1000 adaptation steps: the weights,
BatchNorm buffers, optimizer state and ETA's moving average of the predictions go back to
what they were after configuration. The reset is the engine's (`tta.adapt(...,
reset_every=N)`, `tta-run --reset-every N`), so any method can use it; this loss only sets
its default, `default_reset_every = 1000`. A step counts whether it was committed or
skipped (ETA kept no sample), as the official counter counts every `forward_and_adapt`.

Official code: mariodoebler/test-time-adaptation, `classification/methods/base.py`
(`RESET_AFTER_NUM_UPDATES`, the reset after `performed_updates % N == 0`) with
`methods/eata.py`, configs `cfgs/{cifar10_c,cifar100_c,imagenet_c}/rdumb.yaml`
(`FISHER_ALPHA: 0`); the authors' code is oripress/CCC.

Presets (`presets`): those configs: `cifar` Adam 1e-3, batch 200, d_margin 0.4 (also on
CIFAR-100-C, where plain ETA's config uses 0.1); `imagenet` SGD 2.5e-4, momentum 0.9,
batch 64, d_margin 0.05. Mixed precision as ETA: bfloat16 or float16 (its backward goes
through the scaler). Deviations: ETA's (tta/losses/eata.py). A reset forgets ETA's
moving average of the predictions, as the official `EATA.reset` does.
"""

from __future__ import annotations

from tta.losses.eata import EtaLoss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES

RESET_EVERY = 1000


@LOSSES.register("rdumb")
class RDumbLoss(EtaLoss):
    """ETA, reset to the source every 1000 adaptation steps by the engine."""

    name = "rdumb"
    default_reset_every = RESET_EVERY
    presets = {
        "cifar": cifar_adam(options={"d_margin": 0.4}),
        "imagenet": imagenet_sgd(options={"d_margin": 0.05}),
    }
