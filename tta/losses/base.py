"""The interface every loss implements: configure the model, then score a batch of logits."""

from __future__ import annotations

import torch
from torch import nn


class Loss:
    """An unsupervised test-time objective.

    `default_params` is the parameter set used when `tta.adapt(params=None)`; `adapts` is False
    for methods without a gradient step (source, norm).
    """

    name = "loss"
    default_params = "norm"
    adapts = True

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error if the model lacks what the method needs; runs before any change."""

    def configure(self, model: nn.Module) -> None:
        """Prepare the model (e.g. BatchNorm on batch statistics). Called once, before snapshot."""

    def reset(self) -> None:
        """Forget any state (moving averages) kept across batches."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy H(p) = -sum_c p_c log p_c of p = softmax(logits)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
