"""Attacks (tta.robust): exact on a linear classifier with analytic margins, inside [0, 1]
and the eps-ball, APGD's schedule as the paper, and the attacked model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from test_robust_linear import linear_problem

import tta
from tta.robust import apgd_ce, attack_state, pgd
from tta.robust.apgd import checkpoints
from tta.robust.common import lp_norm

ATTACKS = {
    "pgd": lambda model, x, y, eps, norm, **kw: pgd(model, x, y, eps, norm, steps=10, **kw),
    "apgd": lambda model, x, y, eps, norm, **kw: apgd_ce(model, x, y, eps, norm, steps=10, **kw),
}


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_attacks_succeed_just_above_the_analytic_margin_and_never_below(attack, norm):
    model, x, y, margins = linear_problem(norm=norm)
    options = {"random_init": False} if (attack, norm) == ("pgd", "L2") else {}
    below = ATTACKS[attack](model, x, y, margins * 0.99, norm, **options)
    above = ATTACKS[attack](model, x, y, margins * 1.01, norm, **options)
    assert not below.fooled.any()  # no adversarial example exists below the margin
    assert above.fooled.all()
    assert (model(above.x_adv).argmax(1) != y).all()  # the points returned do flip


def test_l2_pgd_from_a_random_start_needs_a_little_more_than_the_margin():
    """Its random start's component across w decays slowly under projection: stated."""
    model, x, y, margins = linear_problem(norm="L2")
    assert pgd(model, x, y, margins * 1.05, "L2", steps=10).fooled.all()


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_attacks_stay_in_the_box_and_the_ball(attack, norm, eps, tiny_net):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(12, 3, 8, 8, generator=g)
    x[:, :, :2] = 0.0  # pixels at the edges of [0, 1]
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 5, (12,), generator=g)
    per_sample = torch.linspace(0, eps, 12)
    for budget in (eps, per_sample):
        result = ATTACKS[attack](tiny_net, x, y, budget, norm)
        assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
        allowed = torch.as_tensor(budget).expand(12)
        assert (lp_norm(result.x_adv - x, norm) <= allowed + 1e-6).all()
    zero = ATTACKS[attack](tiny_net, x, y, 0.0, norm)
    assert torch.equal(zero.x_adv, x) or (zero.x_adv - x).abs().max() < 1e-7


def test_misclassified_samples_count_as_fooled_and_come_back_unchanged():
    model, x, y, _ = linear_problem()
    wrong = 1 - y
    for attack in ATTACKS.values():
        result = attack(model, x, wrong, 1e-4, "Linf")
        assert result.fooled.all() and torch.equal(result.x_adv, x)


def test_apgd_checkpoints_follow_the_paper():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): checks after
    22, 41, 57, 70, 80, 87, 93, 99 of 100 iterations (0-based indices one lower)."""
    assert checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert checkpoints(10) == list(range(1, 10))  # first after 2 steps, then every step


def test_apgd_matches_the_official_code_on_a_small_network(tiny_net):
    """Same start (same seeded draws), same schedule: the same samples are fooled."""
    official = pytest.importorskip("pyautoattack.autopgd_base")
    g = torch.Generator().manual_seed(5)
    x = torch.rand(32, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = tiny_net(x).argmax(1)
    for eps in (0.02, 0.05, 0.1):
        ours = apgd_ce(tiny_net, x, y, eps, steps=10, seed=0)
        reference = official.APGDAttack(tiny_net, n_iter=10, eps=eps, seed=0, device="cpu")
        with torch.no_grad():
            theirs = tiny_net(reference.perturb(x, y)).argmax(1) != y
        assert torch.equal(ours.fooled, theirs), eps


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
    )


def _same(before, after):
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and before[2] == after[2]


def test_a_model_in_train_mode_is_attacked_in_eval_mode_and_restored(tiny_net, images):
    tiny_net.train()
    tiny_net.conv1.weight.requires_grad_(False)
    before = _state(tiny_net)
    reference = copy.deepcopy(tiny_net).eval()
    with attack_state(tiny_net) as net:
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        with torch.no_grad():
            assert torch.equal(net(images), reference(images))  # running statistics
    y = torch.zeros(len(images), dtype=torch.long)
    for attack in ATTACKS.values():
        attack(tiny_net, images, y, 8 / 255, "Linf")
    _same(before, _state(tiny_net))
    assert tiny_net.conv1.weight.grad is None and tiny_net.fc.weight.grad is None


@pytest.mark.parametrize("norm", ["ema", "window", "batch"])
def test_an_adapted_model_is_attacked_frozen_deterministically_and_restored(norm, tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="tent", norm=norm)
    y = adapted(images).argmax(1)  # one adaptation step: adapted weights and statistics
    before = _state(adapted.model)
    counters = copy.deepcopy(adapted.counters)
    first = apgd_ce(adapted, images, y, 8 / 255)
    second = apgd_ce(adapted, images, y, 8 / 255)
    assert torch.equal(first.x_adv, second.x_adv)  # stateful norms are reloaded per forward
    _same(before, _state(adapted.model))
    assert adapted.counters == counters  # nothing adapted during the attack


def test_attacks_refuse_images_outside_the_unit_box(tiny_net):
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        pgd(tiny_net, torch.full((2, 3, 8, 8), 2.0), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        apgd_ce(tiny_net, torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), 0.1, "L1")
