"""Per-sample gradients of a test-time loss for one batch, in one batched computation.

The approximation. With BatchNorm on batch statistics (TENT) every sample's output depends on
the whole batch through the mean and variance, so the exact gradient of one sample's loss
needs a backward per sample (DESIGN.md §2: 2.8 s per batch of 64 against 0.074 s for a
step), and `vmap` refuses such BatchNorm outright. We treat the batch statistics as
constants: computed once from the whole batch and detached. The logits are unchanged (the
same statistics normalize the same batch), only the gradient paths through the mean and
variance are dropped, and then samples are separable. BatchNorm on running statistics, and
every other layer of a usual classifier, is already per-sample, so for them nothing changes.

What "sample i's gradient" means, for any loss: the loss is called once, on the whole batch
of logits z, and v = B * dL/dz. Then g_i = (dz_i/dtheta)^T v_i. For a loss that is a mean of
per-sample terms (entropy, tent) B * dL/dz_i = dl_i/dz_i, so g_i is exactly the gradient of
sample i's own loss and the batch gradient (statistics held constant) is the mean of the
g_i. For a loss with batch-level terms (SHOT-IM's diversity term) g_i is sample i's share of
the batch gradient, scaled by B. Terms that depend on the parameters directly rather than
through the logits (EATA's Fisher penalty) are not part of any g_i.

Two batched methods:

- "hooks" (the trick Opacus uses): one forward that records what each module owning a
  trainable parameter needs, one `autograd.grad`, then per-sample gradients in closed form.
  BatchNorm runs as `_TapBatchNorm`, whose backward holds the statistics constant and hands
  out the per-sample affine gradients sum_space(gy * x_hat), sum_space(gy); Linear:
  gy_i^T a_i; convolutions: one weight-gradient of a convolution grouped by sample. A `Capture` can
  also record the engine's own forward: then per-sample gradients cost one extra backward
  (constant statistics) and no extra forward, and the engine's backward stays exact.
- "vmap": `torch.func.vmap(grad(...))` over a functional call of the model, BatchNorm replaying
  statistics recorded by one no-grad forward of the whole batch. Works for any module type.

"auto" takes "hooks" when every trainable parameter belongs to a Linear, a convolution or a
BatchNorm (faster on ResNet-20; see benchmarks/per_sample_speed.py), else "vmap".
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call, grad, vmap

BatchNorm = nn.modules.batchnorm._BatchNorm
LossFn = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("auto", "hooks", "vmap")


def per_sample_grads(
    model: nn.Module,
    x: torch.Tensor,
    loss: LossFn,
    params: Sequence[nn.Parameter],
    method: str = "auto",
) -> list[torch.Tensor]:
    """Per-sample gradients of `loss` w.r.t. `params`, batch statistics held constant.

    Returns one tensor per parameter, shaped (B, *param.shape). Runs its own forward; the
    model's weights, buffers and `.grad` are left untouched.
    """
    if method not in METHODS:
        raise ValueError(f"unknown per-sample method {method!r}; known: {', '.join(METHODS)}")
    if method == "auto":
        method = "hooks" if hooks_support(model, params) else "vmap"
    if method == "hooks":
        with Capture(model, params) as capture, torch.enable_grad():
            logits = model(x)
        return capture.grads(logits, loss)
    return _grads_by_vmap(model, x, loss, params)


def hooks_support(model: nn.Module, params: Sequence[nn.Parameter]) -> bool:
    """True when every parameter in `params` has a closed-form per-sample rule."""
    wanted = {id(p) for p in params}
    covered = set()
    for module in model.modules():
        if isinstance(module, BatchNorm) or _hook_rule(module) is not None:
            covered |= {id(p) for p in module.parameters(recurse=False)}
    return wanted <= covered


def output_grad(loss: LossFn, logits: torch.Tensor) -> torch.Tensor:
    """v = B * dL/dlogits: each row is its sample's own loss gradient for a batch-mean loss."""
    z = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (dz,) = torch.autograd.grad(loss(z), z)
    return dz * z.shape[0]


