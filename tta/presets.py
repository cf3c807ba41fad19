"""Named presets: the mechanism. Each method declares its own presets in its loss file.

A preset is a method's recommended optimizer, learning rate, batch size and options for one
dataset family: `cifar` (CIFAR-10-C, CIFAR-100-C, and fmnist-c, which is generated at
CIFAR-10-C strengths for a CIFAR-style ResNet-20) or `imagenet` (ImageNet-C). A loss class
declares them next to its defaults, with their sources in its docstring:

    class TentLoss(Loss):
        presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

(a subclass inherits its parent's presets unless it declares its own). `tta-run --method
NAME` fills every option the user did not give from the preset (`--preset-family` picks the
family; by default it follows the benchmark); explicit flags win.

Lookups read the `LOSSES` registry, which `import tta` (or `import tta.losses`) fills; this
module imports no loss, since the losses import `Preset` from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tta.registry import LOSSES

FAMILIES = ("cifar", "imagenet")


@dataclass(frozen=True)
class Preset:
    """Recommended settings of one method for one dataset family.

    `params=None` keeps the loss's own `default_params`; `lr_rule`, when set, gives the
    learning rate for any batch size (SAR scales it below batch 32). `benchmark_options`
    holds option changes for single benchmarks of the family (e.g. `{"cifar100-c":
    {"d_margin": 0.1}}`), applied by `preset(method, family, benchmark)`.
    """

    optimizer: str
    lr: float
    batch_size: int
    momentum: float = 0.9
    params: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    lr_rule: Callable[[int], float] | None = None
    benchmark_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def lr_for(self, batch_size: int) -> float:
        return self.lr_rule(batch_size) if self.lr_rule else self.lr


def cifar_adam(**changes: Any) -> Preset:
    """The continual CIFAR protocol's optimizer (TENT's CIFAR setting): Adam 1e-3, batch 200."""
    return Preset(**{"optimizer": "adam", "lr": 1e-3, "batch_size": 200, **changes})


def imagenet_sgd(**changes: Any) -> Preset:
    """The common ImageNet-C optimizer (TENT, EATA, SAR): SGD 2.5e-4, momentum 0.9, batch 64."""
    return Preset(
        **{"optimizer": "sgd", "lr": 0.00025, "batch_size": 64, "momentum": 0.9, **changes}
    )


def declared(method: str) -> Mapping[str, Preset]:
    """The presets the registered loss `method` declares (family -> Preset); {} if none."""
    if method not in LOSSES:
        return {}
    return getattr(LOSSES.get(method), "presets", None) or {}


def methods() -> list[str]:
    """The registered losses that declare presets (the losses register on `import tta`)."""
    return [name for name in LOSSES.names() if declared(name)]


class PresetTable(Mapping[tuple[str, str], Preset]):
    """A read-only (method, family) -> Preset view of what the registered losses declare."""

    def __getitem__(self, key: tuple[str, str]) -> Preset:
        method, family = key
        return declared(method)[family]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for method in methods():
            for family in FAMILIES:
                if family in declared(method):
                    yield method, family

    def __len__(self) -> int:
        return sum(1 for _ in self)


PRESETS = PresetTable()


def family_of(benchmark: str) -> str:
    """The preset family of a benchmark: `imagenet*` -> imagenet; `cifar*`, `fmnist*` -> cifar."""
    name = benchmark.lower()
    if name.startswith("imagenet"):
        return "imagenet"
    if name.startswith(("cifar", "fmnist")):
        return "cifar"
    raise ValueError(
        f"no preset family is known for benchmark {benchmark!r}; pass --preset-family "
        f"({' or '.join(FAMILIES)})"
    )


def preset(method: str, family: str, benchmark: str | None = None) -> Preset:
    """The preset of `method` for `family`, with the options specific to `benchmark` applied.

    Raises ValueError for a method without presets (e.g. source, norm: nothing to optimize).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown preset family {family!r}; known: {', '.join(FAMILIES)}")
    found = declared(method).get(family)
    if found is None:
        raise ValueError(
            f"no preset for method {method!r} (family {family!r}); methods with presets: "
            f"{', '.join(methods())}"
        )
    extra = found.benchmark_options.get(benchmark or "", {})
    if not extra:
        return found
    return replace(found, options={**found.options, **extra})
