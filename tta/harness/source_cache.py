"""The unadapted model's errors on a stream, computed once and cached.

The cache key holds everything the numbers depend on: the model, the stream card, the data's
identity (the benchmark's `describe()`, with its data directories) and the tta version. An
interrupted pass is never cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

import tta
from tta.data.base import Benchmark
from tta.harness.stream import StreamResult, StreamSpec, run_stream
from tta.paths import cache_dir


def cache_path(model_info: dict, spec: StreamSpec, benchmark: Benchmark) -> Path:
    """`<cache>/source-results/<key>.json` for this model, stream, data and tta version."""
    identity = [model_info, spec.card(), benchmark.describe(), tta.__version__]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / "source-results" / f"{key[:16]}.json"


def source_errors(
    model: nn.Module,
    spec: StreamSpec,
    benchmark: Benchmark,
    model_info: dict,
    device: torch.device,
) -> StreamResult:
    """The unadapted model over the stream, from the cache when it was run before.

    `model` must be a copy taken before `tta.adapt` configured the adapted one (TENT-style
    methods change BatchNorm in place).
    """
    path = cache_path(model_info, spec, benchmark)
    if path.exists():
        return StreamResult(per_domain=json.loads(path.read_text()))
    result = run_stream(tta.adapt(model, loss="source"), spec, benchmark, device, desc="source")
    if not result.interrupted:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.per_domain))
        tmp.replace(path)
    return result
