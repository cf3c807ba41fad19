"""SAR: the sharpness-aware two-pass step, the loss average, recovery, default parameters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_net
from torch import nn

import tta
import tta.params
from tta.losses import softmax_entropy
from tta.losses.sar import norm_params_without_last_stage, official_norm_params
from tta.models import ResNetCifar

RHO = 0.05


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def median_margin(model: nn.Module, x: torch.Tensor) -> float:
    """A margin (fraction of ln C) that keeps about half of the batch."""
    with torch.no_grad():
        logits = model(x)
    return float(softmax_entropy(logits).median()) / math.log(logits.shape[1]) + 1e-4


def sam_gradient_by_hand(model: nn.Module, x: torch.Tensor, threshold: float) -> tuple:
    """Official SAR on a copy: grad at w, move to w + e(w), re-filter, grad there."""
    params = [p for p in model.parameters() if p.requires_grad]
    entropy = softmax_entropy(model(x))
    first = entropy < threshold
    grads = torch.autograd.grad(entropy[first].mean(), params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(RHO * g / (norm + 1e-12))
    entropy2 = softmax_entropy(model(x))[first]
    loss2 = entropy2[entropy2 < threshold].mean()
    return loss2, torch.autograd.grad(loss2, params), grads


def test_second_pass_uses_the_perturbed_weights_and_restores_them(images):
    model = make_tiny_net()
    adapted = tta.adapt(model, loss="sar", params="norm", margin=1.0, lr=1e-2)
    margin = median_margin(adapted.model, images)
    adapted.loss.margin = margin
    threshold = margin * math.log(5)
    loss2, grads2, grads1 = sam_gradient_by_hand(copy.deepcopy(adapted.model), images, threshold)

    params = [p for layer in adapted.layers for p in layer.params]
    before = [p.detach().clone() for p in params]
    logits = adapted.model(images)
    loss = adapted.loss.backward(adapted.loss_context, images, logits, None)

    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True)), "w restored"
    assert torch.allclose(loss, loss2, atol=1e-6)
    for p, g2 in zip(params, grads2, strict=True):
        assert torch.allclose(p.grad, g2, atol=1e-6), "the gradient at w + e(w) is left"
    pairs = zip(grads2, grads1, strict=True)
    differs = any(not torch.allclose(g2, g1, atol=1e-6) for g2, g1 in pairs)
    assert differs, "the perturbed point must give another gradient than w"
    assert adapted.counters.n_backward == 2 and adapted.counters.n_forward == 1


def test_nothing_reliable_still_takes_the_official_zero_gradient_momentum_step(images):
    """The official code's NaN loss has a zero gradient; SGD momentum still moves the weights."""
    lr = 1e-2
    adapted = tta.adapt(make_tiny_net(), loss="sar", margin=10.0, optimizer="sgd", lr=lr)
    adapted(images)  # a real step fills the momentum buffers
    params = [p for layer in adapted.layers for p in layer.params]
    before = [p.detach().clone() for p in params]
    buffers = [adapted.optimizer.state[p]["momentum_buffer"].clone() for p in params]
    adapted.loss.margin = 1e-3  # now no sample is reliable
    adapted(images)
    for p, b, buf in zip(params, before, buffers, strict=True):
        torch.testing.assert_close(p.detach(), b - lr * 0.9 * buf)  # buf <- 0.9 buf + 0
    assert adapted.loss.stats()["n_zero_gradient_steps"] == 1
    assert adapted.counters.n_steps == 2 and adapted.counters.n_skipped == 0
    assert adapted.counters.n_filtered_samples == len(images)
    assert adapted.counters.n_backward == 2  # the zero-gradient step costs no backward


def test_loss_moving_average_is_the_official_one(images):
    adapted = tta.adapt(make_tiny_net(), loss="sar", margin=10.0, reset_constant=0.0, lr=1e-2)
    losses = []
    backward = adapted.loss.backward

    def recording(*args):
        loss = backward(*args)
        losses.append(float(loss))
        return loss

    adapted.loss.backward = recording
    for _ in range(3):
        adapted(images)
    expected = losses[0]
    for value in losses[1:]:
        expected = 0.9 * expected + 0.1 * value
    assert adapted.loss.ema == pytest.approx(expected, rel=1e-9)
    assert adapted.loss.n_recoveries == 0


