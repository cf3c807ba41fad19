"""`fixed`: the same chosen layers take their update every step; the others stay frozen.

The manual baseline of surgical fine-tuning (Lee et al., "Surgical Fine-Tuning Improves
Adaptation to Distribution Shifts", ICLR 2023): tune one block (e.g. the first for input-level
corruptions, the last for label shifts) and freeze the rest.

Options, exactly one of:

- `layers`: layer names or name prefixes. "layer1" selects every layer under that block
  ("layer1.0.conv1", ...), "fc" the layer "fc". A comma-separated string is split.
- `first`: the first k trainable layers, in model order.
- `last`: the last k trainable layers, in model order.

`granularity` ("module" by default; "block" makes `first=1` the stem, "tensor" counts
weight and bias apart; `block_patterns` overrides stage discovery, see `tta.layers`) decides
what a layer is. Names are resolved against the trainable layers in `bind` (called by
`tta.adapt`), or at the first step when the engine is built by hand; a name that matches
nothing, or k larger than the number of layers, raises.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tta.layers import Layer
from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal


def _positive_int(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"selector 'fixed': {option} must be a positive integer, got {value!r}")
    return value


def _matches(layer_name: str, wanted: str) -> bool:
    return layer_name == wanted or layer_name.startswith(wanted + ".")


def _examples(names: list[str]) -> str:
    """Some valid names: the top-level prefixes and the first layer names."""
    prefixes = list(dict.fromkeys(name.split(".")[0] for name in names))
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"top-level prefixes {prefixes[:10]}; layers ({len(names)}): {shown}"


@LAYER_SELECTORS.register("fixed")
class FixedLayers(LayerSelector):
    name = "fixed"

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        first: int | None = None,
        last: int | None = None,
        granularity: str = "module",
        block_patterns: Sequence[str] | str | None = None,
    ) -> None:
        options = {"layers": layers, "first": first, "last": last}
        given = [name for name, value in options.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "selector 'fixed' needs exactly one of layers=[names], first=k or last=k, "
                f"got {given or 'none'}"
            )
        if isinstance(layers, str):
            layers = [name.strip() for name in layers.split(",")]
        if layers is not None:
            layers = list(layers)
            if not layers or not all(isinstance(n, str) and n for n in layers):
                raise ValueError(
                    f"selector 'fixed': layers must be a non-empty list of names, got {layers!r}"
                )
        self.layers = layers
        self.first = None if first is None else _positive_int("first", first)
        self.last = None if last is None else _positive_int("last", last)
        self.granularity = granularity
        self.block_patterns = block_patterns
        self._names: list[str] | None = None
        self._scales: list[float] = []
        self._trace: dict[str, list] = {"step": [], "selected": [], "skipped": []}

    def resolve(self, layers: list[Layer]) -> list[float]:
        """The scale (1 selected, 0 frozen) of each layer; raises when the choice is invalid."""
        names = [layer.name for layer in layers]
        n = len(names)
        if self.layers is not None:
            unmatched = [w for w in self.layers if not any(_matches(name, w) for name in names)]
            if unmatched:
                raise ValueError(
                    f"selector 'fixed': layers {unmatched} match no trainable layer at "
                    f"granularity {self.granularity!r} (only trainable parameters count: "
                    f"see params=). Valid names: {_examples(names)}"
                )
            return [1.0 if any(_matches(name, w) for w in self.layers) else 0.0 for name in names]
        k = self.first if self.first is not None else self.last
        if k > n:
            option = "first" if self.first is not None else "last"
            raise ValueError(
                f"selector 'fixed': {option}={k} but there are only {n} trainable layers "
                f"at granularity {self.granularity!r}: {_examples(names)}"
            )
        chosen = range(k) if self.first is not None else range(n - k, n)
        return [1.0 if i in chosen else 0.0 for i in range(n)]

    def bind(self, model: nn.Module, layers: list[Layer]) -> None:
        if layers:
            self._scales = self.resolve(layers)
            self._names = [layer.name for layer in layers]

    def select(self, proposal: Proposal) -> list[float]:
        names = [layer.name for layer in proposal.layers]
        if names != self._names:
            self._scales = self.resolve(proposal.layers)
            self._names = names
        self._trace["step"].append(proposal.step)
        self._trace["selected"].append([i for i, s in enumerate(self._scales) if s])
        self._trace["skipped"].append(False)
        return list(self._scales)

    def trace(self) -> dict:
        return {key: list(values) for key, values in self._trace.items()}
