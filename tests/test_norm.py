"""Normalization modes against hand computations of their statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tta.norm  # noqa: F401  (registers the modes)
from tta.registry import NORMS

EPS = 1e-5


def source_bn(channels: int = 3) -> nn.Sequential:
    """One BatchNorm2d with known, non-trivial source statistics and affine parameters."""
    bn = nn.BatchNorm2d(channels, eps=EPS)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0][:channels]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5][:channels]))
        bn.weight.copy_(torch.tensor([1.5, 0.7, -0.3][:channels]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.4][:channels]))
    return nn.Sequential(bn).eval()


def by_hand(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    z = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS)
    return z * bn.weight.view(shape) + bn.bias.view(shape)


def batch(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def configured(name: str, **options) -> nn.Sequential:
    model = source_bn()
    mode = NORMS.create(name, **options)
    mode.check_model(model)
    mode.configure(model)
    return model


def test_source_uses_the_running_statistics():
    model, x = configured("source"), batch(0)
    ref = source_bn()[0]
    out = model(x)
    torch.testing.assert_close(out, by_hand(x, ref.running_mean, ref.running_var, ref))
    torch.testing.assert_close(model[0].running_mean, ref.running_mean)  # never updated


def test_batch_uses_the_biased_batch_statistics():
    model, x = configured("batch"), batch(1)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(model(x), by_hand(x, mean, var, model[0]))
    with pytest.raises(ValueError, match="norm='window'"):
        NORMS.create("batch").check_batch(1)


@pytest.mark.parametrize("n", [1, 4, 64])
def test_alpha_mixes_source_and_batch_with_a_prior_of_16(n):
    model, x = configured("alpha"), batch(2, n)
    ref = source_bn()[0]
    var_b, mean_b = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    w = n / (16 + n)  # Schneider et al.: N/(N+n) on the source, n/(N+n) on the batch
    mean = (1 - w) * ref.running_mean + w * mean_b
    var = (1 - w) * ref.running_var + w * var_b
    torch.testing.assert_close(model(x), by_hand(x, mean, var, ref))
    fixed, x = configured("alpha", alpha=0.3), batch(3)
    var_b, mean_b = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    mean = 0.7 * ref.running_mean + 0.3 * mean_b
    var = 0.7 * ref.running_var + 0.3 * var_b
    torch.testing.assert_close(fixed(x), by_hand(x, mean, var, ref))


def test_ema_updates_the_running_statistics_then_normalizes_with_them():
    model = configured("ema", momentum=0.1)
    ref = source_bn()[0]
    mean, var = ref.running_mean.clone(), ref.running_var.clone()
    for seed in (4, 5):
        x = batch(seed)
        var_b, mean_b = torch.var_mean(x, dim=(0, 2, 3), correction=1)
        mean, var = 0.9 * mean + 0.1 * mean_b, 0.9 * var + 0.1 * var_b
        torch.testing.assert_close(model(x), by_hand(x, mean, var, ref))
    torch.testing.assert_close(model[0].running_mean, mean)


def test_robust_is_rotta_robust_bn_with_gradient_through_the_batch():
    model = configured("robust")
    ref = source_bn()[0]
    mean, var = ref.running_mean.clone(), ref.running_var.clone()
    for seed in (6, 7):
        x = batch(seed).requires_grad_(True)
        var_b, mean_b = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        mean_t, var_t = 0.95 * mean + 0.05 * mean_b, 0.95 * var + 0.05 * var_b
        expected = by_hand(x, mean_t, var_t, ref)
        out = model(x)
        torch.testing.assert_close(out, expected)
        (g_out,) = torch.autograd.grad(out.square().sum(), x)
        (g_ref,) = torch.autograd.grad(expected.square().sum(), x)
        torch.testing.assert_close(g_out, g_ref)  # the batch statistics carry the gradient
        mean, var = mean_t.detach(), var_t.detach()
    torch.testing.assert_close(model[0].running_var, var)


@pytest.mark.parametrize("name", ["source", "batch", "alpha", "ema", "robust", "window"])
def test_state_dict_round_trip_restores_the_mode_exactly(name):
    model = configured(name)
    snapshot = copy.deepcopy(model.state_dict())
    first = model(batch(8)).detach()
    model(batch(9))
    model.load_state_dict(snapshot)
    torch.testing.assert_close(model(batch(8)), first, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["batch", "alpha", "ema", "robust", "window"])
def test_modes_that_need_batchnorm_say_so(name):
    mlp = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="needs BatchNorm layers"):
        NORMS.create(name).check_model(mlp)
    NORMS.create("source").check_model(mlp)  # nothing to change: fine


@pytest.mark.parametrize("options", [("alpha", {"alpha": 1.5}), ("ema", {"momentum": 0.0})])
def test_bad_options_are_refused(options):
    name, kwargs = options
    with pytest.raises(ValueError):
        NORMS.create(name, **kwargs)


@pytest.mark.parametrize("name", ["source", "batch", "alpha", "ema", "robust", "window"])
def test_adapted_reset_restores_the_mode_and_weights_exactly(name):
    from conftest import make_tiny_net

    import tta

    adapted = tta.adapt(make_tiny_net(), loss="tent", params="all", norm=name, lr=1e-2)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    start = copy.deepcopy(adapted.model.state_dict())
    first = adapted(x).detach()
    adapted(x)
    adapted.reset()
    state = adapted.model.state_dict()
    assert state.keys() == start.keys()
    assert all(torch.equal(state[k], start[k]) for k in start), "reset restores every buffer"
    torch.testing.assert_close(adapted(x), first, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["alpha", "ema", "robust"])
def test_modes_that_start_from_source_statistics_need_them(name):
    model = nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="use norm='batch'"):
        NORMS.create(name).check_model(model)