def test_recovery_restores_the_weights_keeps_the_momentum_and_is_counted(images):
    adapted = tta.adapt(
        make_tiny_net(), loss="sar", margin=10.0, reset_constant=1e9, optimizer="sgd", lr=1e-1
    )
    source = copy.deepcopy(adapted.model.state_dict())
    adapted(images)
    assert adapted.loss.stats()["n_recoveries"] == 1
    assert state_equal(source, adapted.model.state_dict()), "recovered to the source weights"
    buffers = [s["momentum_buffer"] for s in adapted.optimizer.state.values()]
    assert buffers and all(bool(b.abs().sum() > 0) for b in buffers), "momentum is kept"
    assert adapted.loss.ema is None
    adapted(images)
    adapted.reset()  # a user reset clears the average and the optimizer, not the count
    assert adapted.optimizer.state_dict()["state"] == {}
    assert adapted.loss.stats()["n_recoveries"] == 2
    assert "n_recoveries" not in adapted.counters.as_dict()  # the engine knows no SAR field


def test_no_recovery_with_the_default_bound_on_a_fresh_model(images):
    adapted = tta.adapt(make_tiny_net(), loss="sar", margin=10.0, lr=1e-1)
    source = copy.deepcopy(adapted.model.state_dict())
    adapted(images)
    assert adapted.loss.ema > 0.2 and adapted.loss.n_recoveries == 0
    assert not state_equal(source, adapted.model.state_dict())


@pytest.mark.parametrize("selector", ["all", "gala"])
def test_composes_with_layer_selectors(images, selector):
    adapted = tta.adapt(make_tiny_net(), loss="sar", selector=selector, margin=10.0, lr=1e-2)
    source = copy.deepcopy(adapted.model.state_dict())
    for _ in range(3):
        adapted(images)
    counters = adapted.counters
    assert counters.n_backward == 6 and counters.n_forward == 6
    assert counters.n_steps + counters.n_skipped == 3 and counters.n_steps >= 1
    assert all(torch.isfinite(p).all() for p in adapted.model.parameters())
    assert not state_equal(source, adapted.model.state_dict())


def test_default_params_follow_the_official_name_rule():
    """Official collect_params: skip modules named like layer4 / blocks.9-11 / norm."""
    model = ResNetCifar(depth=8, width=4)  # layer1..3: nothing is skipped
    norm = {name for name, _ in tta.params.select_parameters(model, "norm")}
    for loss in ("sar", "deyo"):
        adapted = tta.adapt(copy.deepcopy(model), loss=loss)
        assert {n for layer in adapted.layers for n in layer.param_names} == norm

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.layer3 = torch.nn.BatchNorm2d(4)
            self.layer4 = torch.nn.BatchNorm2d(4)
            self.blocks = torch.nn.ModuleList(torch.nn.LayerNorm(4) for _ in range(12))
            self.norm = torch.nn.LayerNorm(4)
            self.fc = torch.nn.Linear(4, 3)

    names = official_norm_params(Named())
    kept_blocks = {f"blocks.{i}.weight" for i in range(9)} | {f"blocks.{i}.bias" for i in range(9)}
    assert set(names) == {"layer3.weight", "layer3.bias"} | kept_blocks


def test_last_stage_exclusion_is_a_named_option():
    model = ResNetCifar(depth=8, width=4)
    names = norm_params_without_last_stage(model)
    assert "bn1.weight" in names and "layer2.0.bn2.bias" in names
    assert not any(name.startswith("layer3") for name in names)
    adapted = tta.adapt(model, loss="sar", exclude="last-stage")
    assert {name for layer in adapted.layers for name in layer.param_names} == set(names)
    deyo = tta.adapt(ResNetCifar(depth=8, width=4), loss="deyo", exclude="last-stage")
    assert {n for layer in deyo.layers for n in layer.param_names} == set(names)
    with pytest.raises(ValueError, match="exclude must be one of"):
        tta.adapt(ResNetCifar(depth=8, width=4), loss="sar", exclude="layer4")
