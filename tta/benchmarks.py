"""Benchmarks by name: where their images come from, and the source model that goes with them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.registry import Registry

BENCHMARKS = Registry("benchmark")


@dataclass
class Benchmark:
    """A corruption benchmark: domains are (corruption, severity) pairs."""

    name: str
    num_classes: int
    corruptions: tuple[str, ...] = STANDARD_CORRUPTIONS
    data_root: str | None = None

    def load(
        self, corruption: str, severity: int, n: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def prepare(self, domains: list[tuple[str, int]], n: int, seed: int) -> None:
        """Make the data of `domains` available (generate or check files) before the run."""

    def source_model(self) -> tuple[nn.Module, dict]:
        raise NotImplementedError

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clean images (uint8 NHWC) and labels from the source split (e.g. EATA's Fisher)."""
        raise NotImplementedError


@BENCHMARKS.register("fmnist-c")
class FashionMnistC(Benchmark):
    """Fashion-MNIST-C, generated offline with CIFAR-10-C strengths; ResNet-20 source model."""

    def __init__(self, data_root: str | None = None, download: bool = False) -> None:
        super().__init__("fmnist-c", 10, data_root=data_root)
        if download:  # fetch Fashion-MNIST now if it is nowhere on disk
            from tta.data.fmnist import find_dir

            find_dir(data_root, download=True)

    def prepare(self, domains: list[tuple[str, int]], n: int, seed: int) -> None:
        from tta.data.fmnist_c import ensure_generated

        ensure_generated(domains, n, seed, self.data_root)

    def load(
        self, corruption: str, severity: int, n: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from tta.data.fmnist_c import load_domain

        return load_domain(corruption, severity, n, seed, self.data_root)

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
