"""The benchmark interface: what a domain name means and where its images come from.

A domain is a corruption (with a severity 1..5) for the corruption benchmarks, a dataset's
domain (no severity) for DomainBed. The registry of benchmarks is `tta.data.benchmarks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from tta.classes import check_num_classes
from tta.data.corruptions import ALL_CORRUPTIONS, STANDARD_CORRUPTIONS

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
        shape = (3, self.image_size, self.image_size)
        check_num_classes(model, self.num_classes, shape, what=f"the model (for {self.name})")

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clean images (uint8 NHWC) and labels from the source split (e.g. EATA's Fisher)."""
        raise NotImplementedError(f"{self.name} has no source samples")

    def clean_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clean test images (uint8 NHWC, prepared as the shifted ones before the shift)
        and labels: what forgetting is measured on (EATA). The stream never adapts on them."""
        raise NotImplementedError(f"{self.name} has no clean test images")
