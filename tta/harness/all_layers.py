"""The all-layers baseline: the run's loss and parameters updating every layer each step.

The first question about a layer selector (GALA, AutoRGN, ...) is what it changes against
updating all the layers it may touch. So when a run's selector is not 'all', the same run
with `selector='all'` (everything else equal, including the `params` the main run resolved,
e.g. GALA's every layer) goes over the same stream on a fresh copy of the source model. It
is cached like the source baseline, keyed on its full method card.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from tta.data.base import Benchmark
from tta.harness.config import RunConfig, resolve
from tta.harness.setup import build_adapted, method_card
from tta.harness.source_cache import cache_path, cached_stream
from tta.harness.stream import StreamResult, StreamSpec, run_stream


def all_layers_config(config: RunConfig, method: dict) -> RunConfig | None:
    """`config` (resolved) with selector 'all' and the `params` its run resolved (`method`
    is that run's `describe()` card); None when there is nothing to compare: the selector
    is 'all' already, the loss trains nothing, or `no_all_layers` is set."""
    if config.no_all_layers or config.selector == "all" or method.get("params") is None:
        return None
    params = method["params"]
    return resolve(
        replace(
            config,
            selector="all",
            selector_options={},
            params=params if isinstance(params, str) else tuple(params),
            no_source=True,
            no_all_layers=True,
            forgetting=0,
            out=None,
        )
    )


def all_layers_errors(
    config: RunConfig,
    model: nn.Module,
    spec: StreamSpec,
    benchmark: Benchmark,
    model_info: dict,
    device: torch.device,
) -> tuple[StreamResult, dict]:
    """(stream result, method card) of `config` (from `all_layers_config`) over `spec`.

    `model` is a fresh copy of the source model (adapted in place). The torch random state
    is seeded with the run's seed inside and restored after, so the main run gets the same
    numbers whether this baseline ran, came from the cache or was skipped.
    """
    devices = [device.index or torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        adapted = build_adapted(config, model, benchmark, device)
        card = method_card(config, adapted)
        path = cache_path(model_info, spec, benchmark, kind="all-layers", method=card)
        label = f"{config.loss}+all"
        result = cached_stream(
            path, lambda: run_stream(adapted, spec, benchmark, device, desc=label)
        )
    return result, card
