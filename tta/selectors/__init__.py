"""Layer selectors and sample filters; importing this package registers them."""

from tta.selectors import all_layers  # noqa: F401
from tta.selectors.base import LayerSelector, Proposal

__all__ = ["LayerSelector", "Proposal"]
