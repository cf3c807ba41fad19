"""Run one configuration under several seeds and report mean and standard deviation.

Each seed is one `tta.harness.run.run` of the same config with `seed` replaced: the seed
changes the image order (and, for generated benchmarks such as fmnist-c, the corruption
noise) and the torch seed of the run. The standard deviation is numpy's default, the
population std (ddof=0), over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn

from tta.data.base import Benchmark
from tta.harness.config import RunConfig
from tta.harness.results import mean_or_none
from tta.harness.run import Echo, run_and_save
from tta.harness.stream import StreamResult


def run_seeds(
    config: RunConfig,
    seeds: Sequence[int],
    out_dir: Path,
    *,
    benchmark: Benchmark | None = None,
    model: tuple[nn.Module, dict] | None = None,
    echo: Echo = print,
) -> dict:
    """One run per seed, saved in `<out_dir>/seed<N>/`, then `aggregate` over the seeds.

    Stops at the first interrupted seed; the summary then covers the seeds that finished
    (`finished_seeds`) and names the one interrupted.
    """
    if not seeds:
        raise ValueError("give at least one seed, e.g. --seeds 0,1,2")
    finished: dict[int, StreamResult] = {}
    interrupted = None
    for seed in seeds:
        seed_config = replace(config, seed=seed)
        result = run_and_save(
            seed_config, Path(out_dir) / f"seed{seed}", benchmark=benchmark, model=model, echo=echo
        )
        if result.interrupted:
            interrupted = seed
            break
        finished[seed] = result.adapted
    return {
        **aggregate(finished),
        "seeds": list(seeds),
        "finished_seeds": list(finished),
        "interrupted": interrupted is not None,
        "interrupted_seed": interrupted,
    }


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
        "mean_error": float(np.mean(means)) if means else None,
        "std_error": float(np.std(means)) if means else None,
        "per_seed_mean_error": {seed: mean_or_none(r.per_domain) for seed, r in results.items()},
        "per_domain": domains,
        "interrupted": any(r.interrupted for r in results.values()),
        "time_s": sum(r.time_s for r in results.values()),
    }
