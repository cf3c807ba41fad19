"""Per-sample gradients (batch statistics held constant) and the `grad-align` sample filter."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_net
from torch import nn

import tta
from tta.filters.per_sample import (
    Capture,
    constant_batch_statistics,
    hooks_support,
    per_sample_grads,
)
from tta.layers import partition
from tta.params import select_parameters


class InplaceNet(nn.Module):
    """In-place ReLUs, grouped/padded convolutions, a Linear on a sequence axis: edge cases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(4, 4, 2, padding="same", groups=2, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.grouped(self.relu(self.conv(x)))))
        tokens = self.proj(out.flatten(2).transpose(1, 2))  # (B, HW, 4)
        return self.fc(tokens.mean(1))


class GroupNormNet(nn.Module):
    """GroupNorm has no closed-form hook rule: per_sample_grads falls back to vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gn(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def loop_reference(model, x, loss, params) -> list[torch.Tensor]:
    """One backward per sample, BatchNorm normalizing with the whole batch's statistics."""
    rows = []
    with constant_batch_statistics(model, x):
        for i in range(len(x)):
            rows.append(torch.autograd.grad(loss(model(x[i : i + 1])), params))
    return [torch.stack(column) for column in zip(*rows, strict=True)]


def configured(model: nn.Module, loss_name: str):
    loss = tta.LOSSES.create(loss_name)
    loss.configure(model)
    return model, loss


@pytest.mark.parametrize("loss_name", ["tent", "entropy"])  # batch / running statistics
@pytest.mark.parametrize("spec", ["norm", "all"])
@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_batched_per_sample_grads_equal_a_loop(images, loss_name, spec, method):
    model, loss = configured(make_tiny_net(), loss_name)
    params = [p for _, p in select_parameters(model, spec)]
    expected = loop_reference(model, images, loss, params)
    got = per_sample_grads(model, images, loss, params, method)
    for g, e, p in zip(got, expected, params, strict=True):
        assert g.shape == (len(images), *p.shape)
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_in_place_ops_and_sequence_linear(images, method):
    torch.manual_seed(0)
    model, loss = configured(InplaceNet(), "tent")
    params = [p for _, p in select_parameters(model, "all")]
    expected = loop_reference(model, images, loss, params)
    for g, e in zip(per_sample_grads(model, images, loss, params, method), expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)


def test_auto_falls_back_to_vmap_for_modules_without_a_rule(images):
    torch.manual_seed(0)
    model, loss = configured(GroupNormNet(), "tent")
    params = [p for _, p in select_parameters(model, "all")]
    assert not hooks_support(model, params)
    assert hooks_support(model, [model.bn.weight, model.conv.weight, model.fc.bias])
    expected = loop_reference(model, images, loss, params)
    for g, e in zip(per_sample_grads(model, images, loss, params), expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)


def test_mean_of_per_sample_grads_is_the_constant_statistics_batch_gradient(images):
    model, loss = configured(make_tiny_net(), "tent")
    params = [p for _, p in select_parameters(model, "norm")]
    with constant_batch_statistics(model, images):
        batch = torch.autograd.grad(loss(model(images)), params)
    for g, b in zip(per_sample_grads(model, images, loss, params), batch, strict=True):
        assert torch.allclose(g.mean(0), b, atol=1e-7)


def test_per_sample_grads_leave_the_model_untouched(images):
    model, loss = configured(make_tiny_net(), "tent")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for _, p in select_parameters(model, "all")]
    with torch.no_grad():
        before = model(images)
    per_sample_grads(model, images, loss, params)
    assert all(p.grad is None for p in params)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(images), before)


@pytest.mark.parametrize("spec", ["norm", "all"])
def test_capturing_the_models_own_forward_keeps_its_backward_exact(images, spec):
    model, loss = configured(make_tiny_net(), "tent")
    twin, _ = configured(make_tiny_net(), "tent")
    params = [p for _, p in select_parameters(model, spec)]
    with Capture(model, params, exact=True) as capture:
        logits = model(images)
    got = capture.grads(logits, loss)
    expected = per_sample_grads(twin, images, loss, [p for _, p in select_parameters(twin, spec)])
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)
    loss(logits).backward()  # the graph was kept, and runs the exact (coupled) backward
    twin_logits = twin(images)
    loss(twin_logits).backward()
    assert torch.equal(logits, twin_logits)
    for p, q in zip(params, select_parameters(twin, spec), strict=True):
        assert torch.equal(p.grad, q[1].grad)
    assert all("forward" not in m.__dict__ for m in model.modules())


# --- the grad-align filter ----------------------------------------------------------------


