"""Input normalization inside the model, so data stays in [0, 1] whatever the model expects.

`Normalized` puts a network behind the mean/std its own weights were trained with (taken
from torchvision's weight transforms or timm's pretrained config, never assumed).
`find_normalization` reports the normalization a model already carries (robustbench's
`ImageNormalizer`, the `mu`/`sigma` buffers of its AugMix models, our `Normalize`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tta.models.resnet import Normalize


class Normalized(nn.Module):
    """`net` with its input normalization in front: feed it images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(tuple(mean), tuple(std))
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


BUFFER_PAIRS = (("mean", "std"), ("mu", "sigma"))


def find_normalization(model: nn.Module) -> dict[str, list[float]] | None:
    """Mean and std of a normalization the model applies to its input, if it has one.

    Looks for a (mean, std) or (mu, sigma) pair of 3-value buffers on the model itself or on
    one of its direct children (where robustbench's and our wrappers keep them).
    """
    for module in (model, *model.children()):
        buffers = dict(module.named_buffers(recurse=False))
        for mean_name, std_name in BUFFER_PAIRS:
            mean, std = buffers.get(mean_name), buffers.get(std_name)
            if mean is not None and std is not None and mean.numel() == std.numel() == 3:
                return {
                    "mean": [round(float(v), 6) for v in mean.flatten()],
                    "std": [round(float(v), 6) for v in std.flatten()],
                }
    return None
