"""The pieces of a run built from a resolved `RunConfig`: device, benchmark, stream, model,
the adapted model. Each fails with a message that names the option to change."""

from __future__ import annotations

import torch
from torch import nn

import tta
from tta.data.base import Benchmark
from tta.data.benchmarks import BENCHMARKS
from tta.engine import AdaptedModel
from tta.harness.config import RunConfig, parse_n_per_domain
from tta.harness.stream import StreamSpec, to_batch
from tta.models.zoo import default_model_for, model_for_benchmark
from tta.registry import LOSSES


def pick_device(name: str) -> torch.device:
    """'auto' is the GPU when there is one; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def build_benchmark(config: RunConfig) -> Benchmark:
    options = {"data_root": config.data_root, "download": config.download}
    if config.dataset is not None or config.target is not None:
        options.update(dataset=config.dataset, target=config.target)
    return BENCHMARKS.create(config.benchmark, **options)


def build_spec(config: RunConfig, benchmark: Benchmark) -> StreamSpec:
    """The stream of the config; domain names are checked against the benchmark."""
    spec = StreamSpec(
        benchmark=benchmark.name,
        corruptions=config.corruptions or benchmark.default_domains(),
        severity=config.severity if benchmark.uses_severity else None,
        setting=config.setting,
        batch_size=config.batch_size,
        n_per_domain=parse_n_per_domain(config.n_per_domain, benchmark.name),
        seed=config.seed,
        dirichlet_delta=config.dirichlet_delta,
        order_seed=config.order_seed,
    )
    benchmark.check_domains(spec.domains())
    return spec


def build_model(config: RunConfig, benchmark: Benchmark) -> tuple[nn.Module, dict]:
    """`--model`, or the benchmark's own source model; checked against its class count."""
    if config.model is None:
        model, info = default_model_for(benchmark)
    else:
        model, info = model_for_benchmark(config.model, benchmark, config.model_dir)
    benchmark.check_model(model)
    return model, info


def source_data(config: RunConfig, benchmark: Benchmark, device: torch.device) -> dict:
    """Clean source images for a loss that needs them (EATA's Fisher), in test-size batches.

    A loss declares the need with a `source_data_option` class attribute (the constructor
    argument to fill) and `default_num_samples`; `num_samples` in the loss options overrides
    the count. The images come from the benchmark's source split; a loss that also declares
    `source_data_labels = True` (RMT, SANTA) gets (images, labels) batches.
    """
    factory = LOSSES.get(config.loss)
    option = getattr(factory, "source_data_option", None)
    if option is None or option in config.loss_options:
        return {}
    default = getattr(factory, "default_num_samples", 2000)
    n = int(config.loss_options.get("num_samples", default))
    try:
        images, labels = benchmark.source_samples(n, config.seed)
    except NotImplementedError as error:
        raise ValueError(
            f"loss {config.loss!r} needs clean source images ({option}), but {error}; "
            "use a loss without them (e.g. eta instead of eata)"
        ) from error
    size = config.batch_size
    if getattr(factory, "source_data_labels", False):
        return {
            option: (
                (to_batch(images[i : i + size], device), torch.from_numpy(labels[i : i + size]))
                for i in range(0, len(images), size)
            )
        }
    return {option: (to_batch(images[i : i + size], device) for i in range(0, len(images), size))}


def build_adapted(
    config: RunConfig, model: nn.Module, benchmark: Benchmark, device: torch.device
) -> AdaptedModel:
    """`tta.adapt` with the config's method; `model` is adapted in place."""
    return tta.adapt(
        model,
        loss=config.loss,
        params=list(config.params) if isinstance(config.params, tuple) else config.params,
        selector=config.selector,
        optimizer=config.optimizer,
        lr=config.lr,
        steps=config.steps,
        reset_every=config.reset_every,
        momentum=config.momentum,
        selector_options=config.selector_options,
        sample_filter=config.sample_filter,
        sample_filter_options=config.sample_filter_options,
        norm=config.norm,
        norm_options=config.norm_options,
        amp=config.amp,
        channels_last=config.channels_last,
        **config.loss_options,
        **source_data(config, benchmark, device),
    )


def method_card(config: RunConfig, adapted: AdaptedModel) -> dict:
    """The method part of the protocol card: the preset asked for, then every setting that
    ran, defaults included (`AdaptedModel.describe`)."""
    return {"method": config.method, "preset_family": config.preset_family, **adapted.describe()}
