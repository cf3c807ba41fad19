"""A local checkpoint plus the architecture to build for it (no download, ever).

Spelled `<path>,arch=<arch>` in a model spec (or `load_model(path, arch=...)`); `<arch>` is

- `resnet20`, `resnet32`, ... (6n+2): tta's CIFAR ResNet, whose normalization buffers are
  part of its state dict;
- `torchvision:<name>[:<weights>]`: the torchvision architecture; `<weights>` (default
  DEFAULT) names the weights it was trained or fine-tuned from, only to take their
  transforms' mean/std; `none` for a model trained on unnormalized [0, 1] inputs;
- `timm:<name>[:none]`: the timm architecture, normalized with its pretrained_cfg mean/std
  (`none`: no normalization).

Without `arch=`, a tta checkpoint (from `tta-train`) names its own (`config.arch`). The file
holds a state dict, or a dict with one under "state_dict", "model" or "model_state_dict";
DataParallel's "module." prefix is stripped. It is read with `weights_only=True` (tensors
and plain containers only, never arbitrary pickled code). A state dict of a `Normalized`
wrapper (`normalize.mean`, `net.*`) brings its own mean/std. The number of classes is read
from the checkpoint's classifier and checked against the benchmark before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tta.classes import last_linear, mismatch
from tta.models.normalized import Normalized, find_normalization
from tta.models.resnet import ResNetCifar

STATE_KEYS = ("state_dict", "model", "model_state_dict")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, the whole file's dict) of a checkpoint file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        hint = (
            "it holds pickled objects beyond tensors; re-save just the state dict "
            "(torch.save(model.state_dict(), path))"
            if "weights_only" in str(error).lower()
            else "is it a complete torch.save file?"
        )
        raise RuntimeError(f"cannot read the checkpoint {path} ({error}); {hint}") from error
    if not isinstance(content, dict):
        raise RuntimeError(f"{path} holds a {type(content).__name__}, not a state dict")
    state = content
    for key in STATE_KEYS:
        if isinstance(content.get(key), dict):
            state = content[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(
            f"{path} holds no state dict (a dict of tensors, or one under {', '.join(STATE_KEYS)})"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}, content


def split_normalized(state: dict[str, torch.Tensor]) -> tuple[dict, dict | None]:
    """A `Normalized` wrapper's state dict -> (the network's state dict, its mean/std)."""
    if "normalize.mean" not in state or not any(k.startswith("net.") for k in state):
        return state, None
    norm = {
        "mean": state["normalize.mean"].flatten().tolist(),
        "std": state["normalize.std"].flatten().tolist(),
    }
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}, norm


def parse_arch(arch: str) -> tuple[str, str, str | None]:
    """'torchvision:resnet50:IMAGENET1K_V1' -> ('torchvision', 'resnet50', 'IMAGENET1K_V1')."""
    kind, _, rest = arch.partition(":")
    if kind in ("torchvision", "timm"):
        name, _, weights = rest.partition(":")
        if not name:
            raise ValueError(f"arch {arch!r} names no model; e.g. {kind}:resnet50")
        return kind, name, weights or None
    if arch.startswith("resnet") and arch.removeprefix("resnet").isdigit():
        return "tta", arch, None
    raise ValueError(
        f"unknown arch {arch!r}; use resnet20/resnet32/... (tta's CIFAR ResNet), "
        "torchvision:<name>[:<weights>] or timm:<name>"
    )


def build(kind: str, name: str, num_classes: int) -> nn.Module:
    """The bare architecture, randomly initialized, with `num_classes` outputs."""
    if kind == "tta":
        return ResNetCifar(int(name.removeprefix("resnet")), num_classes=num_classes)
    if kind == "torchvision":
        from torchvision import models

        from tta.models.hub import torchvision_weights

        torchvision_weights(name, "none")  # a clear error for an unknown name
        return models.get_model(name, weights=None, num_classes=num_classes)
    from tta.models.hub import import_timm, timm_config

    timm_config(name)
    return import_timm().create_model(name, pretrained=False, num_classes=num_classes)


def head_name(kind: str, name: str) -> str:
    """The classifier's module name, found on a parameter-free (meta) instance."""
    with torch.device("meta"):
        template = build(kind, name, 1000)
    if kind == "timm":
        head = template.pretrained_cfg.get("classifier")
        return head[0] if isinstance(head, (tuple, list)) else head
    found = last_linear(template)
    if found is None:
        raise ValueError(f"cannot find the classifier of {kind}:{name} (no nn.Linear)")
    return found[0]


def preprocessing(kind: str, name: str, weights: str | None) -> dict | None:
    """Mean/std the arch's named weights (torchvision) or pretrained_cfg (timm) prescribe."""
    if kind == "torchvision":
        from tta.models.hub import torchvision_weights, weights_preprocessing

        enum = torchvision_weights(name, weights)
        if enum is None:
            return None
        mean, std, _ = weights_preprocessing(enum)
        return {"mean": mean, "std": std, "where": f"inside the model ({enum}.transforms())"}
    if kind == "timm" and (weights or "").lower() not in ("none", "random"):
        from tta.models.hub import timm_config

        config = timm_config(name)
        return {
            "mean": list(config.mean),
            "std": list(config.std),
            "where": "inside the model (timm pretrained_cfg)",
        }
    return None


def input_size(kind: str, name: str) -> list[int]:
    """The input the architecture is made for: 32x32 for tta's CIFAR ResNet, timm's config."""
    if kind == "timm":
        from tta.models.hub import timm_config

        return list(timm_config(name).input_size)
    return [3, 32, 32] if kind == "tta" else [3, 224, 224]


def load_checkpoint_model(
    path: str | os.PathLike, arch: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """The model `arch` with the weights of `path`, normalization inside, in eval mode."""
    state, content = read_checkpoint(path)
    arch = arch or (content.get("config") or {}).get("arch")
    if not arch:
        raise ValueError(
            f"which architecture is {path}? spell the model as '{path},arch=<arch>' "
            "(resnet20, torchvision:<name>[:<weights>], timm:<name>)"
        )
    kind, name, weights = parse_arch(arch)
    state, saved_norm = split_normalized(state)
    head = head_name(kind, name)
    if f"{head}.weight" not in state:
        raise RuntimeError(f"{path} does not fit arch {arch}: it has no classifier {head}.weight")
    classes = int(state[f"{head}.weight"].shape[0])
    if num_classes is not None and classes != num_classes:
        raise mismatch(
            f"the checkpoint {path} ({head}.weight {list(state[head + '.weight'].shape)})",
            classes,
            num_classes,
        )
    net = build(kind, name, classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(f"{path} does not fit arch {arch}: {error}") from error
    norm = saved_norm and {**saved_norm, "where": "inside the model (saved in the checkpoint)"}
    if kind == "tta":  # ResNetCifar normalizes inside, with the buffers just loaded
        inside = find_normalization(net)
        norm, model = inside and {**inside, "where": "inside the model (its state dict)"}, net
    else:
        norm = norm or preprocessing(kind, name, weights)
        model = Normalized(net, norm["mean"], norm["std"]) if norm else net
    info = {
        "model": f"{path},arch={arch}",
        "model_source": "checkpoint",
        "checkpoint": str(path),
        "arch": arch,
        "num_classes": classes,
        "normalization": norm or {"mean": None, "std": None, "where": "none: [0, 1] inputs"},
        "input_size": input_size(kind, name),
    }
    return model.eval(), info
