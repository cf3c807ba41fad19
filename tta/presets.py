"""Named presets: each method's recommended optimizer, learning rate, batch size and options.

A preset is looked up by method (a loss name) and dataset family: `cifar` (CIFAR-10-C,
CIFAR-100-C, and fmnist-c, which is generated at CIFAR-10-C strengths for a CIFAR-style
ResNet-20) or `imagenet` (ImageNet-C). `tta-run --method NAME` fills every option the user did
not give from the preset (`--preset-family` picks the family; by default it follows the
benchmark); explicit flags win. Sources, per method:

- tent: TENT paper and DequanWang/tent configs. CIFAR Adam 1e-3 batch 200; ImageNet SGD
  2.5e-4, momentum 0.9, batch 64.
- eta / eata: ImageNet as mr-eggplant/EATA `main.py` (SGD 2.5e-4, momentum 0.9, batch 64,
  d_margin 0.05, fisher_alpha 2000, 2000 Fisher samples). CIFAR: the paper's d_margin 0.4 and
  fisher_alpha 1 with the continual CIFAR protocol's optimizer (Adam 1e-3, batch 200, as
  TENT; the configs of mariodoebler/test-time-adaptation use the same). CIFAR-100-C uses
  d_margin 0.1 (the same configs); the EATA paper has no CIFAR-100 setting.
- sar: mr-eggplant/SAR `main.py`: SGD momentum 0.9, batch 64, lr 2.5e-4 for ResNet-50 at batch
  >= 32 and 2 x 2.5e-4 x batch / 64 below (the rule follows an overridden batch size). SAR has
  no CIFAR setting: Adam 1e-3, batch 200 (continual CIFAR protocol).
- pl / shot-im / shot: the GALA paper's continual CIFAR protocol (batch 200) with Adam, the
  optimizer of the DomainBed TTA protocol it follows (matsuolab/T3A); lr 1e-3 as TENT's CIFAR
  setting. Neither has an ImageNet-C setting: SGD 2.5e-4, momentum 0.9, batch 64, the common
  ImageNet-C optimizer. Method options are the losses' defaults (threshold 0.9, beta 0.1).
- cotta: qinenergy/cotta configs: CIFAR-10 Adam 1e-3, batch 200, ap 0.92, rst 0.01, EMA 0.999
  (CIFAR-100-C: ap 0.72); ImageNet SGD 0.01, momentum 0.9, batch 64, ap 0.1, rst 0.001,
  symmetric cross-entropy (the official ImageNet SGD is Nesterov; ours is plain momentum).
- deyo: Jhyun17/DeYO: ImageNet SGD 2.5e-4, momentum 0.9, batch 64; CIFAR: Adam 1e-3, batch 200
  (continual CIFAR protocol; DeYO has no CIFAR-C setting).
- lame: no gradient step (optimizer unused); batch 200 CIFAR, 64 ImageNet.

Method options (`options`) are named as the method's constructor names them; those that differ
between benchmarks of one family (d_margin, CoTTA's ap on CIFAR-100-C) are in
`BENCHMARK_OPTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

FAMILIES = ("cifar", "imagenet")


@dataclass(frozen=True)
class Preset:
    """Recommended settings of one method for one dataset family.

    `params=None` keeps the loss's own `default_params`; `lr_rule`, when set, gives the
    learning rate for any batch size (SAR scales it below batch 32).
    """

    optimizer: str
    lr: float
    batch_size: int
    momentum: float = 0.9
    params: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    lr_rule: Callable[[int], float] | None = None

    def lr_for(self, batch_size: int) -> float:
        return self.lr_rule(batch_size) if self.lr_rule else self.lr


def sar_lr(batch_size: int) -> float:
    """SAR's ResNet-50 rule (mr-eggplant/SAR main.py): 2.5e-4, or 2 x 2.5e-4 x bs / 64 below 32."""
    return 0.00025 if batch_size >= 32 else 2 * 0.00025 * batch_size / 64


CIFAR_ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 200}
IMAGENET_SGD = {"optimizer": "sgd", "lr": 0.00025, "batch_size": 64, "momentum": 0.9}

PRESETS: dict[tuple[str, str], Preset] = {
    ("tent", "cifar"): Preset(**CIFAR_ADAM),
    ("tent", "imagenet"): Preset(**IMAGENET_SGD),
    ("eta", "cifar"): Preset(**CIFAR_ADAM, options={"d_margin": 0.4}),
    ("eta", "imagenet"): Preset(**IMAGENET_SGD, options={"d_margin": 0.05}),
    ("eata", "cifar"): Preset(
        **CIFAR_ADAM, options={"d_margin": 0.4, "fisher_alpha": 1.0, "num_samples": 2000}
    ),
    ("eata", "imagenet"): Preset(
        **IMAGENET_SGD, options={"d_margin": 0.05, "fisher_alpha": 2000.0, "num_samples": 2000}
    ),
    ("sar", "cifar"): Preset(**CIFAR_ADAM),
    ("sar", "imagenet"): Preset(**IMAGENET_SGD, lr_rule=sar_lr),
    ("pl", "cifar"): Preset(**CIFAR_ADAM),
    ("pl", "imagenet"): Preset(**IMAGENET_SGD),
    ("shot-im", "cifar"): Preset(**CIFAR_ADAM),
    ("shot-im", "imagenet"): Preset(**IMAGENET_SGD),
    ("shot", "cifar"): Preset(**CIFAR_ADAM),
    ("shot", "imagenet"): Preset(**IMAGENET_SGD),
    ("cotta", "cifar"): Preset(**CIFAR_ADAM, options={"ap": 0.92, "rst": 0.01, "alpha": 0.999}),
    ("cotta", "imagenet"): Preset(
        **{**IMAGENET_SGD, "lr": 0.01},
        options={"ap": 0.1, "rst": 0.001, "alpha": 0.999, "symmetric": True},
    ),
    ("deyo", "cifar"): Preset(**CIFAR_ADAM),
    ("deyo", "imagenet"): Preset(**IMAGENET_SGD),
    ("lame", "cifar"): Preset(**CIFAR_ADAM),
    ("lame", "imagenet"): Preset(**IMAGENET_SGD),
}

# Method options that differ within a family, by benchmark name.
BENCHMARK_OPTIONS: dict[tuple[str, str], Mapping[str, object]] = {
    ("eta", "cifar100-c"): MappingProxyType({"d_margin": 0.1}),
    ("eata", "cifar100-c"): MappingProxyType({"d_margin": 0.1}),
    ("cotta", "cifar100-c"): MappingProxyType({"ap": 0.72}),
}


def methods() -> list[str]:
    return sorted({method for method, _ in PRESETS})


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
    """The preset of `method` for `family`, with the options specific to `benchmark` applied."""
    if family not in FAMILIES:
        raise ValueError(f"unknown preset family {family!r}; known: {', '.join(FAMILIES)}")
    if (method, family) not in PRESETS:
        raise ValueError(
            f"no preset for method {method!r}; methods with presets: {', '.join(methods())}"
        )
    found = PRESETS[(method, family)]
    extra = BENCHMARK_OPTIONS.get((method, benchmark or ""), {})
    if not extra:
        return found
    return replace(found, options={**found.options, **extra})
