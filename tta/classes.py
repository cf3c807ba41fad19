"""Does a model predict the benchmark's classes? Checked before any adaptation starts.

A 10-class model on a 100-class benchmark would otherwise run to the end and report a
meaningless error; an ImageNet head on CIFAR-10 labels likewise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ClassCountError(ValueError):
    """The model's number of outputs is not the number of classes the benchmark has."""


def mismatch(what: str, actual: int, expected: int) -> ClassCountError:
    return ClassCountError(
        f"{what} predicts {actual} classes but the benchmark has {expected}; use a model "
        f"trained for these {expected} classes (a checkpoint whose head has {expected} outputs)"
    )


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The last `nn.Linear` in registration order: the classifier head of common models."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


@torch.no_grad()
def count_classes(model: nn.Module, sample_input_shape: Sequence[int] | None = None) -> int:
    """Outputs per image: one forward of a single image of `sample_input_shape` (C, H, W) in
    eval mode, without gradients, every module's mode restored after; without a shape, the
    `out_features` of the last Linear layer."""
    if sample_input_shape is None:
        head = last_linear(model)
        if head is None:
            raise ValueError("cannot count the model's classes: it has no nn.Linear layer")
        return head[1].out_features
    tensor = next(iter(model.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        logits = model(torch.full((1, *sample_input_shape), 0.5, device=device))
    except RuntimeError as error:
        raise ValueError(
            f"the model cannot take images of shape {tuple(sample_input_shape)} ({error})"
        ) from error
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits (batch, classes), got {got}")
    return int(logits.shape[1])


def check_num_classes(
    model: nn.Module,
    expected: int,
    sample_input_shape: Sequence[int] | None = None,
    what: str = "the model",
) -> int:
    """Raise `ClassCountError` unless `model` predicts `expected` classes; returns the count."""
    actual = count_classes(model, sample_input_shape)
    if actual != expected:
        raise mismatch(what, actual, expected)
    return actual
