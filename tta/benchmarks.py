"""Benchmarks by name: where their images come from, and the source model that goes with them.

A benchmark decides what a domain name means: a corruption (with a severity 1..5) for the
corruption benchmarks, a dataset's domain (no severity) for DomainBed. Heavy imports stay
inside the factories, so listing the names costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from tta.data.corruptions import ALL_CORRUPTIONS, STANDARD_CORRUPTIONS
from tta.registry import Registry

BENCHMARKS = Registry("benchmark")

Domain = tuple[str, int | None]


@dataclass
class Benchmark:
    """A benchmark: domains are (corruption, severity) pairs, or (domain, None) for DomainBed.

    `load` returns (images, labels): images index like a uint8 (N, H, W, 3) array (a numpy
    array, a memory map, or lazily decoded files) and are converted per batch by the stream.
    """

    name: str
    num_classes: int
    corruptions: tuple[str, ...] = STANDARD_CORRUPTIONS
    data_root: str | None = None
    image_size: int = 32
    uses_severity: bool = True

    def load(self, corruption: str, severity: int | None, n: int | None, seed: int) -> tuple:
        raise NotImplementedError

    def prepare(self, domains: list[Domain], n: int | None, seed: int) -> None:
        """Make the data of `domains` available (generate or check files) before the run."""

    def default_domains(self) -> tuple[str, ...]:
        """The domains a stream runs over when the user names none."""
        return self.corruptions

    def known_domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.corruptions + ALL_CORRUPTIONS))

    def check_domains(self, domains: Sequence[Domain]) -> None:
        """A clear error for a domain or severity this benchmark does not have, before any run."""
        known = self.known_domains()
        unknown = [name for name, _ in domains if name not in known]
        if unknown:
            what = "corruption" if self.uses_severity else f"{self.name} domain"
            raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
        for name, severity in domains:
            if self.uses_severity and severity not in range(1, 6):
                raise ValueError(f"{name}: severity must be 1..5, got {severity}")
            if not self.uses_severity and severity is not None:
                raise ValueError(
                    f"{self.name} domains have no severity; got {name!r} at severity {severity} "
                    "(use severity=None)"
                )

    def describe(self) -> dict[str, Any]:
        """Facts about the data that belong on the protocol card (root, subset, resizing)."""
        return {"num_classes": self.num_classes, "image_size": self.image_size}

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose number of outputs is not this benchmark's number of classes.

        One forward pass of one image in eval mode, without gradients; call it before
        `tta.adapt` (it must not feed statistics to adapting normalization layers).
        """
        from tta.models.classes import check_num_classes

        shape = (3, self.image_size, self.image_size)
        check_num_classes(model, self.num_classes, shape, what=f"the model (for {self.name})")

    def source_model(self) -> tuple[nn.Module, dict]:
        raise NotImplementedError(
            f"{self.name} has no built-in source model; pass a model for it (e.g. --model)"
        )

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clean images (uint8 NHWC) and labels from the source split (e.g. EATA's Fisher)."""
        raise NotImplementedError(f"{self.name} has no source samples")


FMNIST_TEST_SIZE = 10000  # n_per_domain=None: every test image


@BENCHMARKS.register("fmnist-c")
class FashionMnistC(Benchmark):
    """Fashion-MNIST-C, generated offline with CIFAR-10-C strengths; ResNet-20 source model."""

    def __init__(self, data_root: str | None = None, download: bool = False) -> None:
        super().__init__("fmnist-c", 10, data_root=data_root)
        if download:  # fetch Fashion-MNIST now if it is nowhere on disk
            from tta.data.fmnist import find_dir

            find_dir(data_root, download=True)

    def prepare(self, domains: list[Domain], n: int | None, seed: int) -> None:
        from tta.data.fmnist_c import ensure_generated

        ensure_generated(domains, n or FMNIST_TEST_SIZE, seed, self.data_root)

    def load(
        self, corruption: str, severity: int, n: int | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from tta.data.fmnist_c import load_domain

        return load_domain(corruption, severity, n or FMNIST_TEST_SIZE, seed, self.data_root)

    def source_model(self) -> tuple[nn.Module, dict]:
        from tta.models.source import source_model

        model, checkpoint = source_model(data_root=self.data_root)
        info = {"model": checkpoint["config"]["arch"], "checkpoint": checkpoint["config"]}
        info["clean_accuracy"] = checkpoint.get("clean_accuracy")
        return model, info

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        from tta.data.fmnist import load_fmnist

        images, labels = load_fmnist("train", self.data_root)
        index = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
        return images[index], labels[index]


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
