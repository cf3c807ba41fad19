"""DeYO (PLPD, weights, patch shuffling, its step) and LAME (affinity, bound, output only)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_net
from torch import nn

import tta
from tta.losses import softmax_entropy
from tta.losses.deyo import deyo_weights, patch_shuffle, plpd
from tta.losses.lame import knn_affinity, lame_probabilities, laplacian_optimization

# --- DeYO ---------------------------------------------------------------------------------


def test_plpd_against_hand_computation():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    shuffled = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.5, 0.3]])
    values = plpd(probs.log(), shuffled.log())
    assert torch.allclose(values, torch.tensor([0.7 - 0.4, 0.6 - 0.3]), atol=1e-6)


def test_weights_against_hand_computation():
    entropy, values = torch.tensor([0.5, 1.0]), torch.tensor([0.3, -0.1])
    e0 = 0.4 * math.log(3)
    expected = [math.exp(-(0.5 - e0)) + math.exp(0.3), math.exp(-(1.0 - e0)) + math.exp(-0.1)]
    assert torch.allclose(deyo_weights(entropy, values, e0), torch.tensor(expected))
    only_ent = deyo_weights(entropy, values, e0, reweight_plpd=0.0)
    assert torch.allclose(only_ent, torch.exp(-(entropy - e0)))
    assert torch.equal(deyo_weights(entropy, values, e0, 0.0, 0.0), torch.ones(2))


def test_patch_shuffle_permutes_whole_patches():
    torch.manual_seed(0)
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = patch_shuffle(x, patch_len=2)

    def patches(img: torch.Tensor) -> list[list[float]]:
        blocks = img.reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)
        return sorted(blocks.tolist())

    assert not torch.equal(out, x)
    for before, after in zip(x, out, strict=True):
        assert patches(before[0]) == patches(after[0])
    assert torch.equal(patch_shuffle(x, patch_len=1), x)
    assert patch_shuffle(torch.rand(2, 3, 10, 10), patch_len=4).shape == (2, 3, 10, 10)


def test_deyo_step_against_hand_computation(images):
    adapted = tta.adapt(make_tiny_net(), loss="deyo", params="norm", margin=1.0, lr=1e-2)
    reference = copy.deepcopy(adapted.model)
    entropy = softmax_entropy(adapted.model(images)).detach()
    margin = float(entropy.median()) / math.log(5) + 1e-4  # keeps about half
    adapted.loss.margin = margin
    adapted.loss.plpd_threshold = -1.0  # keep every reliable sample: weights are exercised

    params = [p for p in reference.parameters() if p.requires_grad]
    logits = reference(images)
    ent = softmax_entropy(logits)
    first = ent < margin * math.log(5)
    torch.manual_seed(3)
    with torch.no_grad():
        shuffled = reference(patch_shuffle(images[first], 4))
    values = plpd(logits[first].detach(), shuffled)
    e0 = 0.4 * math.log(5)
    weights = torch.exp(-(ent[first].detach() - e0)) + torch.exp(values)
    expected_loss = (ent[first] * weights).mean()
    expected_grads = torch.autograd.grad(expected_loss, params)

    torch.manual_seed(3)
    loss = adapted.loss.backward(adapted.loss_context, images, adapted.model(images), None)
    assert 0 < int(first.sum()) < len(images)
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    trainable = [p for layer in adapted.layers for p in layer.params]
    for p, g in zip(trainable, expected_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)
    assert adapted.counters.n_forward == 1  # the shuffled view
    assert adapted.counters.n_filtered_samples == len(images) - int(first.sum())


def test_deyo_plpd_filter_can_skip_the_update(images):
    adapted = tta.adapt(make_tiny_net(), loss="deyo", margin=10.0, plpd_threshold=2.0)
    before = copy.deepcopy(adapted.model.state_dict())
    adapted(images)
    assert adapted.counters.n_skipped == 1 and adapted.counters.n_backward == 0
    assert adapted.counters.n_filtered_samples == len(images)
    after = adapted.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_deyo_composes_with_gala(images):
    adapted = tta.adapt(
        make_tiny_net(), loss="deyo", selector="gala", margin=10.0, plpd_threshold=-1.0
    )
    for _ in range(2):
        adapted(images)
    assert adapted.counters.n_backward == 2 and adapted.counters.n_forward == 4
    assert all(torch.isfinite(p).all() for p in adapted.model.parameters())


# --- LAME ---------------------------------------------------------------------------------


def test_knn_affinity_by_hand():
    features = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    expected = torch.tensor(
        [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.float32
    )
    assert torch.equal(knn_affinity(features, knn=1), expected)
    assert knn_affinity(features, knn=5).sum(1).tolist() == [3.0, 3.0, 3.0, 3.0]


def test_one_bound_step_by_hand():
    p = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    kernel = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    y = laplacian_optimization(-torch.log(p + 1e-10), kernel, max_steps=1)
    first = torch.tensor([0.9 * math.exp(0.4), 0.1 * math.exp(0.6)])
    second = torch.tensor([0.4 * math.exp(0.9), 0.6 * math.exp(0.1)])
    expected = torch.stack([first / first.sum(), second / second.sum()])
    assert torch.allclose(y, expected, atol=1e-6)


def test_converged_solution_is_a_fixed_point_of_the_bound():
    torch.manual_seed(0)
    logits, features = torch.randn(6, 3), torch.randn(6, 4)
    y = lame_probabilities(logits, features, knn=2)
    kernel = knn_affinity(nn.functional.normalize(features, dim=-1), 2)
    unary = -torch.log(logits.softmax(1) + 1e-10)
    assert torch.allclose(y, (-unary + kernel @ y).softmax(1), atol=1e-5)
    assert not torch.allclose(y, logits.softmax(1), atol=1e-3)


def test_lame_adjusts_outputs_and_leaves_the_model_alone(images):
    model = make_tiny_net()
    reference = copy.deepcopy(model).eval()
    before = copy.deepcopy(model.state_dict())
    adapted = tta.adapt(model, loss="lame", knn=3)
    assert not adapted.adapts
    out = adapted(images)
    with torch.no_grad():
        out1 = torch.relu(reference.bn1(reference.conv1(images)))
        features = torch.relu(reference.bn2(reference.conv2(out1))).mean((2, 3))
        logits = reference.fc(features)
    expected = lame_probabilities(logits, features, knn=3)
    assert torch.allclose(out.softmax(1), expected, atol=1e-5)
    assert not torch.allclose(out, logits, atol=1e-3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert adapted.counters.n_backward == 0


def test_lame_needs_a_linear_classifier():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="nn.Linear"):
        tta.adapt(model, loss="lame")
