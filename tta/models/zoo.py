"""Models by spec (`--model`): RobustBench names, torchvision, timm, or a local checkpoint.

Spellings of `spec`:

- `Standard`, `Hendrycks2020AugMix_ResNeXt`, `Standard_R50`, ... (or `robustbench:<name>`):
  a RobustBench zoo model for `dataset` (cifar10, cifar100, imagenet), threat model
  `corruptions` first, then `Linf`, `L2`; read from `<model_dir>/<dataset>/<threat_model>/
  <name>.pt`, downloaded there by robustbench when missing and online.
- `torchvision:<name>[:<weights>]`, e.g. `torchvision:resnet50:IMAGENET1K_V1`; `<weights>`
  defaults to DEFAULT (torchvision's best; the resolved name is recorded), `none` builds it
  randomly initialized.
- `timm:<name>[:none]`, e.g. `timm:resnet50.a1_in1k`: pretrained unless `:none`.
- `<path>,arch=<arch>`, e.g. `runs/ft.pt,arch=torchvision:resnet50:IMAGENET1K_V1` or
  `ckpt.pt,arch=resnet20`: a local checkpoint (see `tta.models.checkpoint`); `arch=` may also
  be passed as a keyword, and a tta checkpoint names its own.

Every model comes back in eval mode taking images in [0, 1], its normalization inside, with an
info dict for the protocol card: model, model_source, num_classes, normalization (mean, std,
where it comes from), input_size, and the checkpoint or weights used.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from tta.classes import check_num_classes, mismatch

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")
# robustbench's dataset of each benchmark whose source models it publishes.
BENCHMARK_DATASETS = {"cifar10-c": "cifar10", "cifar100-c": "cifar100", "imagenet-c": "imagenet"}


def is_checkpoint_spec(spec: str) -> bool:
    """A path (with `,arch=`, a checkpoint suffix, a directory part, or an existing file)."""
    path = spec.split(",", 1)[0]
    return (
        ",arch=" in spec
        or path.lower().endswith(CHECKPOINT_SUFFIXES)
        or "/" in path
        or os.sep in path
        or Path(path).is_file()
    )


def parse_checkpoint_spec(spec: str, arch: str | None) -> tuple[str, str | None]:
    """'path,arch=resnet20' -> ('path', 'resnet20'); a keyword `arch` must agree."""
    path, *options = spec.split(",")
    for option in options:
        key, _, value = option.partition("=")
        if key.strip() != "arch" or not value:
            raise ValueError(f"unknown checkpoint option {option!r} in {spec!r}; use ,arch=<arch>")
        if arch is not None and arch != value:
            raise ValueError(f"{spec!r} says arch={value} but arch={arch!r} was passed")
        arch = value
    return path, arch


def load_model(
    spec: str,
    num_classes: int | None = None,
    dataset: str | None = None,
    model_dir: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    threat_model: str | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, dict]:
    """The model `spec` names (see the module docstring) and its info dict.

    `num_classes`: the benchmark's class count; a model that predicts another number is
    refused with `ClassCountError`, from metadata before any download where possible and
    by one tiny forward pass (a 1-image batch of `image_size`, default the model's input
    size) at the end. `dataset` and `model_dir` matter for RobustBench names only.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty model spec")
    if spec.startswith("torchvision:"):
        from tta.models.hub import load_torchvision

        name, _, weights = spec.removeprefix("torchvision:").partition(":")
        model, info = load_torchvision(name, weights or None, num_classes)
    elif spec.startswith("timm:"):
        from tta.models.hub import NO_WEIGHTS, load_timm

        name, _, weights = spec.removeprefix("timm:").partition(":")
        if weights and weights.lower() not in NO_WEIGHTS:
            raise ValueError(f"timm:{name}:{weights}: the third field may only be 'none'")
        model, info = load_timm(name, pretrained=not weights, num_classes=num_classes)
    elif is_checkpoint_spec(spec):
        from tta.models.checkpoint import load_checkpoint_model

        path, arch = parse_checkpoint_spec(spec, arch)
        model, info = load_checkpoint_model(path, arch, num_classes)
    else:
        from tta.models.robustbench_zoo import DATASETS, load_robustbench

        name = spec.removeprefix("robustbench:")
        if dataset is None:
            raise ValueError(
                f"{name!r} is read as a robustbench model, which needs a dataset "
                f"({', '.join(DATASETS)}); for other models use torchvision:<name>, "
                "timm:<name> or <path>,arch=<arch>"
            )
        if dataset in DATASETS and num_classes not in (None, DATASETS[dataset]):
            raise mismatch(f"robustbench {dataset} model {name!r}", DATASETS[dataset], num_classes)
        model, info = load_robustbench(name, dataset, model_dir, threat_model)
    if num_classes is not None:
        size = image_size or info["input_size"][-1]
        check_num_classes(model, num_classes, (3, size, size), what=info["model"])
    return model, info


def model_for_benchmark(
    spec: str, benchmark: object, model_dir: str | os.PathLike | None = None
) -> tuple[nn.Module, dict]:
    """`--model SPEC` for a benchmark: its robustbench dataset, class count and image size.

    Checks, before any adaptation, that the model takes the benchmark's images and predicts
    its number of classes.
    """
    name = getattr(benchmark, "name", "")
    dataset = BENCHMARK_DATASETS.get(name)
    if dataset is None and not (
        spec.startswith(("torchvision:", "timm:")) or is_checkpoint_spec(spec)
    ):
        raise ValueError(
            f"{spec!r} is read as a robustbench model, but robustbench has none for benchmark "
            f"{name!r} (only {', '.join(BENCHMARK_DATASETS)}); use torchvision:<name>, "
            "timm:<name> or <path>,arch=<arch>"
        )
    return load_model(
        spec,
        num_classes=benchmark.num_classes,
        dataset=dataset,
        model_dir=model_dir,
        image_size=getattr(benchmark, "image_size", None),
    )


def default_model_for(benchmark: object) -> tuple[nn.Module, dict]:
    """The benchmark's built-in source model (the shipped ResNet-20 for fmnist-c).

    Other benchmarks have none: pass a model (`--model`); DomainBed's is fine-tuned on its
    source domains with `tta.models.domainbed_train.train_source`.
    """
    name = getattr(benchmark, "name", "")
    if name == "fmnist-c":
        from tta.models.source import source_model

        model, checkpoint = source_model(data_root=getattr(benchmark, "data_root", None))
        info = {"model": checkpoint["config"]["arch"], "checkpoint": checkpoint["config"]}
        info["clean_accuracy"] = checkpoint.get("clean_accuracy")
        return model, info
    if name == "domainbed":
        raise NotImplementedError(
            "domainbed has no built-in source model: fine-tune one on the source domains with "
            "tta.models.domainbed_train.train_source and pass it as the model"
        )
    raise NotImplementedError(f"{name} has no built-in source model; pass a model (--model)")
