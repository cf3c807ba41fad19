"""The adaptation engine, one step read top to bottom:

forward -> sample selection -> loss and backward -> proposed update -> layer selection
-> commit -> logits (of the forward before the update, as TENT).

Layer selection works by proposal and commit: the optimizer steps every trainable parameter,
the selector measures the proposed change per layer, and the engine keeps only the selected
layers' change. This works for any optimizer. With Adam, the moment estimates of every
trainable layer are updated by the step (the gradient was observed) even where the
parameter change is dropped; only the weights of unselected layers stay put.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tta.checks import check_input, input_kind, model_dtype
from tta.context import Counters, FilterContext, LossContext
from tta.filters.base import SampleFilter
from tta.layers import Layer
from tta.losses.base import Loss
from tta.norm.base import NormMode
from tta.precision import Precision
from tta.selectors.base import LayerSelector, Proposal


def check_reset_every(reset_every: object) -> int:
    """`reset_every` as an int >= 0 (0: never), or a clear error."""
    if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 0:
        raise ValueError(
            f"reset_every must be a whole number of adaptation steps >= 0 (0: never reset), "
            f"got {reset_every!r}"
        )
    return reset_every


class AdaptedModel(nn.Module):
    """A model that predicts and adapts online. Built by `tta.adapt`.

    Calling it returns the logits of the forward pass before that batch's update. The wrapped
    module is adapted in place (`adapted.model` is the module you passed); `reset()` restores
    the weights, buffers and optimizer state captured right after configuration. Every batch
    is checked first (see tta/checks.py: what the model's first layer takes; the value range
    for image models only). `settings` is what `tta.adapt` resolved, for `describe()`.
    `reset_every=N` (RDumb) calls `reset()` after every N-th adaptation step (one per batch
    and step, committed or skipped; 0: never), counted in `counters.n_resets`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        layers: list[Layer],
        selector: LayerSelector,
        optimizer: torch.optim.Optimizer | None,
        sample_filter: SampleFilter | None = None,
        norm: NormMode | None = None,
        steps: int = 1,
        episodic: bool = False,
        precision: Precision | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
        settings: Mapping[str, Any] | None = None,
        reset_every: int = 0,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.reset_every = check_reset_every(reset_every)
        self.model = model
        self.loss = loss
        self.layers = layers
        self.selector = selector
        self.optimizer = optimizer
        self.sample_filter = sample_filter
        self.norm = norm
        self.steps = steps
        self.episodic = episodic
        self.input_range = input_range
        self.counters = Counters()
        self.input_kind = input_kind(model)
        self._settings = dict(settings or {})
        self._params = [p for layer in layers for p in layer.params]
        self._source_model = copy.deepcopy(model.state_dict())
        self._source_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer else None
        self._warned_nonfinite = False
        self.precision = precision or Precision()
        self.grad_scaler = self.precision.grad_scaler(model) if optimizer is not None else None
        named = tuple(
            (name, p)
            for layer in layers
            for name, p in zip(layer.param_names, layer.params, strict=True)
        )
        self.loss_context = LossContext(
            model, named, self.counters, self._recover, self.grad_scaler
        )
        self.filter_context = FilterContext(model, layers, loss, optimizer)

    @property
    def adapts(self) -> bool:
        return self.loss.adapts and self.optimizer is not None and bool(self._params)

    def describe(self) -> dict[str, Any]:
        """The settings that ran, defaults included (for a protocol card); JSON-friendly.

        Keys: loss, loss_options, params, n_trainable, selector, selector_options,
        sample_filter, sample_filter_options, optimizer, lr, momentum (None unless SGD),
        weight_decay, steps, episodic, reset_every, input_range.
        """
        return {
            **self._settings,
            "n_trainable": sum(p.numel() for p in self._params),
            "steps": self.steps,
            **self.precision.describe(),
            "episodic": self.episodic,
            "reset_every": self.reset_every,
            "input_range": None if self.input_range is None else list(self.input_range),
        }

    def check_input(self, x: object) -> torch.Tensor:
        """Refuse a batch the model cannot take, with a message that says how to fix it."""
        x = check_input(x, self.input_kind, self.input_range, model_dtype(self.model))
        if self.norm is not None:
            self.norm.check_batch(x.shape[0])
        return x

    def reset(self) -> None:
        """Back to the source weights, buffers and optimizer state, exactly."""
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._source_optimizer))
        self._recover()

    def _recover(self) -> None:
        """Source weights and buffers, fresh loss/selector/filter state; the optimizer's state
        stays (what a loss's `request_reset` does, e.g. SAR's model recovery)."""
        self.model.load_state_dict(self._source_model, strict=True)
        self.loss.reset()
        self.selector.reset()
        if self.sample_filter is not None:
            self.sample_filter.reset()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with the current weights, without adapting."""
        x = self.precision.prepare_input(self.check_input(x))
        with self.precision.autocast(x.device):
            return self._float(self.model(x))

    def _float(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits as float32 under autocast: what the caller gets does not depend on `amp`."""
        return logits.float() if self.precision.amp and logits.is_floating_point() else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.precision.prepare_input(self.check_input(x))
        if getattr(self.loss, "per_sample", False):  # MEMO: each point adapts alone from the source
            return torch.cat([self._forward(x[i : i + 1], reset=True) for i in range(len(x))])
        return self._forward(x, reset=self.episodic)

    def _forward(self, x: torch.Tensor, reset: bool) -> torch.Tensor:
        if reset:
            self.reset()
        if not self.adapts:
            with torch.no_grad(), self.precision.autocast(x.device):
                self.counters.n_forward += 1
                return self._float(self.loss.output(self.loss_context, x, self.model(x)))
        with torch.enable_grad():
            for _ in range(self.steps):
                with self.precision.autocast(x.device):
                    logits = self._step(x)
                self._reset_if_due()
        return logits

    def _reset_if_due(self) -> None:
        """RDumb's reset: back to the source (weights, buffers, optimizer and loss state)
        after every `reset_every`-th adaptation step, committed or skipped, as the official
        `performed_updates % reset_after_num_updates == 0` after each step."""
        if self.reset_every and self.counters.step_index % self.reset_every == 0:
            self.reset()
            self.counters.n_resets += 1

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        counters = self.counters
        step = counters.step_index  # one per batch and step, whatever the loss's passes
        logits = self.model(x)
        counters.n_forward += 1
        keep = (
            self.sample_filter.keep(x, logits, self.filter_context) if self.sample_filter else None
        )
        if keep is not None:
            counters.n_filtered_samples += int((~keep).sum())
        if keep is not None and not bool(keep.any()):
            counters.n_skipped += 1
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss.backward(self.loss_context, x, logits, keep)
            scaled = loss is not None and self._unscale()
            if loss is None:  # the method found nothing to learn from (e.g. EATA's filters)
                counters.n_skipped += 1
            elif not self._finite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                counters.n_skipped += 1
                counters.n_nonfinite += 1
            else:
                with self.precision.float32(x.device):  # optimizer, selector, EMA: float32
                    self._update(step)
                    self.loss.after_update(self.loss_context)
            if scaled:
                self.grad_scaler.update()  # float16: halve the scale after an overflow
        return self._float(self.loss.output(self.loss_context, x, logits.detach()))

    def _unscale(self) -> bool:
        """float16: divide the scaled gradients by the scale before anything reads them."""
        if self.grad_scaler is None or all(p.grad is None for p in self._params):
            return False
        self.grad_scaler.unscale_(self.optimizer)
        return True

    def _update(self, step: int) -> None:
        if self.selector.needs_proposal:
            self._propose_and_commit(step)
        else:
            self.optimizer.step()
            self.counters.n_steps += 1

    def _finite(self, loss: torch.Tensor) -> bool:
        """A NaN/inf loss or gradient skips the step, so the weights stay finite."""
        grads = [p.grad for p in self._params if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        finite = bool(torch.isfinite(torch.stack([loss.detach(), *norms])).all())
        overflow = self.grad_scaler is not None and bool(torch.isfinite(loss.detach()))
        if not finite and not self._warned_nonfinite and not overflow:  # float16: scale halves
            warnings.warn(
                f"non-finite loss or gradient (loss={loss.item():.3g}); the update was skipped "
                "and counted in n_nonfinite. Lower the learning rate if this repeats.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned_nonfinite = True
        return finite

    @torch.no_grad()
    def _propose_and_commit(self, step: int) -> None:
        before = [[p.detach().clone() for p in layer.params] for layer in self.layers]
        grads = [[p.grad for p in layer.params] for layer in self.layers]
        self.optimizer.step()
        updates = [
            [p.detach() - b for p, b in zip(layer.params, layer_before, strict=True)]
            for layer, layer_before in zip(self.layers, before, strict=True)
        ]
        proposal = Proposal(step, self.layers, before, updates, grads)
        scales = self.selector.select(proposal)
        for layer, scale, layer_before, layer_updates in zip(
            self.layers, scales, before, updates, strict=True
        ):
            if scale == 1.0:
                continue
            for param, b, u in zip(layer.params, layer_before, layer_updates, strict=True):
                param.copy_(b if scale == 0.0 else b + scale * u)
        if any(scale != 0.0 for scale in scales):
            self.counters.n_steps += 1
        else:
            self.counters.n_skipped += 1
