"""CoTTA: stochastic restore, teacher EMA update, teacher predictions, reset, augmentations."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_net

import tta
from tta.losses.cotta import cotta_augment, soft_cross_entropy, stochastic_restore


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_stochastic_restore_all_or_nothing():
    param = torch.nn.Parameter(torch.randn(50))
    source = torch.randn(50)
    adapted_value = param.detach().clone()
    stochastic_restore([(param, source)], 0.0)
    assert torch.equal(param, adapted_value)
    stochastic_restore([(param, source)], 1.0)
    assert torch.equal(param, source)


def test_stochastic_restore_is_elementwise():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.zeros(20000))
    stochastic_restore([(param, torch.ones(20000))], 0.1)
    assert set(param.unique().tolist()) == {0.0, 1.0}
    assert abs(float(param.detach().mean()) - 0.1) < 0.01


@pytest.mark.parametrize("rst", [0.0, 1.0])
def test_restore_in_the_engine(images, rst):
    adapted = tta.adapt(make_tiny_net(), loss="cotta", rst=rst, ap=0.0, lr=1e-2)
    source = params_of(adapted.model)
    adapted(images)
    after = params_of(adapted.model)
    if rst == 1.0:
        assert all(torch.equal(after[n], source[n]) for n in source)
    else:  # every element of these tensors got a nonzero gradient: none may be restored
        assert all((after[n] != source[n]).all() for n in ("fc.weight", "bn1.weight", "bn2.bias"))


def test_teacher_is_the_ema_of_the_student(images):
    adapted = tta.adapt(make_tiny_net(), loss="cotta", alpha=0.9, rst=0.0, ap=0.0, lr=1e-2)
    teacher_before = params_of(adapted.loss.teacher)
    adapted(images)
    student = params_of(adapted.model)
    teacher = params_of(adapted.loss.teacher)
    for name, value in teacher.items():
        expected = 0.9 * teacher_before[name] + 0.1 * student[name]
        assert torch.allclose(value, expected, atol=1e-7), name
    assert not torch.allclose(teacher["fc.weight"], student["fc.weight"])


def test_returns_the_teacher_prediction_before_the_update(images):
    model = make_tiny_net()
    adapted = tta.adapt(model, loss="cotta", ap=0.0, lr=1e-1)
    teacher = copy.deepcopy(adapted.loss.teacher)
    with torch.no_grad():
        expected = teacher(images)
    assert torch.allclose(adapted(images), expected, atol=1e-6)
    assert adapted.counters.n_forward == 3  # student, anchor, teacher


def test_low_anchor_confidence_averages_augmented_teacher_predictions(images):
    adapted = tta.adapt(make_tiny_net(), loss="cotta", ap=1.01, n_augmentations=3, lr=1e-2)
    teacher = copy.deepcopy(adapted.loss.teacher)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = sum(teacher(cotta_augment(images)) for _ in range(3)) / 3
    torch.manual_seed(5)
    target = adapted.loss.pseudo_label(adapted.loss_context, images)
    assert torch.allclose(target, expected, atol=1e-6)
    with torch.no_grad():
        plain = teacher(images)
    assert not torch.allclose(target, plain, atol=1e-4)
    assert adapted.counters.n_forward == 4  # anchor + 3 augmented teacher passes


def test_student_loss_is_cross_entropy_to_the_teacher():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    q = teacher.softmax(1)
    expected = -(q * student.log_softmax(1)).sum(1)
    assert torch.allclose(soft_cross_entropy(student, teacher), expected)
    assert soft_cross_entropy(student, teacher)[0] == pytest.approx(
        -0.5 * (torch.log_softmax(student[0], 0).sum()).item()
    )


def test_reset_restores_student_and_teacher(images):
    adapted = tta.adapt(make_tiny_net(), loss="cotta", ap=0.0, lr=1e-1)
    source = params_of(adapted.model)
    for _ in range(2):
        adapted(images)
    assert not torch.equal(params_of(adapted.loss.teacher)["fc.weight"], source["fc.weight"])
    adapted.reset()
    for tensors in (params_of(adapted.model), params_of(adapted.loss.teacher)):
        assert all(torch.equal(tensors[n], source[n]) for n in source)


def test_augmentation_keeps_shape_and_range(images):
    torch.manual_seed(0)
    out = cotta_augment(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images, atol=1e-3)
    gray = cotta_augment(images[:, :1])
    assert gray.shape == images[:, :1].shape
