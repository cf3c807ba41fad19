"""Run one protocol under several seeds and report mean and standard deviation.

Each seed gets a fresh adapted model (`make_adapted(seed)`, called after
`torch.manual_seed(seed)`) and the stream of `replace(spec, seed=seed)`: the seed changes the
image order (and, for generated benchmarks such as fmnist-c, the corruption noise). The
standard deviation is numpy's default, the population std (ddof=0), over seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from tta.data.base import Benchmark
from tta.engine import AdaptedModel
from tta.harness.stream import StreamResult, StreamSpec, run_stream


def run_seeds(
    make_adapted: Callable[[int], AdaptedModel],
    spec: StreamSpec,
    benchmark: Benchmark,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
) -> dict:
    """`run_stream` once per seed, then `aggregate`; stops at the first interrupted seed."""
    if not seeds:
        raise ValueError("give at least one seed")
    results: dict[int, StreamResult] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        adapted = make_adapted(seed)
        results[seed] = run_stream(
            adapted, replace(spec, seed=seed), benchmark, device, f"seed {seed}"
        )
        if results[seed].interrupted:
            break
    return aggregate(results)


def aggregate(results: dict[int, StreamResult]) -> dict:
    """Mean and std over seeds of the mean error and of every domain's error.

    Domains are matched by (domain, severity, occurrence), so repeated domains and permuted
    domain orders aggregate correctly; a domain missing from some seed (an interrupted run)
    is aggregated over the seeds that have it (`n_seeds`).
    """
    per_domain: dict[tuple, dict] = {}
    for seed, result in results.items():
        seen: dict[tuple, int] = {}
        for d in result.per_domain:
            base = (d["domain"], d["severity"])
            seen[base] = seen.get(base, 0) + 1
            entry = per_domain.setdefault(
                (*base, seen[base]), {"domain": d["domain"], "severity": d["severity"], "n": d["n"]}
            )
            entry.setdefault("errors", {})[seed] = d["error"]
    domains = []
    for entry in per_domain.values():
        errors = list(entry.pop("errors").values())
        domains.append(
            {
                **entry,
                "error": float(np.mean(errors)),
                "std": float(np.std(errors)),
                "n_seeds": len(errors),
            }
        )
    means = [r.mean_error for r in results.values() if r.per_domain]
    return {
        "seeds": list(results),
        "mean_error": float(np.mean(means)) if means else float("nan"),
        "std_error": float(np.std(means)) if means else float("nan"),
        "per_seed_mean_error": {seed: r.mean_error for seed, r in results.items()},
        "per_domain": domains,
        "interrupted": any(r.interrupted for r in results.values()),
        "time_s": sum(r.time_s for r in results.values()),
    }
