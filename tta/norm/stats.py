"""Per-channel statistics of a BatchNorm input, over every dimension but the channels."""

from __future__ import annotations

import torch


def channel_dims(x: torch.Tensor) -> list[int]:
    """(B, C, ...) -> the dimensions averaged over: batch and spatial, not channels."""
    if x.ndim < 2:
        raise ValueError(f"BatchNorm expects (batch, channels, ...), got shape {tuple(x.shape)}")
    return [d for d in range(x.ndim) if d != 1]


def batch_stats(x: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, variance) of a batch; `unbiased` as BatchNorm's running update."""
    var, mean = torch.var_mean(x, dim=channel_dims(x), correction=1 if unbiased else 0)
    return mean, var


def normalize(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, broadcast over the channel dimension."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape) + bias.view(shape)
    return out
