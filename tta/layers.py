"""Partition trainable parameters into layers: the units a layer selector chooses among.

Module granularity (default): one module that owns parameters is one layer, its parameters
flattened into one vector (as GALA's paper defines a layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Layer:
    """A named group of parameters that is selected or skipped as a whole."""

    name: str
    param_names: list[str]
    params: list[nn.Parameter]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)


def _owner(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def partition(
    named_params: list[tuple[str, nn.Parameter]],
    granularity: str = "module",
    model: nn.Module | None = None,
) -> list[Layer]:
    """Group `named_params` (in model order) into layers at the given granularity."""
    if granularity == "tensor":
        return [Layer(name, [name], [p]) for name, p in named_params]
    if granularity != "module":
        raise ValueError(f"unknown granularity {granularity!r}; known: module, tensor")
    layers: dict[str, Layer] = {}
    for name, param in named_params:
        owner = _owner(name)
        layer = layers.setdefault(owner, Layer(owner or "<root>", [], []))
        layer.param_names.append(name)
        layer.params.append(param)
    return list(layers.values())
