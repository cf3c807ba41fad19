"""Sample filters (`sample_filter=`): which samples of a batch count; importing registers them."""

from tta.context import FilterContext
from tta.filters import entropy, grad_align, redundancy  # noqa: F401  (registers the filters)
from tta.filters.base import SampleFilter

__all__ = ["FilterContext", "SampleFilter"]
