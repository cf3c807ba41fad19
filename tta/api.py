"""`tta.adapt`: wrap a model so that it predicts and adapts online."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import tta.filters  # noqa: F401  (registers the sample filters)
import tta.losses  # noqa: F401  (registers the losses)
import tta.norm  # noqa: F401  (registers the normalization modes)
import tta.selectors  # noqa: F401  (registers the layer selectors)
from tta.engine import AdaptedModel, check_reset_every
from tta.layers import partition
from tta.params import ParamSpec, freeze_all_but, select_parameters
from tta.precision import Precision
from tta.registry import LAYER_SELECTORS, LOSSES, NORMS, SAMPLE_FILTERS

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam (betas 0.9/0.999) or SGD with momentum, as the TENT reference code builds them."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def describe_params(
    model: nn.Module, spec: ParamSpec, trainable: list[tuple[str, nn.Parameter]]
) -> str | list[str]:
    """The trainable set as short as it reads: the spec's name, 'all', 'norm', or the names."""
    if isinstance(spec, str):
        return spec
    names = [name for name, _ in trainable]
    if names == [name for name, _ in model.named_parameters()]:
        return "all"
    try:
        if names == [name for name, _ in select_parameters(model, "norm")]:
            return "norm"
    except ValueError:  # no norm layer
        pass
    return list(spec)


