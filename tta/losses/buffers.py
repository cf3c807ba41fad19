"""Saving and restoring a model's buffers (normalization statistics), for methods that decide
which forward passes may move them.

Stateful normalization modes (`robust`, `ema`, `window`) update their statistics on every
forward. RoTTA's official code moves them only in its memory-bank passes (train mode) and not
when it predicts the test batch (eval mode); RMT and SANTA forward source images that should
not move the test statistics. These helpers give that control without touching the modes:
the buffers are read as a state dict and loaded back through `load_state_dict`, so modes
that mirror a buffer on the host (`window`'s sample count) stay consistent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def buffer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every buffer of `model`, by state-dict name (empty when it has none)."""
    names = {name for name, _ in model.named_buffers()}
    return {name: value.clone() for name, value in model.state_dict().items() if name in names}


def load_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back the buffers saved by `buffer_state` that have changed since; parameters and
    unchanged buffers are left alone (an eval-mode BatchNorm's statistics may be saved for a
    backward pass still to come, which an in-place copy would invalidate)."""
    current = model.state_dict()
    changed = {
        name: value for name, value in state.items() if not torch.equal(current[name], value)
    }
    if changed:
        model.load_state_dict(changed, strict=False)


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Forward passes inside the block leave the model's buffers as they were."""
    state = buffer_state(model)
    try:
        yield
    finally:
        load_buffers(model, state)


@contextmanager
def stored_statistics(model: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers that keep running statistics (`robust`, `ema`,
    `source`) normalize with them as stored and do not update them: their momentum is 0, so
    (1 - 0) * stored + 0 * batch = stored. This is the official eval mode of RoTTA's robust
    BatchNorm; the buffers are also restored afterwards (for `window`, which has no momentum)."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.running_mean is not None
        and m.momentum is not None
    ]
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        with frozen_buffers(model):
            yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
