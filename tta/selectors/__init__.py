"""Layer selectors and sample filters; importing this package registers them."""

from tta.selectors import (  # noqa: F401  (importing a module registers its selectors)
    all_layers,
    auto_rgn,
    auto_snr,
    entropy_filter,
    fixed,
    gala,
    grad_align,
    norm_layers,
    random_layer,
    redundancy_filter,
)
from tta.selectors.base import LayerSelector, Proposal

__all__ = ["LayerSelector", "Proposal"]
