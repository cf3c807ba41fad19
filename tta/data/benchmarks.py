"""Benchmarks by name. Heavy imports stay inside the factories, so listing names costs nothing."""

from __future__ import annotations

from typing import Any

from tta.data.base import Benchmark
from tta.registry import Registry

BENCHMARKS = Registry("benchmark")


@BENCHMARKS.register("fmnist-c")
def _fmnist_c(**options: Any) -> Benchmark:
    from tta.data.fmnist_c import FashionMnistC

    return FashionMnistC(**options)


@BENCHMARKS.register("cifar10-c")
def _cifar10_c(**options: Any) -> Benchmark:
    from tta.data.cifar_c import CifarC

    return CifarC("cifar10-c", **options)


@BENCHMARKS.register("cifar100-c")
def _cifar100_c(**options: Any) -> Benchmark:
    from tta.data.cifar_c import CifarC

    return CifarC("cifar100-c", **options)


@BENCHMARKS.register("imagenet-c")
def _imagenet_c(**options: Any) -> Benchmark:
    from tta.data.imagenet_c import ImageNetC

    return ImageNetC(**options)


@BENCHMARKS.register("domainbed")
def _domainbed(**options: Any) -> Benchmark:
    from tta.data.domainbed import DomainBed

    return DomainBed(**options)
