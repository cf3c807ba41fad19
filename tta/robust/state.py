"""The state a model is attacked in: stated, deterministic, and restored afterwards.

Every attack in `tta.robust` runs the model through `attack_state`:

- a `tta.AdaptedModel` is attacked through its `.model` (the adapted weights, as they are
  now): its own forward, which would adapt, is never called, so nothing adapts;
- every module is in eval mode (a model in train mode stops normalizing with batch
  statistics and stops updating running statistics; BatchNorm layers that a normalization
  mode set to batch statistics, e.g. `norm='batch'` of `tta.adapt`, keep normalizing each
  attacked batch by its own statistics, which the attack differentiates through);
- no parameter requires grad (gradients flow to the input only);
- every buffer is reloaded from a snapshot before every forward pass, so normalization
  modes that update state as they predict (`ema`, `window`, ...) see the same state at
  every attack step: the attacked function is a pure function of the input batch.

On exit the weights, buffers, train/eval mode of every module and `requires_grad` of every
parameter are restored exactly. Nested calls on the same model cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_ACTIVE: set[int] = set()  # ids of modules currently inside attack_state


def attack_target(model: nn.Module) -> nn.Module:
    """The module an attack differentiates: `.model` of an AdaptedModel, else the model."""
    from tta.engine import AdaptedModel

    if isinstance(model, AdaptedModel):
        return model.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"an attack needs a torch.nn.Module, got {type(model).__name__}")
    return model


@contextmanager
def attack_state(model: nn.Module) -> Iterator[nn.Module]:
    """Yield the module to attack, frozen as the module docstring says; restore on exit."""
    target = attack_target(model)
    if id(target) in _ACTIVE:
        yield target
        return
    modes = {module: module.training for module in target.modules()}
    grads = {param: param.requires_grad for param in target.parameters()}
    snapshot = {k: v.detach().clone() for k, v in target.state_dict().items()}
    buffer_names = {name for name, _ in target.named_buffers()}
    buffers = {k: v for k, v in snapshot.items() if k in buffer_names}

    def reload_buffers(module: nn.Module, args: object) -> None:
        if buffers:
            module.load_state_dict(buffers, strict=False)

    target.eval()
    target.requires_grad_(False)
    handle = target.register_forward_pre_hook(reload_buffers)
    _ACTIVE.add(id(target))
    try:
        yield target
    finally:
        _ACTIVE.discard(id(target))
        handle.remove()
        with torch.no_grad():
            target.load_state_dict(snapshot, strict=True)
        for module, training in modes.items():
            module.training = training
        for param, requires_grad in grads.items():
            param.requires_grad_(requires_grad)
