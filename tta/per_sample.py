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

- "hooks" (the trick Opacus uses): one forward with constant statistics that keeps the input
  of every module owning a trainable parameter, one backward (`autograd.grad`) to those
  modules' outputs, then per-sample parameter gradients in closed form: Linear
  `g_W[i] = gy_i^T a_i`; Conv2d the same on unfolded patches; BatchNorm
  `g_w[i] = sum_hw gy_i * x_hat_i`, `g_b[i] = sum_hw gy_i`. Cost: about one step.
- "vmap": `torch.func.vmap(grad(...))` over a functional call of the model, BatchNorm replaying
  statistics recorded by one no-grad forward of the whole batch. Works for any module type.

"auto" takes "hooks" when every trainable parameter belongs to a Linear, Conv2d or BatchNorm
(measured faster on ResNet-20; see benchmarks/per_sample_speed.py), else "vmap".
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

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

    Returns one tensor per parameter, shaped (B, *param.shape). The model's weights, buffers
    and `.grad` are left untouched.
    """
    if method not in METHODS:
        raise ValueError(f"unknown per-sample method {method!r}; known: {', '.join(METHODS)}")
    if method == "auto":
        method = "hooks" if hooks_support(model, params) else "vmap"
    if method == "hooks":
        return _grads_by_hooks(model, x, loss, params)
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


# --- BatchNorm with constant batch statistics ---------------------------------------------


def _stats(bn: BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, invstd) `bn` normalizes `x` with, detached: of the batch, or the running ones.

    The batch statistics come from the native training-mode kernel, several times faster on
    CPU than `torch.var_mean` over (N, H, W).
    """
    if not bn.training and bn.running_mean is not None:
        return bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
    _, mean, invstd = torch.native_batch_norm(x.detach(), None, None, None, None, True, 0.0, bn.eps)
    return mean, invstd


def _normalize(bn: BatchNorm, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]):
    """BatchNorm of `x` (with its affine map) with the given constant (mean, invstd)."""
    mean, invstd = stats
    var = invstd.pow(-2) - bn.eps
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)


class _ConstantStatsBatchNorm(torch.autograd.Function):
    """BatchNorm whose backward treats the statistics as constants: dx = gy * w * invstd.

    The forward is the native kernel (one pass, as a plain BatchNorm). `per_sample_weight`
    and `per_sample_bias` are the affine parameters `expand`ed to (B, C, 1, ...): unused by
    the forward, they receive the per-sample gradients sum_space(gy * x_hat) and sum_space(gy).
    """

    @staticmethod
    def forward(ctx, x, bn, per_sample_weight, per_sample_bias):  # noqa: ANN001, ANN205
        if bn.training or bn.running_mean is None:
            out, mean, invstd = torch.native_batch_norm(
                x, bn.weight, bn.bias, None, None, True, 0.0, bn.eps
            )
        else:
            mean, invstd = _stats(bn, x)
            out = F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        ctx.save_for_backward(x, mean, invstd, bn.weight)
        return out

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        x, mean, invstd, weight = ctx.saved_tensors
        shape = _channel_shape(gy)
        scale = invstd if weight is None else weight * invstd
        gx = gy * scale.view(shape) if ctx.needs_input_grad[0] else None
        if not ctx.needs_input_grad[2]:
            return gx, None, None, None
        dims = list(range(2, gy.dim()))
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        return gx, None, (gy * x_hat).sum(dims, keepdim=True), gy.sum(dims, keepdim=True)


def _channel_shape(x: torch.Tensor, batch: int = 1) -> list[int]:
    return [batch, -1] + [1] * (x.dim() - 2)


@contextlib.contextmanager
def _patched(model: nn.Module, make_forward: Callable[[BatchNorm], Callable]) -> Iterator[None]:
    """Temporarily replace every BatchNorm's forward (an instance attribute, removed on exit)."""
    bns = [m for m in model.modules() if isinstance(m, BatchNorm)]
    try:
        for bn in bns:
            bn.forward = types.MethodType(make_forward(bn), bn)
        yield
    finally:
        for bn in bns:
            bn.__dict__.pop("forward", None)


