"""Input validation with errors that say what was wrong and how to fix it.

What a model takes is read from its first layer (in module order): a 2-D convolution or a
patch embedding takes images (B, C, H, W) in a known value range; a 1-D or 3-D convolution
takes (B, C, L) or (B, C, D, H, W); a linear layer takes (B, ..., features); an embedding
takes integer ids. Every floating-point input must match the model's dtype and be finite,
and every batch must hold at least one sample. Only image models get a value-range check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TOKEN_LAYERS = (nn.Embedding, nn.EmbeddingBag)
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.RNNBase, *TOKEN_LAYERS)
CONV_SHAPES = {
    nn.Conv1d: ("signals", "(batch, channels, length)"),
    nn.Conv2d: ("images", "(batch, channels, height, width)"),
    nn.Conv3d: ("volumes", "(batch, channels, depth, height, width)"),
}


@dataclass(frozen=True)
class InputKind:
    """What a model's first layer says about its input; `ndim` counts the batch dimension."""

    name: str  # images, signals, volumes, features, tokens, sequences or inputs
    layer: str  # the first layer, for messages: "Conv2d 'conv1'"
    shape: str  # "(batch, channels, height, width)"
    ndim: int | None = None  # the exact number of dimensions, when the layer fixes it
    min_ndim: int = 1
    channels: int | None = None
    integer: bool = False  # token ids, not values

    @property
    def images(self) -> bool:
        return self.name == "images"


def is_patch_embedding(name: str, module: nn.Module) -> bool:
    """timm's `PatchEmbed` and the like, recognized by class or attribute name."""
    names = (type(module).__name__, name.rsplit(".", 1)[-1])
    return any("patchembed" in n.lower().replace("_", "") for n in names)


def input_kind(model: nn.Module) -> InputKind:
    """The kind of input `model` takes, from its first layer (module registration order)."""
    for name, module in model.named_modules():
        label = f"{type(module).__name__} {name!r}" if name else type(module).__name__
        if is_patch_embedding(name, module):
            conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
            channels = conv.in_channels if conv is not None else None
            shape = CONV_SHAPES[nn.Conv2d][1]
            return InputKind("images", label, shape, ndim=4, channels=channels or None)
        if not isinstance(module, LAYERS):
            continue
        for conv_type, (kind, shape) in CONV_SHAPES.items():
            if isinstance(module, conv_type):
                ndim = shape.count(",") + 1
                return InputKind(kind, label, shape, ndim=ndim, channels=module.in_channels or None)
        if isinstance(module, nn.Linear):
            return InputKind("features", label, "(batch, ..., features)", min_ndim=2)
        if isinstance(module, TOKEN_LAYERS):
            return InputKind("tokens", label, "(batch, ...) of integer ids", integer=True)
        return InputKind("sequences", label, "(batch, time, features)", min_ndim=2)
    return InputKind("inputs", "", "(batch, ...)")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (None without one)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return None


def check_input(
    x: object,
    kind: InputKind,
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Check one batch for a model that takes `kind`; the range is checked for images only.

    `dtype` is the model's parameter dtype: a floating-point input must match it (unless
    autocast is on, which casts inputs itself).
    """
    what = f"{kind.name} {kind.shape}"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of {what}, got {type(x).__name__}")
    _check_dims(x, kind, what)
    if x.shape[0] == 0:
        raise ValueError(
            f"got an empty batch (0 samples, shape {tuple(x.shape)}); pass at least one "
            "sample per call (skip empty batches)"
        )
    _check_dtype(x, kind, dtype)
    if kind.channels is not None and x.shape[1] != kind.channels:
        raise ValueError(
            f"the model's first layer ({kind.layer}) expects {kind.channels} input channels, "
            f"got shape {tuple(x.shape)} with {x.shape[1]}; {kind.name} must be {kind.shape}"
        )
    if x.is_floating_point():
        _check_values(x, value_range if kind.images else None)
    return x


def _check_dims(x: torch.Tensor, kind: InputKind, what: str) -> None:
    wanted = kind.ndim if kind.ndim is not None else kind.min_ndim
    if x.ndim == wanted or (kind.ndim is None and x.ndim > wanted):
        return
    layer = f" (first layer {kind.layer})" if kind.layer else ""
    hint = "; add a batch dimension with x.unsqueeze(0) for one sample" if x.ndim < wanted else ""
    raise ValueError(
        f"the model{layer} takes {what}, got shape {tuple(x.shape)} ({x.ndim} dimensions){hint}"
    )


def _check_dtype(x: torch.Tensor, kind: InputKind, dtype: torch.dtype | None) -> None:
    if kind.integer:
        if x.is_floating_point() or x.dtype == torch.bool:
            raise TypeError(
                f"the model's first layer ({kind.layer}) takes integer ids, got dtype "
                f"{x.dtype}; convert with x.long()"
            )
        return
    if not x.is_floating_point():
        if kind.images and x.dtype == torch.uint8:
            hint = " (convert with x.float() / 255)"
        else:
            hint = f" (convert with x.to({dtype}))" if dtype else " (convert with x.float())"
        raise TypeError(f"expected a floating-point {kind.name} tensor, got dtype {x.dtype}{hint}")
    if dtype is None or x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
        return
    fix = "x.float()" if dtype == torch.float32 else f"x.to({dtype})"
    raise TypeError(
        f"the input has dtype {x.dtype} but the model's parameters are {dtype}; convert the "
        f"input with {fix} (or the model with model.to({x.dtype}))"
    )


def _check_values(x: torch.Tensor, value_range: tuple[float, float] | None) -> None:
    """Finite values first (NaN would defeat a range check), then the range: one device sync."""
    bad = ~torch.isfinite(x)
    counts = [bad.sum(), bad.reshape(len(x), -1).any(1).sum()]
    extremes = [x.min(), x.max()] if value_range is not None else []
    n_bad, n_samples, *span = torch.stack([v.double() for v in counts + extremes]).tolist()
    if n_bad:
        raise ValueError(
            f"the input holds {int(n_bad)} NaN/inf value(s) in {int(n_samples)} of {len(x)} "
            "samples; replace them (e.g. torch.nan_to_num(x)) or drop those samples"
        )
    if value_range is None:
        return
    (low, high), (lo, hi) = value_range, span
    if not (lo >= low - 1e-4 and hi <= high + 1e-4):
        raise ValueError(
            f"input values span [{lo:.3g}, {hi:.3g}] but the model expects [{low:g}, {high:g}]: "
            "tta models normalize inside the model, so pass unnormalized images "
            "(e.g. x / 255), or pass input_range=None if your model takes another range"
        )


def require_images(model: nn.Module, needed_by: str, why: str) -> None:
    """Refuse a non-image model for a method whose objective transforms images."""
    kind = input_kind(model)
    if not kind.images:
        first = f"first layer {kind.layer}" if kind.layer else "model"
        raise ValueError(
            f"{needed_by} {why}, so it needs an image model (first layer a 2-D convolution or "
            f"a patch embedding), but the {first} takes {kind.name} {kind.shape}; use a loss "
            "that works on any classifier (e.g. tent, eta, sar, pl, shot)"
        )
