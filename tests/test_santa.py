"""SANTA: the anchored cross-entropy by hand, two steps against a re-statement of the
official code (mariodoebler/test-time-adaptation classification/methods/santa.py), source
data handling and composition with GALA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_net
from test_rmt import SOURCE_X, SOURCE_Y, extract, nearest_official, official_supcon
from test_rotta import assert_only_selected_layers_change
from torch import nn

import tta
from tta.losses.cotta import cotta_augment
from tta.losses.santa import anchored_cross_entropy


def test_anchored_cross_entropy_by_hand():
    x = torch.tensor([[2.0, 0.0]], requires_grad=True)
    x_aug, anchor = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    big = math.log(1 + math.e)  # -log softmax(anchor) = [L - 1, L]
    p1 = math.exp(2) / (1 + math.exp(2))
    expected = 0.5 * (big - p1) + 0.5 * (big - 0.5)
    value = anchored_cross_entropy(x, x_aug, anchor)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.sum().backward()  # the student's probabilities carry the gradient
    assert x.grad.abs().sum() > 0


def official_santa(batches: list[torch.Tensor], seed: int):
    """Two official SANTA steps: the student, the projector and the outputs."""
    student = copy.deepcopy(make_tiny_net())
    for bn in (student.bn1, student.bn2):
        bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    student.requires_grad_(False)
    norm_params = [p for bn in (student.bn1, student.bn2) for p in bn.parameters()]
    for p in norm_params:
        p.requires_grad_(True)
    anchor = copy.deepcopy(student)
    for p in anchor.parameters():
        p.detach_()
    with torch.no_grad():
        feats = extract(student, SOURCE_X)
    prototypes = torch.cat([feats[SOURCE_Y == c].mean(0, keepdim=True) for c in range(5)])
    torch.manual_seed(seed)
    projector = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128))
    optimizer = torch.optim.Adam(norm_params, lr=1e-3, betas=(0.9, 0.999))
    optimizer.add_param_group({"params": projector.parameters(), "lr": 1e-3})
    outputs = []
    for k, x in enumerate(batches):
        torch.manual_seed(seed + 1 + k)
        features = extract(student, x)
        out = student.fc(features)
        features_aug = extract(student, cotta_augment(x))
        out_aug = student.fc(features_aug)
        out_anchor = anchor(x)
        with torch.no_grad():
            anchors = nearest_official(prototypes, features)
        views = torch.cat([anchors, features[:, None], features_aug[:, None]], dim=1)
        loss_cont = official_supcon(views, projector, 0.1)
        loss_st = (
            -0.5 * (out.softmax(1) * out_anchor.log_softmax(1)).sum(1)
            - 0.5 * (out_aug.softmax(1) * out_anchor.log_softmax(1)).sum(1)
        ).mean(0)
        (loss_st + loss_cont).backward()
        optimizer.step()
        optimizer.zero_grad()
        outputs.append(out.detach())
    return student, projector, outputs


def test_two_steps_match_the_official_step():
    torch.manual_seed(0)
    batches = [torch.rand(16, 3, 8, 8) for _ in range(3)]
    student, projector, expected = official_santa(batches, seed=30)
    model = make_tiny_net()  # draws from a seed of its own
    torch.manual_seed(30)
    adapted = tta.adapt(model, loss="santa", source_data=(SOURCE_X, SOURCE_Y), source_batch_size=8)
    assert adapted.describe()["params"] == "norm" and adapted.describe()["norm"] == "batch"
    for k, x in enumerate(batches):
        torch.manual_seed(31 + k)
        assert torch.allclose(adapted(x), expected[k], atol=1e-5), k
    assert adapted.counters.n_forward == 3 * 3 and adapted.counters.n_backward == 3
    for mine, theirs in ((adapted.model, student), (adapted.loss.contrast.projector, projector)):
        for (name, a), b in zip(mine.named_parameters(), theirs.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.allclose(adapted.model.bn1.weight, make_tiny_net().bn1.weight)
    # the anchor is the source model, as configured, and never moves
    anchor = dict(adapted.loss.anchor.named_parameters())
    for name, p in make_tiny_net().named_parameters():
        assert torch.equal(anchor[name], p), name


def test_reset_restores_the_projector(images):
    adapted = tta.adapt(make_tiny_net(), loss="santa", source_data=(SOURCE_X, SOURCE_Y), aux_lr=0.1)
    initial = copy.deepcopy(adapted.loss.contrast.projector.state_dict())
    adapted(images)
    state = adapted.loss.contrast.projector.state_dict()
    assert not torch.equal(state["0.weight"], initial["0.weight"])
    adapted.reset()
    state = adapted.loss.contrast.projector.state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial.items())
    assert not adapted.loss.contrast.optimizer.state  # Adam's moments forgotten too


def test_without_source_data_it_refuses_unless_the_contrastive_term_is_off(images):
    with pytest.raises(ValueError, match="needs labelled clean source images.*lambda_cont=0"):
        tta.adapt(make_tiny_net(), loss="santa")
    adapted = tta.adapt(make_tiny_net(), loss="santa", lambda_cont=0.0)
    adapted(images)
    assert adapted.counters.n_steps == 1 and adapted.loss.stats() == {"source_labels": "none"}
    unlabelled = tta.adapt(make_tiny_net(), loss="santa", source_data=SOURCE_X)
    unlabelled(images)
    assert unlabelled.loss.stats() == {"source_labels": "predicted"}
    with pytest.raises(ValueError, match="source_data: .*input channels"):
        tta.adapt(make_tiny_net(), loss="santa", source_data=(SOURCE_X[:, :1], SOURCE_Y))


def test_composes_with_gala_and_changes_only_selected_layers(images):
    adapted = tta.adapt(
        make_tiny_net(),
        loss="santa",
        selector="gala",
        selector_options={"threshold": -1.0},
        source_data=(SOURCE_X, SOURCE_Y),
        lr=0.05,
    )
    assert_only_selected_layers_change(adapted, images)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_runs_under_mixed_precision(images, amp):
    adapted = tta.adapt(make_tiny_net(), loss="santa", source_data=(SOURCE_X, SOURCE_Y), amp=amp)
    for _ in range(2):
        out = adapted(images)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert adapted.counters.n_steps >= 1
    assert all(torch.isfinite(p).all() for p in adapted.loss.contrast.projector.parameters())
