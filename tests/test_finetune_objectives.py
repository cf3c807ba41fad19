"""Training objectives of robust fine-tuning: the training attacks raise the loss and stay
in the ball, TRADES' KL term against a hand computation, eps = 0 runs no attack, and on a
tiny separable problem adversarial training beats clean training under attack."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tta.robust.finetune import FinetuneConfig, TaskData, finetune
from tta.robust.finetune.objectives import (
    adversarial_example,
    objective_loss,
    trades_example,
    trades_kl,
)

EPS = 0.1


def tiny_net(d: int = 12, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))


def batch(n: int = 32, d: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, d, generator=g) * 0.8 + 0.1, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("attack", ["apgd", "pgd"])
def test_training_attack_raises_the_loss_and_stays_in_the_ball(attack: str) -> None:
    net, (x, y) = tiny_net(), batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x_adv = adversarial_example(net, x, y, EPS, attack, steps=7, seed=0)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(net(x), y, reduction="none")
        adv = F.cross_entropy(net(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 0.05
    assert (adv >= clean - 1e-6).float().mean() > 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched


def test_trades_kl_matches_a_hand_computation() -> None:
    clean = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    adv = torch.tensor([[0.0, 1.0, 0.0], [2.0, -1.0, 0.0]])

    def softmax(row: list[float]) -> list[float]:
        z = [math.exp(v) for v in row]
        return [v / sum(z) for v in z]

    expected = 0.0
    for c_row, a_row in zip(clean.tolist(), adv.tolist(), strict=True):
        p, q = softmax(c_row), softmax(a_row)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected /= 2  # averaged over the batch
    assert float(trades_kl(clean, adv)) == pytest.approx(expected, rel=1e-5)
    assert float(trades_kl(clean, clean)) == pytest.approx(0.0, abs=1e-7)


def test_trades_loss_is_ce_plus_beta_kl_of_its_example() -> None:
    net, (x, y) = tiny_net(), batch()
    x_adv = trades_example(net, x, EPS, steps=5, seed=3)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        assert trades_kl(net(x), net(x_adv)) > 10 * trades_kl(net(x), net(x + 0.001))
    loss, ran = objective_loss(net, x, y, EPS, "trades", steps=5, trades_beta=2.0, seed=3)
    with torch.no_grad():
        hand = F.cross_entropy(net(x), y) + 2.0 * trades_kl(net(x), net(x_adv))
    assert ran and float(loss.detach()) == pytest.approx(float(hand), rel=1e-5)


def test_zero_budget_is_a_plain_step() -> None:
    net, (x, y) = tiny_net(), batch()
    for objective in ("at", "trades", "clean"):
        loss, ran = objective_loss(net, x, y, 0.0, objective)
        assert not ran
        assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(net(x), y).detach()))


class Linear(nn.Module):
    """A linear classifier with the `.fc` head fine-tuning replaces."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def separable(n: int, seed: int, d: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature 0 separates the classes by a wide margin (0.2 vs 0.8, robust at eps 0.1);
    79 weak features shift by +-0.06 with the label (predictive together, not robust)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float()
    x = 0.5 + 0.03 * torch.randn(n, d, generator=g) + 0.06 * sign[:, None]
    x[:, 0] = 0.5 + 0.3 * sign + 0.02 * torch.randn(n, generator=g)
    return x.clamp(0, 1), y


def test_adversarial_training_raises_robust_accuracy_on_a_separable_problem() -> None:
    data = TaskData("separable", 2, separable(256, 0), separable(64, 1), separable(200, 2))
    results = {}
    for objective in ("clean", "at"):
        config = FinetuneConfig(
            objective=objective,
            eps=EPS,
            schedule="fixed",
            epochs=12,
            batch_size=32,
            lr=0.05,
            weight_decay=0.0,
            warmup_epochs=0,
            augment="none",
            eval_steps=10,
        )
        results[objective] = finetune(config, data=data, model=Linear(80)).test
    clean, at = results["clean"], results["at"]
    assert clean["clean"] > 95 and at["clean"] > 95  # both learn the task
    assert clean["adv"] < 60  # the clean model leans on the weak features (49 measured)
    assert at["adv"] > clean["adv"] + 30 and at["adv"] > 90
    assert at["expected"] > clean["expected"] + 10
