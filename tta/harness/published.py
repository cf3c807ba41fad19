"""The literature's protocols and error rates (%) that `benchmarks/*.py` reproduce.

A protocol fixes everything that moves the numbers: benchmark, model, severity, setting,
batch size and images per domain (the methods' optimizers come from `tta.presets`). Every
number is top-1 error (%) at severity 5; per-domain lists follow the standard order of the
15 corruptions (`tta.data.corruptions.STANDARD_CORRUPTIONS`). Each carries its source, and
numbers from different sources are kept apart where their protocols differ.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = {
    "tent-repo": "DequanWang/tent README, CIFAR-10-C example table (WRN-28-10 'Standard', "
    "severity 5, batch 200, 10000 images per corruption; the model is reset before each "
    "corruption)",
    "cotta": "Wang et al., Continual Test-Time Domain Adaptation, CVPR 2022 (arXiv:2203.13591)",
    "tta-benchmark": "mariodoebler/test-time-adaptation, classification/benchmark.md, "
    "'Continual' tables (mean of seeds 1-5; ImageNet-C on RobustBench's 5000 images, batch 64)",
    "gala": "Sahoo et al., A Layer Selection Approach to Test Time Adaptation, AAAI 2025 "
    "(arXiv:2404.03784), as quoted in DESIGN.md section 2 (not re-checked against the paper)",
}


def errors(text: str) -> tuple[float, ...]:
    """Per-corruption errors as printed in a table row: '72.3 65.7 ...'."""
    return tuple(float(value) for value in text.split())


@dataclass(frozen=True)
class Published:
    """One published mean error of `method` (tta's spelling: loss[+selector])."""

    method: str
    error: float
    source: str  # a key of SOURCES
    where: str  # table and row in the source
    per_domain: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    benchmark: str
    model: str
    setting: str
    batch_size: int
    n_per_domain: int
    methods: tuple[str, ...]  # run by default; --methods runs others
    published: tuple[Published, ...]
    severity: int = 5
    note: str = ""


CIFAR10_SOURCE = errors("72.3 65.7 72.9 46.9 54.3 34.8 42.0 25.1 41.3 26.0 9.3 46.7 26.6 58.5 30.3")
CIFAR10_NORM = errors("28.1 26.1 36.3 12.8 35.3 14.2 12.1 17.3 17.4 15.3 8.4 12.6 23.8 19.7 27.3")
CIFAR10_TENT_RESET = errors(
    "24.8 23.5 33.0 12.0 31.8 13.7 10.8 15.9 16.2 13.7 7.9 12.1 22.0 17.3 24.2"
)
CIFAR10_TENT_CONTINUAL = errors(
    "24.8 20.6 28.6 14.4 31.1 16.5 14.1 19.1 18.6 18.6 12.2 20.3 25.7 20.8 24.9"
)
# CoTTA Table 4 (the per-corruption rows' means recomputed: 46.4, 35.4, 60.9).
CIFAR100_SOURCE = errors(
    "73.0 68.0 39.4 29.3 54.1 30.8 28.8 39.5 45.8 50.3 29.5 55.1 37.2 74.7 41.2"
)
CIFAR100_NORM = errors("42.1 40.7 42.7 27.6 41.9 29.7 27.9 34.9 35.0 41.5 26.5 30.3 35.7 32.9 41.2")
CIFAR100_TENT_CONTINUAL = errors(
    "37.2 35.8 41.7 37.9 51.2 48.3 48.5 58.4 63.7 71.1 70.4 82.3 88.0 88.5 90.4"
)

# The zoo's columns of tta-benchmark's "Continual" tables (the other columns are above).
ZOO_COLUMNS = ("eata", "sar", "cotta", "rotta", "adacontrast", "rmt", "lame", "roid")


def zoo_row(table: str, text: str) -> tuple[Published, ...]:
    """One tta-benchmark row of the zoo's columns: 'eata sar cotta ... roid' errors."""
    return tuple(
        Published(method, error, "tta-benchmark", f"Continual, {table}, {method}")
        for method, error in zip(ZOO_COLUMNS, errors(text), strict=True)
    )


CIFAR10_COMMON = (
    Published("source", 43.5, "tent-repo", "README table, row source", CIFAR10_SOURCE),
    Published("source", 43.5, "cotta", "Table 2, row Source", CIFAR10_SOURCE),
    Published("norm", 20.4, "tent-repo", "README table, row norm", CIFAR10_NORM),
    Published("norm", 20.4, "cotta", "Table 2, row BN Stats Adapt", CIFAR10_NORM),
)

PROTOCOLS = {
    p.name: p
    for p in (
        Protocol(
            name="cifar10c-continual",
            title="CIFAR-10-C, continual (CoTTA's protocol)",
            benchmark="cifar10-c",
            model="Standard",
            setting="continual",
            batch_size=200,
            n_per_domain=10000,
            methods=("source", "norm", "tent"),
            published=CIFAR10_COMMON
            + (
                Published(
                    "tent", 20.7, "cotta", "Table 2, row TENT-continual", CIFAR10_TENT_CONTINUAL
                ),
                Published("source", 43.5, "tta-benchmark", "Continual, CIFAR10-C, Source"),
                Published("norm", 20.4, "tta-benchmark", "Continual, CIFAR10-C, BN-1"),
                Published("tent", 20.0, "tta-benchmark", "Continual, CIFAR10-C, WRN-28, TENT"),
                *zoo_row("CIFAR10-C, WRN-28", "17.9 20.4 16.5 19.3 18.5 17.0 64.3 16.2"),
                Published("source", 43.50, "gala", "continual CIFAR-10-C, source"),
                Published("pl", 88.72, "gala", "PL, all layers"),
                Published("pl+gala", 28.68, "gala", "PL + GALA"),
                Published("shot", 89.33, "gala", "SHOT, all layers"),
                Published("shot+gala", 20.46, "gala", "SHOT + GALA"),
            ),
        ),
        Protocol(
            name="cifar10c-reset",
            title="CIFAR-10-C, reset to the source model before each corruption (TENT's example)",
            benchmark="cifar10-c",
            model="Standard",
            setting="reset-each-shift",
            batch_size=200,
            n_per_domain=10000,
            methods=("source", "norm", "tent"),
            published=CIFAR10_COMMON
            + (
                Published("tent", 18.6, "tent-repo", "README table, row tent", CIFAR10_TENT_RESET),
                Published("tent", 18.6, "cotta", "Table 2, row TENT-online*", CIFAR10_TENT_RESET),
            ),
        ),
        Protocol(
            name="cifar100c-continual",
            title="CIFAR-100-C, continual (CoTTA's protocol)",
            benchmark="cifar100-c",
            model="Hendrycks2020AugMix_ResNeXt",
            setting="continual",
            batch_size=200,
            n_per_domain=10000,
            methods=("source", "norm", "tent"),
            published=(
                Published("source", 46.4, "cotta", "Table 4, row Source", CIFAR100_SOURCE),
                Published("norm", 35.4, "cotta", "Table 4, row BN Stats Adapt", CIFAR100_NORM),
                Published(
                    "tent", 60.9, "cotta", "Table 4, row TENT-continual", CIFAR100_TENT_CONTINUAL
                ),
                Published("source", 46.4, "tta-benchmark", "Continual, CIFAR100-C, Source"),
                Published("norm", 35.4, "tta-benchmark", "Continual, CIFAR100-C, BN-1"),
                Published("tent", 62.2, "tta-benchmark", "Continual, CIFAR100-C, TENT"),
                *zoo_row("CIFAR100-C, ResNeXt-29", "32.2 32.0 32.8 34.8 33.5 30.2 98.5 29.3"),
                Published("source", 46.40, "gala", "continual CIFAR-100-C, source"),
                Published("pl+gala", 33.69, "gala", "PL + GALA"),
                Published("shot+gala", 32.87, "gala", "SHOT + GALA"),
            ),
        ),
        Protocol(
            name="imagenetc-continual",
            title="ImageNet-C, continual, RobustBench's 5000 images per corruption",
            benchmark="imagenet-c",
            model="Standard_R50",
            setting="continual",
            batch_size=64,
            n_per_domain=5000,
            methods=("source", "norm", "tent"),
            published=(
                Published("source", 82.0, "tta-benchmark", "Continual, ImageNet-C, ResNet-50"),
                Published("norm", 68.6, "tta-benchmark", "Continual, ImageNet-C, BN-1"),
                Published("tent", 62.6, "tta-benchmark", "Continual, ImageNet-C, TENT"),
                *zoo_row("ImageNet-C, ResNet-50", "58.0 61.9 63.1 67.3 65.5 59.9 93.5 54.5"),
                Published("source", 82.4, "cotta", "Table 6 (mean of 10 corruption orders)"),
                Published("norm", 72.1, "cotta", "Table 6, BN Adapt (10 orders)"),
                Published("tent", 66.5, "cotta", "Table 6, TENT (10 orders)"),
            ),
            note="CoTTA's Table 6 averages 10 random corruption orders; this script runs the "
            "standard order once, so compare with the tta-benchmark numbers.",
        ),
    )
}


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
