"""Layer selectors (`selector=`): which layers keep their proposed update; importing registers them."""

from tta.selectors import (  # noqa: F401  (importing a module registers its selectors)
    all_layers,
    auto_rgn,
    auto_snr,
    fixed,
    gala,
    norm_layers,
    random_layer,
)
from tta.selectors.base import LayerSelector, Proposal

__all__ = ["LayerSelector", "Proposal"]
