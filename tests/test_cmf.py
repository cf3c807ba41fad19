"""CMF: the filter's gain and one predict/update/ensemble step by hand; engine steps against a
re-statement of the official `bayesian_filtering`; GALA; reset."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_net
from test_roid import official_roid_step

import tta
from tta.losses.cmf import cmf_beta, cmf_filter


@pytest.mark.parametrize(
    ("variance", "q", "beta"),
    [
        (0.1, 0.1, 0.9 / (0.1 + 0.9)),  # inside the clip range
        (1.0, 0.1, 0.89),  # 0.474 clipped up to 0.89
        (1e-6, 1e-6, 1.0),  # 0.999999 >= 0.9999: no update
    ],
)
def test_gain_by_hand(variance, q, beta):
    assert cmf_beta(variance, q) == pytest.approx(beta)


def test_one_filter_step_by_hand():
    theta = torch.nn.Parameter(torch.tensor([1.0]))
    hidden, source = torch.tensor([0.5]), torch.tensor([0.0])
    variance, beta = cmf_filter([(theta, hidden, source)], 0.0, q=0.1, alpha=0.9, gamma=0.8)
    # predict: v = 0.81 * 0 + 0.1; h = 0.9 * 0.5 + 0.1 * 0 = 0.45
    # update: beta = 0.9 / (0.1 + 0.9) = 0.9; v = 0.09; h = 0.9 * 0.45 + 0.1 * 1 = 0.505
    # ensemble: theta = 0.8 * 1 + 0.2 * 0.505 = 0.901
    assert beta == pytest.approx(0.9) and variance == pytest.approx(0.09)
    assert float(hidden) == pytest.approx(0.505) and float(theta.detach()) == pytest.approx(0.901)


def official_filter(model, hidden, source, state, q, alpha=0.99, gamma=0.99):
    """mariodoebler/test-time-adaptation methods/cmf.py `bayesian_filtering`, restated."""
    with torch.no_grad():
        for name in hidden:
            hidden[name] = alpha * hidden[name] + (1 - alpha) * source[name]
        state["var"] = alpha**2 * state["var"] + q
        r = 1 - q
        beta = r / (state["var"] + r)
        beta = beta if beta > 0.89 else 0.89
        beta = beta if beta < 0.9999 else 1.0
        state["var"] = beta * state["var"]
        params = dict(model.named_parameters())
        for name in hidden:
            if beta < 1.0:
                hidden[name] = beta * hidden[name] + (1 - beta) * params[name]
        for name, param in params.items():
            if param.requires_grad:
                param.data = gamma * param.data + (1 - gamma) * hidden[name]


def test_steps_match_the_official_restatement(images):
    q = 20.0  # x 28 trainable / 38400 = 0.0146: the gain moves (0.985, 0.972, ...)
    adapted = tta.adapt(make_tiny_net(), loss="cmf", lr=1e-2, q=q)
    reference = copy.deepcopy(adapted.model)
    named = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    source = {n: p.detach().clone() for n, p in reference.named_parameters()}
    hidden = {n: source[n].clone() for n, _ in named}
    optimizer = torch.optim.Adam([p for _, p in named], lr=1e-2, betas=(0.9, 0.999))
    q_scaled = q * sum(p.numel() for _, p in named) / 38400
    state = {"ema": torch.full((5,), 0.2), "var": 0.0}

    for step in range(3):
        x = images.roll(step, 0) * (0.8 + 0.1 * step)
        torch.manual_seed(step)
        ours = adapted(x)
        torch.manual_seed(step)
        # ROID's loss and step without its source pull (momentum 1), then CMF's filter
        theirs = official_roid_step(reference, None, optimizer, x, state, momentum_src=1.0)
        official_filter(reference, hidden, source, state, q_scaled)
        assert torch.allclose(ours, theirs, atol=1e-5)
    for (name, mine), other in zip(
        adapted.model.named_parameters(), reference.parameters(), strict=True
    ):
        assert torch.allclose(mine, other, atol=1e-6), name
    assert adapted.loss.variance == pytest.approx(state["var"])
    for name, value in hidden.items():
        assert torch.allclose(adapted.loss.hidden[name], value, atol=1e-6), name


def test_q_scales_with_the_trainable_parameters():
    adapted = tta.adapt(make_tiny_net(), loss="cmf", q=0.005)
    n = sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
    assert adapted.loss.q_for(n) == pytest.approx(0.005 * n / 38400)


def test_composes_with_gala_and_resets(images):
    adapted = tta.adapt(make_tiny_net(), loss="cmf", selector="gala", lr=1e-2)
    for step in range(3):
        adapted(images.roll(step, 0))
    assert adapted.counters.n_backward == 3 and adapted.loss.variance > 0
    assert all(torch.isfinite(p).all() for p in adapted.model.parameters())
    adapted.reset()
    assert adapted.loss.variance == 0.0 and adapted.loss.hidden == {}
    assert adapted.loss.class_probs is None


def test_bad_filter_type():
    with pytest.raises(ValueError, match="filter_type"):
        tta.adapt(make_tiny_net(), loss="cmf", filter_type="kalman")
