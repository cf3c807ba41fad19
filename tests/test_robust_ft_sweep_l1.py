"""L1 attacks: the projection against a hand computation, and every attack stays in the L1
ball and in [0, 1] while raising the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tta.robust.l1 import apgd_l1, l1_norm, pgd_l1, project_l1_ball, sparse_direction


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 8, 8, generator=g)
    x[:, 0] = 0.0  # a channel at the box's edge: steps must not leave [0, 1]
    x[:, 1, :2] = 1.0
    return x, torch.randint(0, 4, (12,), generator=g)


def test_l1_projection_matches_a_hand_computation():
    # |d| = (3, 1, 0.5), eps = 2: theta = 1 (3 - 1 = 2), so d -> (2, 0, 0) with signs kept
    delta = torch.tensor([[-3.0, 1.0, 0.5], [0.2, -0.3, 0.1]])
    out = project_l1_ball(delta, torch.tensor([2.0, 2.0]))
    assert torch.allclose(out[0], torch.tensor([-2.0, 0.0, 0.0]))
    assert torch.equal(out[1], delta[1])  # already inside: unchanged
    # |d| = (2, 2, 1), eps = 3: 5 - 3 theta = 3, theta = 2/3 -> (4/3, 4/3, 1/3)
    out = project_l1_ball(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([3.0]))
    assert torch.allclose(out, torch.tensor([[4.0, -4.0, 1.0]]) / 3)


def test_sparse_direction_keeps_the_top_movable_coordinates_at_unit_l1_norm():
    grad = torch.tensor([[[[4.0, -3.0, 2.0, 1.0]]]])
    point = torch.tensor([[[[0.5, 0.0, 0.5, 0.5]]]])  # -3 would push the pixel below 0
    d = sparse_direction(grad, point, sparsity=0.5)  # 3 movable -> ceil(1.5) = 2 kept
    assert torch.allclose(d.flatten(), torch.tensor([0.5, 0.0, 0.5, 0.0]))


@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_pgd_l1_stays_in_the_ball_and_the_box_and_raises_the_loss(eps):
    model, (x, y) = tiny_model(), batch()
    result = pgd_l1(model, x, y, eps=eps, steps=15, early_stop=False)
    assert float(l1_norm(result.x_adv - x).max()) <= eps * (1 + 1e-5)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    with torch.no_grad():
        before = F.cross_entropy(model(x), y)
        after = F.cross_entropy(model(result.x_adv), y)
    assert after > before
    assert torch.equal(result.fooled, model(result.x_adv).argmax(1) != y)


def test_pgd_l1_with_early_stop_fools_at_least_as_many_and_keeps_the_model_unchanged():
    model, (x, y) = tiny_model(), batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    stop = pgd_l1(model, x, y, eps=3.0, steps=15)
    last = pgd_l1(model, x, y, eps=3.0, steps=15, early_stop=False)
    assert int(stop.fooled.sum()) >= int(last.fooled.sum())
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_pgd_l1_refuses_bad_sparsity():
    model, (x, y) = tiny_model(), batch()
    with pytest.raises(ValueError, match="sparsity"):
        pgd_l1(model, x, y, eps=1.0, sparsity=1.0)


def test_apgd_l1_stays_in_the_ball_and_the_box():
    pytest.importorskip("pyautoattack")
    model, (x, y) = tiny_model(), batch()
    result = apgd_l1(model, x, y, eps=2.0, steps=10)
    assert float(l1_norm(result.x_adv - x).max()) <= 2.0 * (1 + 1e-5)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    with torch.no_grad():
        assert F.cross_entropy(model(result.x_adv), y) > F.cross_entropy(model(x), y)
