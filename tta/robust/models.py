"""What `tta-robust` evaluates: a model by name and the clean Fashion-MNIST test images.

`source`: the shipped fmnist-c source ResNet-20 (`tta.models.source`, what
`tta.models.zoo.default_model_for` gives for fmnist-c); `robust`: the adversarially trained
one (`tta.robust.train`, trained on first use); anything else is a `--model` spec of
`tta.models.zoo.load_model` (torchvision:, timm:, a checkpoint with ,arch=) checked to
predict 10 classes on 3x32x32 images.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.data.fmnist import load_fmnist

BUILT_IN = ("source", "robust")


def load_named_model(spec: str, data_root: str | None = None) -> tuple[nn.Module, dict]:
    """The model `spec` names, in eval mode, and an info dict for the protocol."""
    if spec == "source":
        from tta.models.source import source_model

        model, checkpoint = source_model(data_root=data_root)
        return model, {"model": "source", "checkpoint": checkpoint["config"]}
    if spec == "robust":
        from tta.robust.train import RobustTrainConfig, robust_model

        model, checkpoint = robust_model(RobustTrainConfig(), data_root)
        return model, {"model": "robust", "checkpoint": checkpoint["config"]}
    from tta.models.zoo import load_model

    model, info = load_model(spec, num_classes=10, image_size=32)
    return model.eval(), {"model": spec, **{k: str(v) for k, v in info.items()}}


def fmnist_images(
    split: str = "test", n: int | None = None, data_root: str | None = None, last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) float in [0, 1] and labels of Fashion-MNIST `split`: its first
    `n` samples (its last `n` with `last`; all when n is None)."""
    images, labels = load_fmnist(split, data_root)
    n = len(images) if n is None else n
    offset = len(images) - n if last else 0
    end = offset + n
    if offset < 0 or end > len(images):
        raise ValueError(f"{split} has {len(images)} images; asked for {offset}..{end}")
    x = torch.from_numpy(images[offset:end]).permute(0, 3, 1, 2).float() / 255
    return x.contiguous(), torch.from_numpy(labels[offset:end])
