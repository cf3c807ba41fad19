"""`tent`: Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021.

As the official code (DequanWang/tent): minimize the batch-mean prediction entropy; train only
the affine weight/bias of the normalization layers (`params='norm'`); every BatchNorm
normalizes with the current batch's statistics (running statistics dropped, in train and
eval mode: `default_norm = "batch"`; `norm=` picks another mode); one step per batch; the returned logits are those of the forward pass before the
update. Defaults of the paper: CIFAR Adam lr 1e-3 (betas 0.9/0.999, no weight decay), batch
200; ImageNet SGD lr 2.5e-4, momentum 0.9, batch 64.

Presets: those two settings (TENT paper and DequanWang/tent configs).

One deliberate difference: the official code calls `model.train()` on the whole model; we put
only the BatchNorm layers in train mode, so dropout (if any) stays off. For models without
dropout the two are identical.
"""

from __future__ import annotations

from tta.losses.entropy import EntropyLoss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


@LOSSES.register("tent")
class TentLoss(EntropyLoss):
    name = "tent"
    default_params = "norm"
    default_norm = "batch"  # running statistics dropped, as the official configure_model
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}
