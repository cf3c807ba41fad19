"""Mixed precision for the engine: autocast, a gradient scaler for float16, channels-last.

`Precision(amp="bf16" | "fp16" | None, channels_last=False)` is what `tta.adapt(amp=...,
channels_last=...)` builds; the engine runs every forward pass of a step (the model's, and
those a loss runs itself: SAR's second pass, a teacher, augmented copies) under
`torch.autocast` with that dtype, and the optimizer step, the layer selector and the
after-update hooks (EMA teachers, restores) outside it. The weights, the optimizer state and
the returned logits stay float32; only the arithmetic of the forward passes is reduced.

- bfloat16 has float32's exponent range, so gradients need no scaling: every method runs.
- float16 gradients underflow without loss scaling, so a `torch.amp.GradScaler` scales the
  loss before backward, the engine unscales the gradients before the optimizer (and before
  the layer selector and the non-finite check) and updates the scale after every step; a
  step whose scaled gradient overflowed is skipped (counted in `n_nonfinite`) and the scale
  halves. Scaling happens in `LossContext.backward`, so only losses whose every backward goes
  through it can use float16: those using the default `Loss.backward` (tent, entropy,
  shot-im, shot) and those that declare `grad_scaling = True` (every other shipped loss
  that trains: sar, eta/eata, rdumb, cotta, deyo, pl, memo, roid, cmf, adacontrast, rotta,
  rmt, santa). SAR's SAM perturbation rho g / ||g|| is the same for scaled gradients (an
  overflow makes the second pass non-finite, so the step is skipped and the weights
  restored). A loss that calls `.backward()` itself without declaring it is refused with
  float16 and runs with bfloat16; training-free ones (source, norm, lame, t3a, ttaug) run
  with either.
- `channels_last` stores the model's 4-D weights and every 4-D input batch in NHWC order
  (faster convolutions on GPUs with tensor cores); image models only.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from tta.checks import input_kind
from tta.losses.base import Loss

AMP_DTYPES = MappingProxyType({"bf16": torch.bfloat16, "fp16": torch.float16})


def check_amp(amp: object) -> str | None:
    """`amp` as 'bf16', 'fp16' or None (float32), or a clear error."""
    if amp is None or (isinstance(amp, str) and amp in AMP_DTYPES):
        return amp
    raise ValueError(
        f"amp must be 'bf16' (bfloat16), 'fp16' (float16, with a gradient scaler) or None "
        f"(float32), got {amp!r}"
    )


def scales_gradients(loss: Loss) -> bool:
    """True if every backward of `loss` goes through `LossContext.backward` (float16-safe)."""
    return type(loss).backward is Loss.backward or bool(getattr(loss, "grad_scaling", False))


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (`amp`: 'bf16', 'fp16' or None for float32) and memory format."""

    amp: str | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_amp(self.amp)
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True or False, got {self.channels_last!r}")

    @property
    def dtype(self) -> torch.dtype:
        return AMP_DTYPES[self.amp] if self.amp else torch.float32

    def check(self, model: nn.Module, loss: Loss, loss_name: str) -> None:
        """Refuse what cannot run: float16 with a loss that scales no gradient, channels-last
        on a model that does not take images. Runs before the model is touched."""
        if self.amp == "fp16" and loss.adapts and not scales_gradients(loss):
            raise ValueError(
                f"amp='fp16' needs a gradient scaler on every backward pass, but loss "
                f"{loss_name!r} runs its own backward passes, which the scaler cannot reach; "
                "use amp='bf16' (no scaler needed) or float32 (amp=None)"
            )
        if self.channels_last and not input_kind(model).images:
            kind = input_kind(model)
            raise ValueError(
                f"channels_last reorders 4-D image tensors, but the model takes {kind.name} "
                f"{kind.shape}; drop channels_last for this model"
            )

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The autocast context of the passes of a step on `device` (nothing for float32).

        Its cache of reduced-precision weight copies is off: a step changes the weights
        in place between its forward passes (SAR's perturbation, MEMO's prediction after
        the update), and a cached copy would be stale."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype, cache_enabled=False)

    def float32(self, device: torch.device) -> AbstractContextManager:
        """Autocast switched off inside an autocast region (optimizer steps, EMA updates)."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device.type, enabled=False)

    def grad_scaler(self, model: nn.Module) -> torch.amp.GradScaler | None:
        """A gradient scaler on the model's device for float16, else None."""
        if self.amp != "fp16":
            return None
        param = next(model.parameters(), None)
        device = param.device.type if param is not None else "cpu"
        return torch.amp.GradScaler(device)

    def prepare_model(self, model: nn.Module) -> None:
        """Channels-last weights (in place); nothing else changes the model."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D batch in channels-last order when asked; anything else as it is."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> dict[str, object]:
        return {"amp": self.amp, "channels_last": self.channels_last}
