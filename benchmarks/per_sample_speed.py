"""Cost of the `grad-align` sample filter and of batched per-sample gradients on ResNet-20.

    python benchmarks/per_sample_speed.py [--batch-sizes 64 200] [--repeats 5] [--threads 2]

For each batch size and parameter set (`norm`: TENT's BatchNorm affine; `all`):

- plain: one TENT step (`tta.adapt(loss="tent", params=...)`), forward + backward + Adam;
- filtered: the same step with `sample_filter="grad-align"` past a window's first step, so
  per-sample gradients are computed every step (a window of 20 averages in one plain step),
  reusing the engine's forward (the default); "separate": with `share_forward=False`, the
  filter runs its own forward with constant batch statistics;
- per-sample gradients alone by the two batched methods of `tta.filters.per_sample` ("hooks",
  "vmap") and by a Python loop over samples (one backward each, same constant batch
  statistics), and the loop / best batched speedup.

Timings are interleaved (one of each candidate per round) and the median over rounds is
reported, which keeps the ratios meaningful on a machine shared with other jobs. Random
weights and images: the costs do not depend on what the model has learned.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import tta
from tta.filters.per_sample import constant_batch_statistics, per_sample_grads
from tta.models.resnet import resnet20


def loop_grads(model, x, loss, params) -> list[torch.Tensor]:
    """The reference: one backward per sample, batch statistics held constant."""
    with constant_batch_statistics(model, x):
        rows = [torch.autograd.grad(loss(model(x[i : i + 1])), params) for i in range(len(x))]
    return [torch.stack(column) for column in zip(*rows, strict=True)]


def median_times(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in candidates.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def adapted(spec: str, share_forward: bool | None) -> tta.AdaptedModel:
    """TENT on ResNet-20; with the filter (no window reset after the first step) unless None."""
    torch.manual_seed(0)
    if share_forward is None:
        return tta.adapt(resnet20(), loss="tent", params=spec)
    options = {"window": None, "share_forward": share_forward}
    return tta.adapt(
        resnet20(), loss="tent", params=spec, sample_filter="grad-align",
        sample_filter_options=options,
    )  # fmt: skip


def bench(batch: int, spec: str, repeats: int, loop_repeats: int) -> None:
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    models = {"plain": adapted(spec, None), "shared": adapted(spec, True)}
    models["separate"] = adapted(spec, False)
    for model in models.values():
        model(x)  # the window's first step: anchor set, no per-sample gradients
    steps = median_times({name: lambda m=m: m(x) for name, m in models.items()}, repeats)
    model, loss, params = models["plain"].model, models["plain"].loss, models["plain"]._params
    methods = median_times(
        {m: lambda m=m: per_sample_grads(model, x, loss, params, m) for m in ("hooks", "vmap")},
        repeats,
    )
    loop = median_times({"loop": lambda: loop_grads(model, x, loss, params)}, loop_repeats)
    best = min(methods, key=methods.get)
    kept = statistics.mean(models["shared"].sample_filter.kept_fraction[1:])
    shared, separate = (steps[k] / steps["plain"] for k in ("shared", "separate"))
    window = (19 * shared + 1) / 20
    print(
        f"{batch:>5} {spec:>4} {steps['plain']:>7.3f} {steps['shared']:>7.3f}"
        f" {shared:>6.2f} {window:>6.2f} {separate:>6.2f} {kept:>5.2f}"
        f" {methods['hooks']:>7.3f} {methods['vmap']:>7.3f} {loop['loop']:>7.2f}"
        f" {loop['loop'] / methods[best]:>6.1f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 200])
    parser.add_argument("--params", nargs="+", default=["norm", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ResNet-20, 32x32, torch {torch.__version__}, {args.threads} threads; seconds")
    print(
        "plain: TENT step; filtered: with grad-align (sharing the engine's forward);"
        " ratio: filtered/plain; win20: averaged over a 20-step window (its first step is"
        " plain); separate: ratio with share_forward=False (own forward); kept: fraction"
        " of samples kept; hooks/vmap/loop: per-sample gradients alone; speedup: loop/best"
    )
    print(
        f"{'batch':>5} {'set':>4} {'plain':>7} {'filtered':>7} {'ratio':>6} {'win20':>6}"
        f" {'separate':>6} {'kept':>5} {'hooks':>7} {'vmap':>7} {'loop':>7} {'speedup':>7}"
    )
    for batch in args.batch_sizes:
        for spec in args.params:
            bench(batch, spec, args.repeats, args.loop_repeats)


if __name__ == "__main__":
    main()
