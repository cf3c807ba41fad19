"""Input validation with errors that say what was wrong and how to fix it."""

from __future__ import annotations

import torch
from torch import nn


def expected_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution, if it has one."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def check_images(
    x: object, channels: int | None, value_range: tuple[float, float] | None
) -> torch.Tensor:
    """Check a batch of images: a float tensor (B, C, H, W) with values in `value_range`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (convert with x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"expected a floating-point image tensor, got dtype {x.dtype}{hint}")
    if x.ndim != 4:
        raise ValueError(
            f"expected images of shape (batch, channels, height, width), got shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for one image"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"the model's first convolution expects {channels} input channels, got shape "
            f"{tuple(x.shape)} with {x.shape[1]}; images must be (batch, channels, height, width)"
        )
    if value_range is not None and x.numel():
        low, high = value_range
        lo, hi = x.min().item(), x.max().item()
        if not (lo >= low - 1e-4 and hi <= high + 1e-4):
            raise ValueError(
                f"input values span [{lo:.3g}, {hi:.3g}] but the model expects [{low:g}, {high:g}]: "
                "tta models normalize inside the model, so pass unnormalized images "
                "(e.g. x / 255), or pass input_range=None if your model takes another range"
            )
    return x
