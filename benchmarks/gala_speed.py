"""Time one GALA step against one base step (selector "all") on ResNet-20, batch 200.

    python benchmarks/gala_speed.py [--batch-size 200] [--steps 10] [--warmup 3] [--threads N]

Two settings: TENT (norm-affine parameters, Adam 1e-3; target ratio <= 1.10) and entropy on
all parameters (SGD 1e-3, momentum 0.9; target <= 1.30). Each step is forward, backward,
optimizer step and, for GALA, proposal -> cosines -> commit. A third column, "proposal",
keeps every layer but goes through the engine's proposal/commit, separating the engine's
bookkeeping from GALA's own arithmetic. The variants are timed in alternation, step by step,
and the median is reported, so that load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tta
from tta.models import resnet20

SETTINGS = {
    "tent (norm-affine, adam)": dict(loss="tent", optimizer="adam", lr=1e-3),
    "entropy (all params, sgd)": dict(loss="entropy", params="all", optimizer="sgd", lr=1e-3),
}


def build(setting: dict, selector: str) -> tta.AdaptedModel:
    torch.manual_seed(0)
    adapted = tta.adapt(resnet20(), selector="gala" if selector == "gala" else "all", **setting)
    if selector == "proposal":  # keep everything, but through proposal/commit
        adapted.selector.needs_proposal = True
    return adapted


def time_step(adapted: tta.AdaptedModel, x: torch.Tensor) -> float:
    start = time.perf_counter()
    adapted(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x = torch.rand(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    variants = ("base", "proposal", "gala")
    print(
        f"ResNet-20, batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.steps}"
    )
    print(f"{'setting':<28}{'base ms':>9}{'proposal ms':>13}{'gala ms':>9}{'gala/base':>11}")
    for name, setting in SETTINGS.items():
        models = {v: build(setting, v) for v in variants}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(args.warmup + args.steps):
            for v in variants:
                elapsed = time_step(models[v], x)
                if i >= args.warmup:
                    times[v].append(elapsed)
        ms = {v: 1e3 * statistics.median(times[v]) for v in variants}
        skipped = models["gala"].counters.n_skipped
        print(
            f"{name:<28}{ms['base']:>9.1f}{ms['proposal']:>13.1f}{ms['gala']:>9.1f}"
            f"{ms['gala'] / ms['base']:>11.3f}   (gala skipped {skipped} of {args.warmup + args.steps})"
        )


if __name__ == "__main__":
    main()
