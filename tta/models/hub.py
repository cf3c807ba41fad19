"""torchvision and timm models, with the normalization of their own weights inside the model.

torchvision: the mean/std of `weights.transforms()`; timm: the mean/std of the model's
`pretrained_cfg`. Data stays in [0, 1]; no ImageNet statistics are assumed for a model whose
weights were trained with others. Resizing and cropping are NOT done inside the model: the
benchmark must deliver images at the model's input size (ImageNet-C is already 224x224).
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

from torch import nn

from tta.classes import mismatch
from tta.models.normalized import Normalized
from tta.models.robustbench_import import INSTALL_HINT

NO_WEIGHTS = ("none", "random")


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} model {name!r}{hint}")


def torchvision_weights(name: str, weights: str | None):
    """The weights enum member for `weights` (None/'none': no weights; default 'DEFAULT')."""
    from torchvision import models

    if name not in models.list_models(module=models):
        raise _unknown("torchvision classification", name, models.list_models(module=models))
    if weights is not None and weights.lower() in NO_WEIGHTS:
        return None
    enum = models.get_model_weights(name)
    key = (weights or "DEFAULT").rsplit(".", 1)[-1]  # accepts ResNet50_Weights.IMAGENET1K_V1
    if key == "DEFAULT":
        return enum.DEFAULT
    if key not in enum.__members__:
        known = ", ".join(["DEFAULT", *(w.name for w in enum), "none"])
        raise ValueError(f"torchvision {name} has no weights {weights!r}; known: {known}")
    return enum[key]


def weights_preprocessing(weights) -> tuple[list[float], list[float], int]:
    """Mean, std and crop size of a torchvision classification weights' transforms."""
    transform = weights.transforms()
    if not hasattr(transform, "mean") or not hasattr(transform, "std"):
        raise ValueError(f"{weights} are not image-classification weights (no mean/std)")
    crop = transform.crop_size
    return (
        list(transform.mean),
        list(transform.std),
        int(crop[0] if isinstance(crop, list) else crop),
    )


def _hub_file(url: str) -> Path:
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_torchvision(
    name: str, weights: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """torchvision `name` with `weights` ('none' for random init), normalized inside."""
    from torchvision import models

    enum = torchvision_weights(name, weights)
    spec = f"torchvision:{name}:{enum.name if enum else 'none'}"
    if enum is None:
        net = models.get_model(name, weights=None, num_classes=num_classes or 1000)
        info = {"weights": None, "num_classes": num_classes or 1000, "input_size": [3, 224, 224]}
        info["normalization"] = {"mean": None, "std": None, "where": "none: no weights given"}
        return net.eval(), {"model": spec, "model_source": "torchvision", **info}
    classes = len(enum.meta["categories"])
    if num_classes is not None and num_classes != classes:
        raise mismatch(f"torchvision {name} with {enum}", classes, num_classes)
    mean, std, size = weights_preprocessing(enum)
    target = _hub_file(enum.url)
    try:
        net = models.get_model(name, weights=enum)
    except Exception as error:  # offline (URLError), truncated file, hash mismatch
        raise FileNotFoundError(
            f"cannot get torchvision weights {enum} ({type(error).__name__}: {error}). They are "
            f"downloaded from {enum.url} to {target}; offline, copy that file there (or set "
            "TORCH_HOME), or load a local checkpoint with '<path>,arch=torchvision:"
            f"{name}:{enum.name}'"
        ) from error
    info = {
        "model": spec,
        "model_source": "torchvision",
        "weights": str(enum),
        "checkpoint": str(target),
        "num_classes": classes,
        "normalization": {
            "mean": mean,
            "std": std,
            "where": f"inside the model ({enum}.transforms())",
        },
        "input_size": [3, size, size],
    }
    return Normalized(net, mean, std).eval(), info


def import_timm():
    """timm, or an error saying how to install it (its import warns about torch.jit: muted)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import timm
    except ImportError as error:
        raise RuntimeError(f"timm models need timm: {INSTALL_HINT}") from error
    return timm


def timm_config(name: str):
    """timm's pretrained config of `name` (mean, std, input size, classes), without building."""
    timm = import_timm()
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    config = get_pretrained_cfg(name)
    if config is None:
        raise ValueError(f"timm {name} has no pretrained config to take its normalization from")
    return config


def load_timm(
    name: str, pretrained: bool = True, num_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """timm `name` (pretrained unless told not), normalized with its pretrained_cfg mean/std."""
    timm = import_timm()
    config = timm_config(name)
    if pretrained and num_classes is not None and num_classes != config.num_classes:
        raise mismatch(f"timm {name} (pretrained)", config.num_classes, num_classes)
    options = {} if pretrained or num_classes is None else {"num_classes": num_classes}
    try:
        net = timm.create_model(name, pretrained=pretrained, **options)
    except Exception as error:  # offline: huggingface_hub / requests / torch.hub errors
        if not pretrained:
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        raise FileNotFoundError(
            f"cannot get pretrained weights of timm {name} ({type(error).__name__}: {error}). "
            f"timm downloads them from the Hugging Face Hub ({config.hf_hub_id or config.url}) "
            f"into {HF_HUB_CACHE}; offline, copy a cached download there, or load a local "
            f"checkpoint with '<path>,arch=timm:{name}'"
        ) from error
    cfg = net.pretrained_cfg
    mean, std = list(cfg["mean"]), list(cfg["std"])
    info = {
        "model": f"timm:{name}" + ("" if pretrained else ":none"),
        "model_source": "timm",
        "weights": (cfg.get("hf_hub_id") or cfg.get("url")) if pretrained else None,
        "num_classes": net.num_classes,
        "normalization": {
            "mean": mean,
            "std": std,
            "where": "inside the model (timm pretrained_cfg)",
        },
        "input_size": list(cfg["input_size"]),
    }
    return Normalized(net, mean, std).eval(), info