def adapt(
    model: nn.Module,
    loss: str = "tent",
    params: ParamSpec = None,
    selector: str = "all",
    optimizer: str = "adam",
    lr: float = 1e-3,
    steps: int = 1,
    episodic: bool = False,
    *,
    selector_options: dict[str, Any] | None = None,
    sample_filter: str | None = None,
    sample_filter_options: dict[str, Any] | None = None,
    norm: str | None = None,
    norm_options: dict[str, Any] | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    amp: str | None = None,
    channels_last: bool = False,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    reset_every: int | None = None,
    **loss_options: Any,
) -> AdaptedModel:
    """Wrap `model` for online test-time adaptation; the module is adapted in place.

    `params` is which parameters may train at all ('norm', 'all', or a list of names; the
    default comes from the selector when it has one, GALA's being every layer as in its
    paper, else from the loss), `selector` which of those layers each step may update,
    `norm` what BatchNorm normalizes with ('source', 'batch', 'alpha', 'ema', 'robust',
    'window'; the default comes from the loss: 'batch' for TENT and its family).
    Extra keyword arguments go to the loss. Pass `copy.deepcopy(model)` to keep the original.
    Arguments are checked before the model is touched, so a bad call leaves it as it was.
    Any classifier works; `input_range` is the value range checked on every batch of an image
    model (first layer a 2-D convolution or a patch embedding; None turns the check off).
    `amp` runs the forward passes under autocast ('bf16', or 'fp16' with a gradient
    scaler; weights stay float32) and `channels_last` stores weights and images NHWC;
    see tta/precision.py for the losses that cannot use float16.
    `reset_every=N` returns to the source weights, optimizer and loss state after every
    N-th adaptation step (RDumb, Press et al., NeurIPS 2023; 0: never; None: the loss's
    `default_reset_every`, 1000 for 'rdumb', else 0).
    `describe()` on the result gives every setting that ran, defaults included.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tta.adapt expects a torch.nn.Module, got {type(model).__name__}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if lr <= 0 or steps < 1:
        raise ValueError(f"lr must be positive and steps >= 1, got lr={lr}, steps={steps}")
    if reset_every is not None:
        check_reset_every(reset_every)
    loss_fn = LOSSES.create(loss, **loss_options)
    if reset_every is None:
        reset_every = loss_fn.default_reset_every
    if reset_every and not loss_fn.adapts:
        raise ValueError(
            f"reset_every={reset_every}: loss {loss!r} takes no adaptation steps, so there is "
            "nothing to reset; use an adapting loss (e.g. eta, tent) or reset_every=0"
        )
    layer_selector = LAYER_SELECTORS.create(selector, **(selector_options or {}))
    filter_fn = (
        SAMPLE_FILTERS.create(sample_filter, **(sample_filter_options or {}))
        if sample_filter
        else None
    )
    if (
        filter_fn is not None
        and filter_fn.needs_logit_objective
        and not loss_fn.scores_logits_alone
    ):
        raise ValueError(
            f"sample filter {sample_filter!r} differentiates the loss of each sample's logits, "
            f"but loss {loss!r} needs more than the logits (its objective uses the images or a "
            "teacher); use another sample filter with this loss"
        )
    restarts = "at every test point" if getattr(loss_fn, "per_sample", False) else None
    restarts = restarts or ("at every batch (episodic)" if episodic else None)
    if restarts and loss_fn.adapts and steps <= layer_selector.warmup_steps:
        raise ValueError(
            f"selector {selector!r} skips its first {layer_selector.warmup_steps} steps after "
            f"a reset to collect gradients, but loss {loss!r} restarts from the source "
            f"{restarts} with steps={steps}, so no step would ever update; use steps >= "
            f"{layer_selector.warmup_steps + 1} or another selector"
        )
    norm_name = norm or loss_fn.default_norm
    if norm is None and norm_options is None:  # the loss's own (e.g. MEMO's BatchNorm prior)
        norm_options = getattr(loss_fn, "default_norm_options", None)
    norm_mode = NORMS.create(norm_name, **(norm_options or {}))
    loss_fn.check_model(model)
    precision = Precision(amp, channels_last)
    precision.check(model, loss_fn, loss)
    if selector != "all" and getattr(loss_fn, "refuses_layer_selectors", False):
        raise ValueError(
            f"loss {loss!r} trains no parameter (it adjusts the outputs only), so layer "
            f"selector {selector!r} has nothing to select; use selector 'all'"
        )
    try:
        norm_mode.check_model(model)
    except ValueError as error:
        if norm is not None:
            raise
        raise ValueError(f"loss {loss!r} runs with its default {error}") from error
    spec = params or layer_selector.default_params or loss_fn.params_for(model)
    trainable = select_parameters(model, spec) if loss_fn.adapts else []
    layers = partition(
        trainable,
        getattr(layer_selector, "granularity", "module"),
        model,
        block_patterns=getattr(layer_selector, "block_patterns", None),
    )
    layer_selector.bind(model, layers)
    model.eval()  # the first change to the model: every check has passed
    precision.prepare_model(model)
    norm_mode.configure(model)
    loss_fn.configure(model)
    freeze_all_but(model, trainable)
    opt = (
        make_optimizer(optimizer, [p for _, p in trainable], lr, momentum, weight_decay)
        if trainable
        else None
    )
    sgd = opt is not None and optimizer == "sgd"
    settings = {
        "loss": loss,
        "loss_options": LOSSES.resolved_options(loss, loss_options),
        "params": describe_params(model, spec, trainable) if loss_fn.adapts else None,
        "norm": norm_name,
        "norm_options": NORMS.resolved_options(norm_name, norm_options),
        "selector": selector,
        "selector_options": LAYER_SELECTORS.resolved_options(selector, selector_options),
        "sample_filter": sample_filter,
        "sample_filter_options": SAMPLE_FILTERS.resolved_options(
            sample_filter, sample_filter_options
        )
        if sample_filter
        else {},
        "optimizer": optimizer if opt is not None else None,
        "lr": lr if opt is not None else None,
        "momentum": momentum if sgd else None,
        "weight_decay": weight_decay if opt is not None else None,
    }
    return AdaptedModel(
        model,
        loss_fn,
        layers,
        layer_selector,
        opt,
        sample_filter=filter_fn,
        norm=norm_mode,
        steps=steps,
        episodic=episodic,
        precision=precision,
        input_range=input_range,
        settings=settings,
        reset_every=reset_every,
    )