@contextlib.contextmanager
def constant_batch_statistics(model: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Inside the block every BatchNorm normalizes any input with the statistics of batch `x`.

    The statistics are recorded by one no-grad forward of `x` (whose logits the block
    yields) and are constants: no gradient, no running-statistics update. Calls are replayed
    in order, so a BatchNorm used twice per forward works too. This is the definition the
    per-sample gradients follow; a loop over single samples inside this block reproduces them.
    """
    recorded: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def recorder(bn: BatchNorm) -> Callable:
        def forward(self: BatchNorm, inp: torch.Tensor) -> torch.Tensor:
            stats = _stats(self, inp)
            recorded.setdefault(id(self), []).append(stats)
            return _normalize(self, inp, stats)

        return forward

    with _patched(model, recorder), torch.no_grad():
        logits = model(x)
    cursor = dict.fromkeys(recorded, 0)

    def replayer(bn: BatchNorm) -> Callable:
        def forward(self: BatchNorm, inp: torch.Tensor) -> torch.Tensor:
            calls = recorded[id(self)]
            stats = calls[cursor[id(self)] % len(calls)]
            cursor[id(self)] += 1
            return _normalize(self, inp, stats)

        return forward

    with _patched(model, replayer):
        yield logits


# --- "hooks": one forward, one backward, closed-form per-sample rules ---------------------


def _linear_rule(module: nn.Linear, inp: torch.Tensor, gy: torch.Tensor) -> dict:
    a = inp.reshape(inp.shape[0], -1, inp.shape[-1])
    gy = gy.reshape(gy.shape[0], -1, gy.shape[-1])
    grads = {"weight": torch.einsum("bto,bti->boi", gy, a)}
    if module.bias is not None:
        grads["bias"] = gy.sum(1)
    return grads


def _conv_rule(module: nn.Module, inp: torch.Tensor, gy: torch.Tensor) -> dict:
    """Per-sample weight gradients by vmap over the convolution's weight-gradient.

    Measured faster than unfold + einsum (Opacus) or one grouped convolution on ResNet-20.
    """
    weight = module.weight.detach()

    def one(xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(lambda w: module._conv_forward(xi.unsqueeze(0), w, None), weight)
        return pullback(gi.unsqueeze(0))[0]

    grads = {"weight": vmap(one)(inp, gy)}
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


def _owns_wanted(module: nn.Module, wanted: set[int]) -> bool:
    return any(id(p) in wanted for p in module.parameters(recurse=False))


def _grads_by_hooks(
    model: nn.Module, x: torch.Tensor, loss: LossFn, params: Sequence[nn.Parameter]
) -> list[torch.Tensor]:
    """One forward, one `autograd.grad`; see the module docstring.

    Linear/Conv2d: a zero "probe" added to the output makes autograd return the output's
    gradient gy, even where a later op modifies the output in place. BatchNorm: the affine
    weight and bias enter as (B, C) `expand`ed copies, whose gradients are the per-sample
    ones (autograd sums gy * x_hat and gy over space).
    """
    wanted = {id(p) for p in params}
    leaves: list[torch.Tensor] = []  # what autograd.grad differentiates to
    calls: list[tuple[nn.Module, torch.Tensor | None, int]] = []  # module, its input, slot

    def probe(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(output, requires_grad=True)
        calls.append((module, args[0].detach(), len(leaves)))
        leaves.append(zero)
        return output + zero

    def live(bn: BatchNorm) -> Callable:
        def forward(self: BatchNorm, inp: torch.Tensor) -> torch.Tensor:
            if self.weight is None or not _owns_wanted(self, wanted):
                return _ConstantStatsBatchNorm.apply(inp, self, None, None)
            one, per_sample = _channel_shape(inp), _channel_shape(inp, inp.shape[0])
            weight = self.weight.view(one).expand(per_sample)
            bias = self.bias.view(one).expand(per_sample)
            calls.append((self, None, len(leaves)))
            leaves.extend((weight, bias))
            return _ConstantStatsBatchNorm.apply(inp, self, weight, bias)

        return forward

    handles = [
        m.register_forward_hook(probe)
        for m in model.modules()
        if _hook_rule(m) is not None and _owns_wanted(m, wanted)
    ]
    try:
        with _patched(model, live), torch.enable_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(logits, leaves, output_grad(loss, logits), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    per_param: dict[int, torch.Tensor] = {}
    for module, inp, slot in calls:
        if isinstance(module, BatchNorm):
            found = {"weight": grads[slot].flatten(1), "bias": grads[slot + 1].flatten(1)}
        else:
            found = _hook_rule(module)(module, inp, grads[slot])
        for name, g in found.items():
            key = id(getattr(module, name))
            if key in wanted:
                per_param[key] = per_param[key] + g if key in per_param else g
    return [per_param.get(id(p), x.new_zeros(x.shape[0], *p.shape)) for p in params]


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
