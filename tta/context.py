"""What the engine shows its parts: counters of work, and the narrow contexts that losses and
sample filters see instead of the engine itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tta.layers import Layer


@dataclass
class Counters:
    """How much work the engine did; reported in every result."""

    n_forward: int = 0
    n_backward: int = 0
    n_steps: int = 0
    n_skipped: int = 0
    n_nonfinite: int = 0
    n_filtered_samples: int = 0
    n_resets: int = 0  # returns to the source by the engine's `reset_every` (RDumb)

    @property
    def step_index(self) -> int:
        """Adaptation steps attempted so far (one per batch and step), committed or skipped."""
        return self.n_steps + self.n_skipped

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class LossContext:
    """What a loss sees of the adapting model: the model, its trainable parameters, a way to
    count the passes and samples it spends, and a way to ask for a return to the source.

    `request_reset()` restores the source weights and buffers and the state of the loss,
    selector and filter; the optimizer's state (e.g. SGD momentum) is kept, as SAR's
    official model recovery keeps it. `backward(loss)` is `loss.backward()` scaled by the
    float16 gradient scaler when one runs (`tta.precision`), and counted.
    """

    model: nn.Module
    named_params: tuple[tuple[str, nn.Parameter], ...]
    counters: Counters
    request_reset: Callable[[], None]
    grad_scaler: Any = None  # a torch.amp.GradScaler under amp='fp16'

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_params]

    def count_forward(self, n: int = 1) -> None:
        self.counters.n_forward += n

    def count_backward(self, n: int = 1) -> None:
        self.counters.n_backward += n

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` (scaled under float16, see `tta.precision`) and count it."""
        (loss if self.grad_scaler is None else self.grad_scaler.scale(loss)).backward()
        self.count_backward()

    def count_filtered(self, n: int) -> None:
        """Samples of this batch the loss decided not to learn from."""
        self.counters.n_filtered_samples += n


@dataclass(frozen=True)
class FilterContext:
    """What a sample filter may look at besides the batch: the model, its trainable layers,
    the loss (a callable on logits, for filters that differentiate it) and the optimizer
    (its learning rates)."""

    model: nn.Module
    layers: list[Layer]
    loss: Any
    optimizer: torch.optim.Optimizer | None
