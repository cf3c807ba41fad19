"""`tent`: Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021.

As the official code (DequanWang/tent): minimize the batch-mean prediction entropy; train only
the affine weight/bias of the normalization layers (`params='norm'`); every BatchNorm
normalizes with the current batch's statistics (running statistics dropped, in train and
eval mode); one step per batch; the returned logits are those of the forward pass before the
update. Defaults of the paper: CIFAR Adam lr 1e-3 (betas 0.9/0.999, no weight decay), batch
200; ImageNet SGD lr 2.5e-4, momentum 0.9, batch 64.

Presets: those two settings (TENT paper and DequanWang/tent configs).

One deliberate difference: the official code calls `model.train()` on the whole model; we put
only the BatchNorm layers in train mode, so dropout (if any) stays off. For models without
dropout the two are identical.
"""

from __future__ import annotations

from torch import nn

from tta.losses.entropy import EntropyLoss
from tta.norm.base import require_batchnorm
from tta.norm.batch import use_batch_statistics
from tta.norm.window import check_window, use_window_statistics
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


@LOSSES.register("tent")
class TentLoss(EntropyLoss):
    name = "tent"
    default_params = "norm"
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __init__(self, bn_window: int | None = None) -> None:
        """`bn_window`: normalize with the last W samples' statistics (batch size 1)."""
        check_window(bn_window)
        self.bn_window = bn_window

    def check_model(self, model: nn.Module) -> None:
        require_batchnorm(model, "loss 'tent'")

    def configure(self, model: nn.Module) -> None:
        model.eval()
        use_batch_statistics(model)
        if self.bn_window:
            use_window_statistics(model, self.bn_window)
