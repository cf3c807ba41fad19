"""The run description: every `tta-run` option in one dataclass, and its preset resolution.

The command line, the reproduction scripts and multi-seed runs all build a `RunConfig` and
hand it to `tta.harness.run.run`, so presets, defaults and name checks apply one way. The
adaptation defaults are read from `tta.adapt`'s signature, so the CLI and the API cannot
drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import tta
from tta.data.benchmarks import BENCHMARKS
from tta.harness.brittleness import BrittlenessOptions
from tta.precision import check_amp
from tta.presets import family_of, preset
from tta.registry import LAYER_SELECTORS, LOSSES, NORMS, SAMPLE_FILTERS

# The adaptation options whose defaults come from `tta.adapt` (one place for CLI and API).
API_OPTIONS = ("loss", "optimizer", "lr", "momentum", "steps", "selector")
API_DEFAULTS = MappingProxyType(
    {name: inspect.signature(tta.adapt).parameters[name].default for name in API_OPTIONS}
)
DEFAULT_BATCH_SIZE = 200
# Images per domain when none is given; other benchmarks take every image.
DEFAULT_N_PER_DOMAIN = MappingProxyType({"fmnist-c": 1000, "imagenet-c": 5000})
# Clean test images that forgetting (EATA) is measured on; 0 turns it off.
DEFAULT_FORGETTING_IMAGES = 1000


@dataclass(frozen=True)
class RunConfig:
    """One run: method, stream, model, data and output. `resolve` fills what is left None.

    `norm`: the BatchNorm statistics mode (None: the loss's default). `params`: 'norm',
    'all', a list of parameter names, or a comma-separated string of them (one name is a
    list of one). `n_per_domain`: an int, 'all', or None (the benchmark's
    default). `method`: a preset (`tta.presets`) that fills loss, optimizer, lr, momentum,
    batch size, params and loss options the config leaves None; explicit values win.
    `no_source` / `no_all_layers` skip the source baseline / the same method updating all
    layers (run when the selector is not 'all'). `forgetting`: clean test images to measure
    forgetting on (0: off). `threads`: CPU threads (None: `tta.harness.threads`' default).
    `reset_every`: back to the source every N adaptation steps (RDumb; 0: never; None: the
    loss's default, 1000 for rdumb).
    `amp` ('bf16', 'fp16' or None) and `channels_last`: the adapted run's precision and
    memory format (`tta.precision`); the source baseline runs in float32.
    `brittleness`: an L-inf budget turns on the brittleness monitor
    (`tta.harness.brittleness`), its threshold set on `brittle_calibration` clean images;
    `robust_batches`: batches per domain attacked with APGD-CE (0: none).
    """

    method: str | None = None
    preset_family: str | None = None
    loss: str | None = None
    loss_options: dict[str, Any] = field(default_factory=dict)
    params: str | Sequence[str] | None = None
    selector: str = API_DEFAULTS["selector"]
    selector_options: dict[str, Any] = field(default_factory=dict)
    sample_filter: str | None = None
    sample_filter_options: dict[str, Any] = field(default_factory=dict)
    norm: str | None = None
    norm_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    steps: int = API_DEFAULTS["steps"]
    reset_every: int | None = None
    amp: str | None = None
    channels_last: bool = False
    benchmark: str = "fmnist-c"
    corruptions: str | Sequence[str] | None = None
    severity: int = 5
    setting: str = "continual"
    dirichlet_delta: float | None = None
    order_seed: int | None = None
    model: str | None = None
    model_dir: str | None = None
    dataset: str | None = None
    target: str | None = None
    batch_size: int | None = None
    n_per_domain: int | str | None = None
    seed: int = 0
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    no_source: bool = False
    no_all_layers: bool = False
    forgetting: int = DEFAULT_FORGETTING_IMAGES
    threads: int | None = None
    brittleness: float | None = None
    brittle_calibration: int = 300
    robust_batches: int = 0
    out: str | None = None


def parse_params(params: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """'norm' / 'all' stay keywords; anything else is a list of names ('layer3' -> ('layer3',))."""
    if params is None or params in ("norm", "all"):
        return params
    names = params.split(",") if isinstance(params, str) else list(params)
    names = tuple(name.strip() for name in names if name.strip())
    if not names:
        raise ValueError(f"params {params!r} names no parameter; pass norm, all, or names")
    return names


def parse_n_per_domain(n: int | str | None, benchmark: str) -> int | None:
    """Images per domain: an int, 'all' (None: every image), or the benchmark's default."""
    if n is None:
        return DEFAULT_N_PER_DOMAIN.get(benchmark)
    if str(n).lower() == "all":
        return None
    try:
        return int(n)
    except ValueError as error:
        raise ValueError(f"--n-per-domain takes a positive integer or 'all', got {n!r}") from error


def _apply_preset(config: RunConfig) -> RunConfig:
    """Fill what the config leaves None from the `method` preset; explicit values win."""
    if config.loss is not None and config.loss != config.method:
        raise ValueError(
            f"--method {config.method} sets the loss to {config.method!r}, but --loss "
            f"{config.loss} was given; pass one of them"
        )
    if config.preset_family is None:
        BENCHMARKS.get(config.benchmark)  # an unknown name says so before the family lookup
    family = config.preset_family or family_of(config.benchmark)
    found = preset(config.method, family, config.benchmark)
    filled = {
        key: getattr(found, key)
        for key in ("optimizer", "batch_size", "momentum", "params")
        if getattr(config, key) is None
    }
    batch_size = filled.get("batch_size", config.batch_size)
    return replace(
        config,
        preset_family=family,
        loss=config.method,
        lr=found.lr_for(batch_size) if config.lr is None else config.lr,
        loss_options={**found.options, **config.loss_options},
        **filled,
    )


def resolve(config: RunConfig) -> RunConfig:
    """The config with every default filled: the `method` preset first, then `tta.adapt`'s.

    Idempotent. Raises ValueError on conflicting or malformed options.
    """
    if config.method is not None:
        config = _apply_preset(config)
    elif config.preset_family is not None:
        raise ValueError("--preset-family chooses the preset of --method; pass --method too")
    if config.forgetting < 0:
        raise ValueError(f"--forgetting takes a number of images >= 0, got {config.forgetting}")
    check_amp(config.amp)
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {config.threads}")
    if config.reset_every is not None and config.reset_every < 0:
        raise ValueError(f"--reset-every takes a number of steps >= 0, got {config.reset_every}")
    if config.brittleness is not None:
        brittleness_options(config)  # raises on a bad budget or count
    elif config.robust_batches:
        raise ValueError("--robust-batches attacks at the --brittleness budget; pass it too")
    filled = {key: API_DEFAULTS[key] for key in API_OPTIONS if getattr(config, key) is None}
    if config.batch_size is None:
        filled["batch_size"] = DEFAULT_BATCH_SIZE
    return replace(config, params=parse_params(config.params), **filled)


def brittleness_options(config: RunConfig) -> BrittlenessOptions | None:
    """The monitor's options, or None when `brittleness` is off."""
    if config.brittleness is None:
        return None
    return BrittlenessOptions(
        eps=config.brittleness,
        calibration_images=config.brittle_calibration,
        robust_batches=config.robust_batches,
        seed=config.seed,
    )


def method_notes(config: RunConfig) -> list[str]:
    """One line per way the config changes its `method`'s paper setting (shown to the user)."""
    if config.method is None or config.selector == API_DEFAULTS["selector"]:
        return []
    return [
        f"note: --method {config.method} updates all layers in its paper; --selector "
        f"{config.selector} changes the method's layer selection"
    ]


def check_names(config: RunConfig, registered_benchmark: bool = True) -> None:
    """Fail on unknown names before any model is trained or data generated.

    `registered_benchmark=False` skips the benchmark name (a caller passes its own instance).
    """
    LOSSES.get(config.loss)
    LAYER_SELECTORS.get(config.selector)
    if registered_benchmark:
        BENCHMARKS.get(config.benchmark)
    if config.sample_filter:
        SAMPLE_FILTERS.get(config.sample_filter)
    if config.norm:
        NORMS.get(config.norm)
