"""PL, SHOT-IM and SHOT against hand computation; their GALA-paper setting."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_net

import tta
from tta.context import Counters, LossContext
from tta.losses.pl import PseudoLabelLoss
from tta.losses.shot import ShotIMLoss, ShotLoss

# 3 classes: row 0 is confident (p_max = e^5 / (e^5 + 2) = 0.987), row 1 is not (p = 1/3 each)
ROWS = [[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def probs_by_hand(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def entropy_by_hand(probs: list[float], eps: float = 0.0) -> float:
    return -sum(p * math.log(p + eps) for p in probs)


def fake_adapted() -> LossContext:
    """A loss context without an engine: a stand-in model, fresh counters, no reset."""
    return LossContext(torch.nn.Linear(1, 1), (), Counters(), lambda: None)


def test_pl_is_cross_entropy_of_confident_argmax():
    logits = torch.tensor(ROWS, requires_grad=True)
    loss_fn = PseudoLabelLoss()
    adapted = fake_adapted()
    loss = loss_fn.backward(adapted, None, logits, None)
    assert loss.item() == pytest.approx(-math.log(probs_by_hand(ROWS[0])[0]), rel=1e-5)
    assert logits.grad[1].abs().sum() == 0  # the unconfident sample does not count
    assert loss_fn.stats() == {"n_confident": 1, "n_unconfident": 1}
    assert adapted.counters.n_filtered_samples == 1
    # a lower threshold admits both; the mean is over the confident samples
    both = PseudoLabelLoss(threshold=0.3)(torch.tensor(ROWS))
    by_hand = (-math.log(probs_by_hand(ROWS[0])[0]) - math.log(1 / 3)) / 2
    assert both.item() == pytest.approx(by_hand, rel=1e-5)


def test_pl_skips_when_no_sample_is_confident(images):
    logits = torch.tensor([ROWS[1]], requires_grad=True)
    assert PseudoLabelLoss().backward(fake_adapted(), None, logits, None) is None
    model = make_tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    adapted = tta.adapt(model, loss="pl", threshold=0.999)
    adapted(images[:8])
    assert adapted.counters.n_skipped == 1 and adapted.counters.n_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_shot_im_is_mean_entropy_minus_marginal_entropy():
    probs = [probs_by_hand(row) for row in ROWS]
    marginal = [sum(column) / len(probs) for column in zip(*probs, strict=True)]
    expected = sum(entropy_by_hand(p) for p in probs) / 2 - entropy_by_hand(marginal, 1e-5)
    assert ShotIMLoss()(torch.tensor(ROWS)).item() == pytest.approx(expected, rel=1e-5)


def test_shot_adds_a_tenth_of_pl():
    logits = torch.tensor(ROWS)
    im = ShotIMLoss()(logits).item()
    pl = -math.log(probs_by_hand(ROWS[0])[0])
    assert ShotLoss()(logits).item() == pytest.approx(im + 0.1 * pl, rel=1e-5)
    assert ShotLoss(beta=0.5)(logits).item() == pytest.approx(im + 0.5 * pl, rel=1e-5)
    # no confident sample: the information-maximization term alone
    assert ShotLoss(threshold=0.99)(logits).item() == pytest.approx(im, rel=1e-5)


@pytest.mark.parametrize("loss", ["pl", "shot-im", "shot"])
def test_all_layers_train_and_batchnorm_keeps_running_statistics(loss, images):
    model = make_tiny_net()
    running = model.bn1.running_mean.clone()
    options = {"threshold": 0.0} if loss != "shot-im" else {}
    adapted = tta.adapt(model, loss=loss, **options)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters()
    }
    conv = model.conv1.weight.detach().clone()
    adapted(images[:8])
    assert adapted.counters.n_steps == 1
    assert not torch.equal(conv, model.conv1.weight)
    assert torch.equal(model.bn1.running_mean, running) and not model.training


def test_pl_and_shot_check_their_options():
    with pytest.raises(ValueError, match="threshold"):
        PseudoLabelLoss(threshold=1.5)
    with pytest.raises(ValueError, match="beta"):
        ShotLoss(beta=-1)