class LinearMargin(tta.losses.Loss):
    """loss = mean_i (z_i0 - z_i1): sample i's gradient w.r.t. W is [x_i; -x_i]."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] - logits[:, 1]).mean()


def toy_filter(**options):
    """A bias-free Linear(2, 2) under SGD lr 1: u_i = -g_i = [-x_i; x_i]."""
    model = nn.Linear(2, 2, bias=False)
    named = list(model.named_parameters())
    adapted = SimpleNamespace(
        model=model,
        loss=LinearMargin(),
        layers=partition(named, "module", model),
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
    )
    return tta.SAMPLE_FILTERS.create("grad-align", **options), adapted, model


def hand_cosine(u: list[float], td: list[float]) -> float:
    w = [a + b for a, b in zip(u, td, strict=True)]
    dot = sum(a * b for a, b in zip(u, w, strict=True))
    norms = math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in w))
    return dot / norms


def test_keep_mask_matches_a_hand_computation():
    fil, adapted, model = toy_filter(threshold=0.5)
    x = torch.tensor([[-1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert fil.keep(x, model(x), adapted) is None  # the window's first step sets the anchor
    td = [1.0, 0.0, -1.0, 0.0]  # W moves by [[1, 0], [-1, 0]] (row-major)
    with torch.no_grad():
        model.weight += torch.tensor(td).view(2, 2)
    expected = [hand_cosine([-a, -b, a, b], td) for a, b in x.tolist()]
    assert expected == pytest.approx([1.0, -1.0, 1 / math.sqrt(2), 6 / math.sqrt(40)])
    keep = fil.keep(x, model(x), adapted)
    assert keep.tolist() == [c > 0.5 for c in expected] == [True, False, True, True]
    assert fil.kept_fraction == [1.0, 0.75]
    assert (fil.stats()["n_kept"], fil.stats()["n_removed"]) == (7, 1)


def test_layer_granularity_averages_per_layer_cosines():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    layers = partition(list(model.named_parameters()), "module", model)
    adapted = SimpleNamespace(
        model=model,
        loss=LinearMargin(),
        layers=layers,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
    )
    fil = tta.SAMPLE_FILTERS.create("grad-align", granularity="layer", threshold=-1.0)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    fil.keep(x, model(x), adapted)
    with torch.no_grad():
        model[0].weight += torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # only layer 0 moves
    # z = W1 W0 x; sample gradients: dW1 = [h; -h] with h = W0 x; dW0 = W1^T [1, -1] x^T
    scores = []
    for xi in x:
        h = model[0].weight @ xi
        g1 = torch.stack([h, -h]).flatten()
        g0 = torch.outer(model[1].weight.T @ torch.tensor([1.0, -1.0]), xi).flatten()
        cos0 = hand_cosine((-g0).tolist(), [0.0, 1.0, 1.0, 0.0])
        cos1 = hand_cosine((-g1).tolist(), [0.0] * 4)  # TD = 0: cosine 1
        scores.append((cos0 + cos1) / 2)
    got = fil.scores(adapted, x, [p for layer in layers for p in layer.params])
    assert got.tolist() == pytest.approx(scores, abs=1e-6)


def test_engine_updates_with_the_kept_samples_only():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
    fil = tta.SAMPLE_FILTERS.create("grad-align", threshold=0.5)
    layers = partition(list(model.named_parameters()), "module", model)
    adapted = tta.AdaptedModel(
        model, LinearMargin(), layers, tta.LAYER_SELECTORS.create("all"),
        torch.optim.SGD(model.parameters(), lr=1.0), sample_filter=fil, input_range=None,
    )  # fmt: skip
    adapted(torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1))  # keeps all: W -= [[1, 0], [-1, 0]]
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.5, 0.0]])  # cosines 1, 1/sqrt(2), -1
    adapted(x.view(3, 2, 1, 1))
    assert fil.kept_fraction == [1.0, pytest.approx(2 / 3)]
    step_two = -torch.tensor([[1.0, 1.0], [-1.0, -1.0]]) / 2  # -mean of the kept [x_i; -x_i]
    expected = torch.tensor([[-1.0, 0.0], [1.0, 0.0]]) + step_two
    assert torch.allclose(model[1].weight, expected)
    assert adapted.counters.n_filtered_samples == 1


def test_every_window_starts_by_keeping_all_samples():
    fil, adapted, model = toy_filter(threshold=0.99, window=3)
    x = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    masks = []
    for _ in range(6):
        masks.append(fil.keep(x, model(x), adapted))
        with torch.no_grad():
            model.weight += torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert [m is None for m in masks] == [True, False, False, True, False, False]
    assert not masks[1].any()
    fil.reset()
    assert fil.keep(x, model(x), adapted) is None


def test_no_window_keeps_the_first_anchor():
    fil, adapted, model = toy_filter(window=None)
    x = torch.tensor([[1.0, 0.0]])
    masks = [fil.keep(x, model(x), adapted) for _ in range(25)]
    assert masks[0] is None and all(m is not None for m in masks[1:])


def test_a_loss_without_a_logits_objective_fails_at_the_first_batch():
    class TeacherLoss(tta.losses.Loss):
        def __call__(self, logits: torch.Tensor) -> torch.Tensor:
            raise TypeError("this loss needs its teacher")

    fil, adapted, model = toy_filter()
    adapted.loss = TeacherLoss()
    x = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="grad-align.*needs its teacher"):
        fil.keep(x, model(x), adapted)


def test_no_kept_sample_skips_the_step(images):
    adapted = tta.adapt(
        make_tiny_net(), loss="tent", lr=1e-2, sample_filter="grad-align",
        sample_filter_options={"threshold": 1.0},  # cos > 1 never holds
    )  # fmt: skip
    adapted(images)  # the window's first step keeps all and updates
    weights = [p.detach().clone() for p in adapted._params]
    adapted(images)
    counters = adapted.counters
    assert (counters.n_steps, counters.n_skipped) == (1, 1)
    assert counters.n_filtered_samples == len(images)
    assert all(torch.equal(p, w) for p, w in zip(adapted._params, weights, strict=True))


@pytest.mark.parametrize("spec", ["norm", "all"])
def test_keeping_every_sample_changes_nothing(images, spec):
    """The filter's extra backward leaves the engine's update bit-for-bit as without it."""

    def run(**options):
        adapted = tta.adapt(make_tiny_net(), loss="tent", params=spec, lr=1e-2, **options)
        for step in range(4):
            adapted(images.roll(step, 0)[:12])
        return adapted

    plain = run()
    filtered = run(sample_filter="grad-align", sample_filter_options={"threshold": -1.0})
    assert filtered.sample_filter.kept_fraction == [1.0] * 4
    stats = filtered.sample_filter.stats()
    assert (stats["n_extra_forward"], stats["n_extra_backward"]) == (0, 3)
    assert (stats["n_kept"], stats["n_removed"]) == (48, 0)
    for p, q in zip(plain._params, filtered._params, strict=True):
        assert torch.equal(p, q)
    filtered.reset()
    assert not filtered.model._forward_hooks and not filtered.model._forward_pre_hooks


def recorded_scores(images, **options):
    """The cosines a filter computes over three steps of tent + SGD (every sample kept)."""
    adapted = tta.adapt(
        make_tiny_net(), loss="tent", optimizer="sgd", lr=0.05, sample_filter="grad-align",
        sample_filter_options={"threshold": -1.0, **options},
    )  # fmt: skip
    fil, seen = adapted.sample_filter, []
    scores = fil.scores

    def spy(*args):
        seen.append(scores(*args))
        return seen[-1]

    fil.scores = spy
    for step in range(3):
        adapted(images.roll(step, 0))
    return seen, fil.stats()


def test_shared_and_separate_forwards_score_alike(images):
    shared, shared_passes = recorded_scores(images)
    separate, separate_passes = recorded_scores(images, share_forward=False, method="vmap")
    assert len(shared) == len(separate) == 2
    for a, b in zip(shared, separate, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert (shared_passes["n_extra_forward"], shared_passes["n_extra_backward"]) == (0, 2)
    assert (separate_passes["n_extra_forward"], separate_passes["n_extra_backward"]) == (2, 2)


@pytest.mark.parametrize("loss", ["entropy", "tent"])
@pytest.mark.parametrize("selector", ["all", "gala"])
@pytest.mark.parametrize("granularity", ["all", "layer"])
def test_composes_with_losses_and_layer_selectors(images, loss, selector, granularity):
    adapted = tta.adapt(
        make_tiny_net(), loss=loss, selector=selector, optimizer="sgd", lr=0.05,
        sample_filter="grad-align",
        sample_filter_options={"granularity": granularity, "threshold": 0.85, "window": 4},
    )  # fmt: skip
    for step in range(6):
        batch = images.clone()
        batch[step % 2 :: 2] **= 4  # two kinds of image in every batch
        logits = adapted(batch)
        assert torch.isfinite(logits).all()
    kept = adapted.sample_filter.trace()["kept_fraction"]
    counters = adapted.counters
    assert len(kept) == 6 and kept[0] == kept[4] == 1.0
    assert counters.n_filtered_samples == round(sum(1 - k for k in kept) * len(images))
    assert counters.n_steps + counters.n_skipped == 6
    assert all(torch.isfinite(p).all() for p in adapted._params)
