"""Baselines over a stream, computed once and cached: the unadapted model's errors, and any
other pass whose numbers a key fixes (the all-layers baseline, `tta.harness.all_layers`).

The cache key holds everything the numbers depend on: the model, the stream card, the data's
identity (the benchmark's `describe()`, with its data directories), the tta version, the
format of what is cached and, for an adapting baseline, its full method card. An
interrupted pass is never cached.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import tta
from tta.data.base import Benchmark
from tta.harness.stream import StreamResult, StreamSpec, run_stream
from tta.paths import cache_dir

# Bumped when what a cached pass holds changes (2: per-domain ECE).
CACHE_FORMAT = 2


def cache_path(
    model_info: dict,
    spec: StreamSpec,
    benchmark: Benchmark,
    kind: str = "source",
    method: dict | None = None,
) -> Path:
    """`<cache>/<kind>-results/<key>.json` for this model, stream, data, version and method."""
    identity = [model_info, spec.card(), benchmark.describe(), tta.__version__, CACHE_FORMAT]
    if method is not None:
        identity.append(method)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / f"{kind}-results" / f"{key[:16]}.json"


def cached_stream(path: Path, compute: Callable[[], StreamResult]) -> StreamResult:
    """The per-domain results cached at `path`, else `compute()`, cached unless interrupted."""
    if path.exists():
        return StreamResult(per_domain=json.loads(path.read_text()))
    result = compute()
    if not result.interrupted:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique: parallel sweep cells
        tmp.write_text(json.dumps(result.per_domain))
        tmp.replace(path)
    return result


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
    return cached_stream(
        cache_path(model_info, spec, benchmark),
        lambda: run_stream(tta.adapt(model, loss="source"), spec, benchmark, device, desc="source"),
    )
