"""Partition trainable parameters into layers: the units a layer selector chooses among.

Granularities:

- "module" (default): one module that owns parameters is one layer, its parameters
  flattened into one vector (as GALA's paper defines a layer).
- "block": network stages. Stages are found by name: `layer1..layer4` (torchvision and
  CIFAR ResNets), `block1..block3` (robustbench WideResNets), `stage_1..stage_3`
  (robustbench ResNeXt), `stages.0..` (timm), at any depth (`1.layer2`, `model.block1`).
  Parameters before the first stage form a "stem" block, parameters after the last stage
  a "head" block, and parameters between two stages a block named by their common prefix.
  `block_patterns` overrides discovery: a list of name prefixes or regexes, one block per
  distinct matched prefix (`["features.0", r"blocks\\.\\d+"]`).
- "tensor": every parameter tensor is its own layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from tta.params import select_parameters

GRANULARITIES = ("module", "block", "tensor")

# A stage container at any depth: the shallowest match wins ("block1.layer.0" -> "block1").
STAGE_PATTERN = r"(?:.*?\.)?(?:(?:layer|block|stage_?)\d+|stages\.\d+)"


@dataclass(repr=False)
class Layer:
    """A named group of parameters that is selected or skipped as a whole."""

    name: str
    param_names: list[str]
    params: list[nn.Parameter]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, size={self.size}, tensors={len(self.params)})"


def _owner(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def _by_key(named_params: list[tuple[str, nn.Parameter]], keys: list[str]) -> list[Layer]:
    """Group parameters by key, in order of first appearance."""
    layers: dict[str, Layer] = {}
    for (name, param), key in zip(named_params, keys, strict=True):
        layer = layers.setdefault(key, Layer(key, [], []))
        layer.param_names.append(name)
        layer.params.append(param)
    return list(layers.values())


def _match_block(name: str, patterns: Sequence[str]) -> str | None:
    """The block prefix of `name`: the first pattern matching it up to a '.' or its end."""
    for pattern in patterns:
        if name == pattern or name.startswith(pattern + "."):
            return pattern
        try:
            match = re.match(f"(?:{pattern})(?=\\.|$)", name)
        except re.error as error:
            raise ValueError(f"block pattern {pattern!r} is not a valid regex: {error}") from None
        if match:
            return match.group(0)
    return None


def _common_prefix(names: list[str]) -> str:
    """The longest dotted prefix shared by `names` ("layer3.0.conv1", "layer3.1.bn2" -> "layer3")."""
    parts = [name.split(".")[:-1] for name in names]
    common = []
    for level in zip(*parts, strict=False):
        if any(part != level[0] for part in level):
            break
        common.append(level[0])
    return ".".join(common)


def block_keys(param_names: list[str], patterns: Sequence[str] | None = None) -> list[str]:
    """The block of each parameter name: a stage prefix, "stem" or "head".

    Parameters that match no stage form "stem" (before the first stage), "head" (after the
    last) or, between two stages, a block of their own named by their common prefix.
    """
    stages = [_match_block(name, patterns or [STAGE_PATTERN]) for name in param_names]
    found = [i for i, stage in enumerate(stages) if stage is not None]
    if not found:
        how = f"block_patterns {list(patterns)}" if patterns else "stage discovery"
        raise ValueError(
            f"granularity='block': {how} found no stage among the parameters "
            f"(e.g. {param_names[:4]}); pass block_patterns=[...] with name prefixes or "
            "regexes of the stages (e.g. ['layer1', 'layer2'] or [r'features\\.\\d+'])"
        )
    keys = list(stages)
    keys[: found[0]] = ["stem"] * found[0]
    keys[found[-1] + 1 :] = ["head"] * (len(keys) - found[-1] - 1)
    for start, end in zip(found, found[1:], strict=False):
        if end > start + 1:
            gap = param_names[start + 1 : end]
            keys[start + 1 : end] = [_common_prefix(gap) or f"{stages[start]}+"] * len(gap)
    return keys


def partition(
    named_params: list[tuple[str, nn.Parameter]],
    granularity: str = "module",
    model: nn.Module | None = None,
    block_patterns: Sequence[str] | str | None = None,
) -> list[Layer]:
    """Group `named_params` (in model order) into layers at the given granularity.

    `block_patterns` (prefixes or regexes; a comma-separated string is split) only matters
    for granularity "block". `model` is accepted for selectors that need the structure.
    """
    if isinstance(block_patterns, str):
        block_patterns = [p for p in block_patterns.split(",") if p]
    if granularity == "tensor":
        return [Layer(name, [name], [p]) for name, p in named_params]
    if granularity == "module":
        return _by_key(named_params, [_owner(name) or "<root>" for name, _ in named_params])
    if granularity == "block":
        if not named_params:
            return []
        return _by_key(named_params, block_keys([n for n, _ in named_params], block_patterns))
    raise ValueError(f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")


def list_layers(
    model: nn.Module,
    params: str | Sequence[str] = "all",
    granularity: str = "module",
    block_patterns: Sequence[str] | str | None = None,
) -> list[Layer]:
    """The layers a selector would choose among: `tta.layers(model, granularity="block")`.

    `params` is 'all', 'norm' or a list of parameter names, as in `tta.adapt`. Each layer
    has a `name`, a `size` (number of scalars) and its `param_names`.
    """
    return partition(select_parameters(model, params), granularity, model, block_patterns)
