"""Small functions of logits shared by losses and sample filters."""

from __future__ import annotations

import torch


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy H(p) = -sum_c p_c log p_c of p = softmax(logits)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