# --- BatchNorm with constant statistics ----------------------------------------------------


def _channel_shape(x: torch.Tensor, batch: int = 1) -> list[int]:
    return [batch, -1] + [1] * (x.dim() - 2)


def _uses_batch_stats(bn: BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


class _Mode:
    """Which backward `_TapBatchNorm` runs; flipped by `Capture.grads` for its own pass."""

    def __init__(self, constant: bool) -> None:
        self.constant = constant


class _TapBatchNorm(torch.autograd.Function):
    """BatchNorm forward by the native kernel; two backwards, chosen when the backward runs.

    Exact: the native BatchNorm backward (the layer's true gradient, as without the tap).
    Constant: the statistics are constants, dx = gy * w * invstd, and the (B, C, 1, ...)
    `expand`ed copies of the affine parameters, unused by the forward, receive the per-sample
    gradients sum_space(gy * x_hat) and sum_space(gy). Running statistics are never updated.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, sample_weight, sample_bias, bn, mode):
        batch = _uses_batch_stats(bn)
        running = (None, None) if batch else (bn.running_mean, bn.running_var)
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, *running, batch, 0.0, bn.eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.batch, ctx.running, ctx.eps, ctx.mode = batch, running, bn.eps, mode
        return out

    @staticmethod
    @once_differentiable  # a double backward through the tap errors instead of being wrong
    def backward(ctx, gy):
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        if not ctx.mode.constant:
            mask = [need[0], need[1] and weight is not None, need[2] and weight is not None]
            grads = torch.ops.aten.native_batch_norm_backward(
                gy, x, weight, *ctx.running, mean, invstd, ctx.batch, ctx.eps, mask
            )
            return (*grads, None, None, None, None)
        if not ctx.batch:
            mean, invstd = ctx.running[0], torch.rsqrt(ctx.running[1] + ctx.eps)
        shape = _channel_shape(gy)
        scale = invstd if weight is None else weight * invstd
        gx = gy * scale.view(shape) if need[0] else None
        if not need[3]:
            return gx, None, None, None, None, None, None
        dims = list(range(2, gy.dim()))
        g_weight = (gy * (x - mean.view(shape))).sum(dims, keepdim=True) * invstd.view(shape)
        return gx, None, None, g_weight, gy.sum(dims, keepdim=True), None, None


@contextlib.contextmanager
def _patched(model: nn.Module, make_forward: Callable[[BatchNorm], Callable]) -> Iterator[None]:
    """Temporarily replace every BatchNorm's forward (an instance attribute, restored on exit)."""
    bns = [m for m in model.modules() if isinstance(m, BatchNorm)]
    previous = [bn.__dict__.get("forward") for bn in bns]
    try:
        for bn in bns:
            bn.forward = types.MethodType(make_forward(bn), bn)
        yield
    finally:
        for bn, forward in zip(bns, previous, strict=True):
            if forward is None:
                bn.__dict__.pop("forward", None)
            else:
                bn.forward = forward


def _stats(bn: BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) `bn` normalizes `x` with, detached: of the batch, or the running ones."""
    if not _uses_batch_stats(bn):
        return bn.running_mean, bn.running_var
    _, mean, invstd = torch.native_batch_norm(x.detach(), None, None, None, None, True, 0, bn.eps)
    return mean, invstd.pow(-2) - bn.eps


@contextlib.contextmanager
def constant_batch_statistics(model: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Inside the block every BatchNorm normalizes any input with the statistics of batch `x`.

    The statistics are recorded by one no-grad forward of `x` (whose logits the block
    yields) and are constants: no gradient, no running-statistics update. Calls are replayed
    in order, so a BatchNorm used twice per forward works too. This is the definition the
    per-sample gradients follow; a loop over single samples inside this block reproduces them.
    """
    recorded: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def normalize(bn: BatchNorm, inp: torch.Tensor, stats: tuple) -> torch.Tensor:
        return F.batch_norm(inp, *stats, bn.weight, bn.bias, False, 0.0, bn.eps)

    def recorder(bn: BatchNorm) -> Callable:
        def forward(self: BatchNorm, inp: torch.Tensor) -> torch.Tensor:
            recorded.setdefault(id(self), []).append(_stats(self, inp))
            return normalize(self, inp, recorded[id(self)][-1])

        return forward

    with _patched(model, recorder), torch.no_grad():
        logits = model(x)
    cursor = dict.fromkeys(recorded, 0)

    def replayer(bn: BatchNorm) -> Callable:
        def forward(self: BatchNorm, inp: torch.Tensor) -> torch.Tensor:
            calls = recorded[id(self)]
            stats = calls[cursor[id(self)] % len(calls)]
            cursor[id(self)] += 1
            return normalize(self, inp, stats)

        return forward

    with _patched(model, replayer):
        yield logits


# --- "hooks": record one forward, one autograd.grad, closed-form per-sample rules ---------


def _linear_rule(module: nn.Linear, inp: torch.Tensor, gy: torch.Tensor) -> dict:
    a = rearrange(inp, "b ... i -> b (...) i")  # any leading token dims, one axis t
    gy = rearrange(gy, "b ... o -> b (...) o")
    grads = {"weight": torch.einsum("bto,bti->boi", gy, a)}
    if module.bias is not None:
        grads["bias"] = gy.sum(1)
    return grads


def _conv_rule(module: nn.modules.conv._ConvNd, inp: torch.Tensor, gy: torch.Tensor) -> dict:
    """Per-sample weight gradients as one weight-gradient of a convolution with B x groups.

    The batch folds into the channels, (1, B * C_in, ...), so the native kernel returns
    (B * C_out, ...) gradients, one block per sample: about the cost of the batched weight
    gradient, and measured 2x faster than `vmap` or unfold + einsum (Opacus) on ResNet-20.
    """
    b, dims = inp.shape[0], inp.dim() - 2
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":  # pad as _conv_forward does
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        inp, padding = F.pad(inp, module._reversed_padding_repeated_twice, mode=mode), (0,) * dims
    weight = module.weight.detach().repeat(b, *[1] * (dims + 1))
    fold = "b c ... -> 1 (b c) ..."
    _, g, _ = torch.ops.aten.convolution_backward(
        rearrange(gy, fold), rearrange(inp, fold), weight, None,
        module.stride, padding, module.dilation, False, [0] * dims, b * module.groups,
        [False, True, False],
    )  # fmt: skip
    grads = {"weight": rearrange(g, "(b o) ... -> b o ...", b=b)}
    if module.bias is not None:
        grads["bias"] = gy.flatten(2).sum(2)
    return grads


def _hook_rule(module: nn.Module) -> Callable | None:
    """The closed-form per-sample rule for `module`'s own parameters, or None."""
    if isinstance(module, nn.Linear):
        return _linear_rule
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return _conv_rule
    return None


def _owns(module: nn.Module, wanted: set[int]) -> bool:
    return any(id(p) in wanted for p in module.parameters(recurse=False))


class Capture:
    """Records, during one forward of `model`, what per-sample gradients of `params` need.

    Use as a context manager around a forward, then call `grads(logits, loss)`. With
    `exact=False` (as `per_sample_grads` does) the forward is a side computation. With
    `exact=True` the forward can be the engine's own: the logits and every backward other
    than `grads`' are those of the unmodified model (native BatchNorm kernels), and `grads`
    keeps the graph for the engine's backward.

    Linear/convolution outputs get a zero "probe" added, whose gradient is the output's
    gradient gy even where a later op modifies the output in place.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], exact: bool = False):
        self.model = model
        self.wanted = {id(p) for p in params}
        self.params = list(params)
        self.exact = exact
        self.mode = _Mode(constant=not exact)
        self.output: torch.Tensor | None = None  # the recorded forward's output, if kept
        self.leaves: list[torch.Tensor] = []  # what `grads` differentiates to
        self.calls: list[tuple[nn.Module, torch.Tensor | None, int]] = []  # module, input, slot
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Capture:
        self._stack.enter_context(_patched(self.model, self._batchnorm_forward))
        for module in self.model.modules():
            if _hook_rule(module) is not None and _owns(module, self.wanted):
                self._stack.callback(module.register_forward_hook(self._probe).remove)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _probe(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(output, requires_grad=True)
        self.calls.append((module, args[0].detach(), len(self.leaves)))
        self.leaves.append(zero)
        return output + zero

    def _batchnorm_forward(self, bn: BatchNorm) -> Callable:
        capture = self

        def forward(self: BatchNorm, inp: torch.Tensor) -> torch.Tensor:
            per_sample = (None, None)
            if self.weight is not None and _owns(self, capture.wanted):
                one, expanded = _channel_shape(inp), _channel_shape(inp, inp.shape[0])
                per_sample = (self.weight.view(one).expand(expanded),
                              self.bias.view(one).expand(expanded))  # fmt: skip
                capture.calls.append((self, None, len(capture.leaves)))
                capture.leaves.extend(per_sample)
            return _TapBatchNorm.apply(inp, self.weight, self.bias, *per_sample, self, capture.mode)

        return forward

    def grads(self, logits: torch.Tensor, loss: LossFn) -> list[torch.Tensor]:
        """Per-sample gradients (B, *shape) of `loss`, one per parameter, statistics constant."""
        batch = logits.shape[0]
        found: dict[int, torch.Tensor] = {}
        if self.leaves:
            self.mode.constant = True
            try:
                grads = torch.autograd.grad(
                    logits, self.leaves, output_grad(loss, logits),
                    retain_graph=self.exact, allow_unused=True,
                )  # fmt: skip
            finally:
                self.mode.constant = not self.exact
            for module, inp, slot in self.calls:
                for name, g in self._rule(module, inp, grads, slot).items():
                    key = id(getattr(module, name))
                    if key in self.wanted:
                        found[key] = found[key] + g if key in found else g
        return [found.get(id(p), logits.new_zeros(batch, *p.shape)) for p in self.params]

    def _rule(self, module: nn.Module, inp, grads: tuple, slot: int) -> dict:
        gy = grads[slot] if grads[slot] is not None else torch.zeros_like(self.leaves[slot])
        if isinstance(module, BatchNorm):
            bias = grads[slot + 1] if grads[slot + 1] is not None else torch.zeros_like(gy)
            return {"weight": gy.flatten(1), "bias": bias.flatten(1)}
        return _hook_rule(module)(module, inp, gy)


def shares_forward(model: nn.Module, params: Sequence[nn.Parameter]) -> bool:
    """Whether an exact `Capture` can record the model's own forward.

    It can when every parameter has a hook rule and no BatchNorm updates running statistics
    (the tap never does).
    """
    tracking = any(
        bn.training and bn.running_mean is not None
        for bn in model.modules()
        if isinstance(bn, BatchNorm)
    )
    return not tracking and hooks_support(model, params)


# --- "vmap": a functional model, recorded statistics replayed -----------------------------


def _grads_by_vmap(
    model: nn.Module, x: torch.Tensor, loss: LossFn, params: Sequence[nn.Parameter]
) -> list[torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    theta = {names[id(p)]: p.detach() for p in params}

    def sample_objective(theta: dict, xi: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
        return (functional_call(model, theta, (xi.unsqueeze(0),))[0] * vi).sum()

    with constant_batch_statistics(model, x) as logits:
        v = output_grad(loss, logits)
        with torch.enable_grad():
            grads = vmap(grad(sample_objective), in_dims=(None, 0, 0))(theta, x, v)
    return [grads[names[id(p)]] for p in params]
