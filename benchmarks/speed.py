"""Throughput of source inference, BN-stats and TENT on the default model (ResNet-20, 32x32).

    python benchmarks/speed.py [--batch-sizes 200 64] [--repeats 10] [--threads 2]

Prints images/s for each method and batch size, and the ratio of one TENT step (tta.adapt)
to a raw forward+backward of the same model (the target is <= 1.10: the engine's own
bookkeeping must be nearly free). Timings take the median of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import tta
from tta.losses import softmax_entropy
from tta.models import resnet20
from tta.norm.batch import use_batch_statistics


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_forward_backward(model: torch.nn.Module, x: torch.Tensor):
    """The floor a TENT step is compared against: forward, entropy, backward; nothing else."""

    def step() -> None:
        loss = softmax_entropy(model(x)).mean()
        loss.backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[200, 64])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = resnet20().eval()
    print(f"ResNet-20, {args.threads} threads, torch {torch.__version__}")
    print(f"{'batch':>6}{'source img/s':>14}{'norm img/s':>12}{'tent img/s':>12}{'tent/raw':>10}")
    for batch in args.batch_sizes:
        x = torch.rand(batch, 3, 32, 32)
        rates = {}
        for loss in ("source", "norm", "tent"):
            adapted = tta.adapt(copy.deepcopy(base), loss=loss)
            rates[loss] = batch / median_seconds(lambda a=adapted, x=x: a(x), args.repeats)
        raw_model = copy.deepcopy(base)
        use_batch_statistics(raw_model)
        raw_model.requires_grad_(False)
        for module in raw_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.requires_grad_(True)
        raw = median_seconds(raw_forward_backward(raw_model, x), args.repeats)
        tent = batch / rates["tent"]
        print(
            f"{batch:>6}{rates['source']:>14.0f}{rates['norm']:>12.0f}{rates['tent']:>12.0f}"
            f"{tent / raw:>10.3f}"
        )


if __name__ == "__main__":
    main()
