"""`norm`: only normalization layers take their update; every other trainable layer is frozen.

The parameter choice of TENT (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021) made into a layer selector, so it composes with any `params=`:
`tta.adapt(model, loss="entropy", params="all", selector="norm")` adapts only the affine
weight/bias of BatchNorm, LayerNorm, GroupNorm and InstanceNorm layers (`tta.params.NORM_TYPES`).

No options. Module granularity; a layer counts as a norm layer when every one of its
parameters belongs directly to a norm module. The choice is made once, in `bind` (called by
`tta.adapt`), and raises when no trainable layer is a norm layer. With Adam or momentum the
frozen layers' optimizer state still sees their gradients (see `tta.engine`); only their
weights stay put. For the cheapest norm-only adaptation use `params="norm"` with `all`.
"""

from __future__ import annotations

from torch import nn

from tta.layers import Layer
from tta.params import NORM_TYPES
from tta.registry import LAYER_SELECTORS
from tta.selectors.base import LayerSelector, Proposal


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters owned directly by normalization modules."""
    return {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if isinstance(module, NORM_TYPES)
        for name, _ in module.named_parameters(recurse=False)
    }


@LAYER_SELECTORS.register("norm")
class NormLayers(LayerSelector):
    name = "norm"
    granularity = "module"

    def __init__(self) -> None:
        self._scales: list[float] | None = None
        self._trace: dict[str, list] = {"step": [], "selected": [], "skipped": []}

    def bind(self, model: nn.Module, layers: list[Layer]) -> None:
        norm_names = norm_parameter_names(model)
        scales = [1.0 if set(layer.param_names) <= norm_names else 0.0 for layer in layers]
        if layers and not any(scales):
            raise ValueError(
                f"selector 'norm' found no normalization layer among the {len(layers)} "
                f"trainable layers of {type(model).__name__} (e.g. "
                f"{[layer.name for layer in layers[:5]]}); it selects the affine parameters of "
                "BatchNorm/LayerNorm/GroupNorm/InstanceNorm. Use a model with such layers, "
                "params='all' so that they are trainable, or another selector."
            )
        self._scales = scales

    def select(self, proposal: Proposal) -> list[float]:
        if self._scales is None or len(self._scales) != len(proposal.layers):
            raise RuntimeError(
                "selector 'norm' must be bound to the model before the first step: "
                "tta.adapt does this; when building AdaptedModel yourself call "
                "selector.bind(model, layers)"
            )
        selected = [i for i, scale in enumerate(self._scales) if scale]
        self._trace["step"].append(proposal.step)
        self._trace["selected"].append(selected)
        self._trace["skipped"].append(False)
        return list(self._scales)

    def trace(self) -> dict:
        return {key: list(values) for key, values in self._trace.items()}
